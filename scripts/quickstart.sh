#!/usr/bin/env bash
# Fresh machine to a running model: install everything, build the default model for this CPU
# (cached after the first run), and open the interactive chat with it (/help lists its commands).
# Extra arguments go to `llm-deploy chat`, e.g. --prompt "What is the capital of France?".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec llm-deploy chat llama "$@"
