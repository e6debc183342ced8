#!/usr/bin/env bash
# The GPU check, as one script with time limits: the tests that need CUDA (skipped on CPU-only
# machines), benchmarks/gpu_agreement.py, then benchmarks/gpu.py on both engines. Run from the repository root on a machine
# with a GPU, in the venv (`PY=python3 bash benchmarks/gpu_check.sh` for another Python):
#
#   bash benchmarks/gpu_check.sh [output folder, default benchmarks/results]
#
# Each benchmark writes its page after every pass, so a pass cut short by its limit
# (T_NONE, T_RAY seconds) keeps the passes before it. The log goes to <folder>/gpu-check.log.
set -u
OUT_DIR=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT_DIR"
export HOME=${HOME_FOR_CHECK:-$(mktemp -d)} FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PYTHONUNBUFFERED=1
export FLWR_HOME=$HOME/.flwr RAY_USAGE_STATS_ENABLED=0
T0=$(date +%s)
{
  echo "== machine"; nvidia-smi -L; nproc
  $PY -c "import sys, torch, ray, flwr; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), ray.__version__, flwr.__version__)"
  echo "== CUDA tests"
  timeout "${T_TESTS:-150}" $PY -m pytest -q -p no:cacheprovider -rs tests/test_sgd.py tests/test_aggregation_device.py \
    tests/test_gpu_benchmark.py tests/test_gpu_runs.py
  echo "pytest rc=$? at $(( $(date +%s) - T0 )) s"
  echo "== benchmarks/gpu_agreement.py"
  timeout "${T_AGREE:-120}" $PY benchmarks/gpu_agreement.py --out "$OUT_DIR"
  echo "rc=$? at $(( $(date +%s) - T0 )) s"
  echo "== benchmarks/gpu.py --engine none"
  timeout "${T_NONE:-100}" $PY benchmarks/gpu.py --engine none --repeat 3 --out "$OUT_DIR"
  echo "rc=$? at $(( $(date +%s) - T0 )) s"
  echo "== benchmarks/gpu.py --engine ray"
  timeout "${T_RAY:-300}" $PY benchmarks/gpu.py --engine ray --repeat "${RAY_REPEAT:-2}" --out "$OUT_DIR" --runs "$HOME/runs"
  echo "rc=$? at $(( $(date +%s) - T0 )) s"
} 2>&1 | tee "$OUT_DIR/gpu-check.log"
