#!/usr/bin/env bash
# Every pending GPU check of the project in one command, for one lent GPU machine (about 6 minutes):
# the GPU-marked tests, the op-by-op CPU comparison of both engines, then every GPU figure.
#   bash benchmarks/gpu_session.sh [OUT_DIR]      (default: $OUT, else benchmarks/results/gpu_session)
# The machine's python needs torch and timm only (ray, mlflow, optuna and pydantic are not imported).
set -u
out="${1:-${OUT:-benchmarks/results/gpu_session}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/smi.txt" 2>&1
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_darts.py tests/test_batched_engine.py \
    tests/test_graphed.py tests/test_dario_search.py > "$out/pytest_gpu.txt" 2>&1
echo "pytest (gpu marks): exit $?"; grep -E "^FAILED|passed|failed" "$out/pytest_gpu.txt" | cut -c1-200
timeout 60 python3 benchmarks/gpu_op_check.py --out "$out/gpu_op_check.json" 2>&1 | cut -c1-300
timeout 330 python3 benchmarks/gpu_all.py --repeats 15 --out "$out/gpu_all.json" > "$out/gpu_all.log" 2>&1
echo "gpu_all: exit $?"; grep -v USDT "$out/gpu_all.log" | tail -20 | cut -c1-300
