#!/usr/bin/env bash
# Fresh machine to a running model: install, build the default model, chat with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
llm-deploy chat llama "$@"
