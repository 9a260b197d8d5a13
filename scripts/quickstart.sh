#!/usr/bin/env bash
# Fresh machine to a running model: install everything, build the default model for this CPU
# (cached after the first run), and chat with it. Extra arguments go to `llm-deploy chat`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ $# -eq 0 ]; then
    set -- --prompt "What is the capital of France?"
fi
llm-deploy chat llama "$@"
