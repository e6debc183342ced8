#!/usr/bin/env bash
# The GPU check, as one script with time limits: the tests that need CUDA (skipped on CPU-only
# machines), benchmarks/gpu_agreement.py, then benchmarks/gpu.py on both engines. Run from the
# repository root on a machine with a GPU, in the venv (`PY=python3 bash benchmarks/gpu_check.sh`
# for another Python):
#
#   bash benchmarks/gpu_check.sh [output folder, default benchmarks/results]
#
# Each benchmark writes its page after every pass, so a pass cut short by its limit
# (T_TESTS, T_AGREE, T_NONE, T_RAY seconds) keeps the passes before it. The log goes to
# <folder>/gpu-check.log; the exit status is the first failing step's (124: a time limit).
set -u -o pipefail
OUT_DIR=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT_DIR"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export HOME="$SCRATCH" FLWR_HOME="$SCRATCH/.flwr" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0
T0=$(date +%s)
STATUS=0

step() {  # step NAME LIMIT COMMAND...: run with a time limit, log its status, keep the first failure's
  local name=$1 limit=$2 rc
  shift 2
  echo "== $name"
  timeout "$limit" "$@"
  rc=$?
  echo "$name: rc=$rc at $(( $(date +%s) - T0 )) s"
  if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
}

{
  echo "== machine"; nvidia-smi -L; nproc
  "$PY" -c "import sys, torch, ray, flwr; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), ray.__version__, flwr.__version__)"
  step "CUDA tests" "${T_TESTS:-300}" "$PY" -m pytest -q -p no:cacheprovider -rs -n 4 tests/test_sgd.py tests/test_determinism.py \
    tests/test_aggregation_device.py tests/test_gpu_benchmark.py tests/test_gpu_runs.py
  step "benchmarks/gpu_agreement.py" "${T_AGREE:-180}" "$PY" benchmarks/gpu_agreement.py --out "$OUT_DIR"
  step "benchmarks/gpu.py --engine none" "${T_NONE:-100}" "$PY" benchmarks/gpu.py --engine none --repeat 3 --out "$OUT_DIR"
  step "benchmarks/gpu.py --engine ray" "${T_RAY:-300}" "$PY" benchmarks/gpu.py --engine ray --repeat "${RAY_REPEAT:-2}" \
    --out "$OUT_DIR" --runs "$SCRATCH/runs"
  exit "$STATUS"
} 2>&1 | tee "$OUT_DIR/gpu-check.log"
