#!/bin/bash
# The GPU checks of issue 7, as run on a lent single-GPU machine (README, Performance).
# Runs against the machine's own JAX / Flax / optax; install what it lacks first
# (there: ml-collections, grain, array-record, portpicker, as wheels).
# Writes logs, gpu.json and levelset.json to $OUT (default /tmp/gpu_checks). Each stage
# has its own time limit so that a slow stage cannot eat the next ones; the smoke stage
# stops the script when the project does not import or run at all.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
PY=${PYTHON:-python3}
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  return "$rc"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import jax, flax, optax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
stage smoke "${SMOKE_S:-50}" $PY benchmarks/gpu.py --depth 18 --width 8 --sizes 32 --batch 2 \
  --steps 2 --dtypes float32 || exit 1
stage paper "${PAPER_S:-360}" $PY benchmarks/gpu.py --sizes 256,512 --dtypes bfloat16,float32 \
  --steps 10 --json "$OUT/gpu.json"
stage tests "${TESTS_S:-60}" env JAX_PLATFORMS=cuda $PY -m pytest -q --maxfail=5 -p no:cacheprovider \
  -m "not slow" tests/test_levelset.py tests/test_losses.py
stage levelset "${LEVELSET_S:-30}" $PY benchmarks/levelset.py --json "$OUT/levelset.json"
stage impls "${IMPLS_S:-50}" $PY benchmarks/gpu.py --sizes 256 --dtypes bfloat16 --impls reference --steps 10
exit 0
