#!/usr/bin/env bash
# From a fresh clone to a pruned, healed and evaluated model, with no server installed:
# installs layerprune into .venv (once), then runs `layerprune demo`, which starts the API and a
# worker on the embedded default (SQLite + a filesystem queue under .lp-data/demo), submits the
# paper's recipe on the bundled SmolLM2-135M-Instruct and prints a before/after table.
# Arguments are passed to `layerprune demo` (see `layerprune demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install.sh
# Offline by design: the bundled model and data come from installed packages, never a hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
exec "${LAYERPRUNE_VENV:-.venv}/bin/layerprune" demo "$@"
