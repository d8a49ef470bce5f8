#!/usr/bin/env bash
# Every pending GPU check of the project, for one lent GPU machine, in two stages that each fit one device
# call (a call may run 10 minutes):
#   bash benchmarks/gpu_session.sh [OUT_DIR] [tests|figures|profile|all] (default: all = tests, figures; OUT_DIR: $OUT, else
#                                                                      benchmarks/results/gpu_session)
#   tests:   the GPU-marked tests and the op-by-op CPU comparison of both engines (on an H200, 2026-12-04,
#            fourth session: 203 s, 52 tests)
#   figures: every GPU figure of benchmarks/gpu_all.py (--repeats 10; 291 s on the H200, fourth session)
#   profile: benchmarks/gpu_profile.py, where the search step's GPU time goes and the batched engine's conv
#            plans timed (5 plans: 210 s on the H200, fourth session; not part of "all")
# In the fourth session the three stages ran as three calls back to back on one warm machine: 754 s of the
# 900 s device budget, the machine's start included.
# The machine's python needs torch and timm only (ray, mlflow, optuna and pydantic are not imported).
set -u
out="${1:-${OUT:-benchmarks/results/gpu_session}}"
stage="${2:-all}"
case "$stage" in tests|figures|profile|all) ;; *) echo "stage: expected tests, figures, profile or all, got '$stage'" >&2; exit 2;; esac
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/smi.txt" 2>&1
if [ "$stage" = profile ]; then
    timeout 480 python3 benchmarks/gpu_profile.py --out "$out/gpu_profile.json" 2>&1 | grep -v -E "USDT|UserWarning|_warn_once"
    echo "gpu_profile: exit ${PIPESTATUS[0]}"
    exit 0
fi
if [ "$stage" != figures ]; then
    timeout 60 python3 benchmarks/gpu_op_check.py --out "$out/gpu_op_check.json" 2>&1 | cut -c1-300
    timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_darts.py tests/test_batched_engine.py \
        tests/test_graphed.py tests/test_dario_search.py > "$out/pytest_gpu.txt" 2>&1
    echo "pytest (gpu marks): exit $?"; grep -E "^FAILED|passed|failed" "$out/pytest_gpu.txt" | cut -c1-200
fi
if [ "$stage" != tests ]; then
    timeout 420 python3 benchmarks/gpu_all.py --repeats 10 --out "$out/gpu_all.json" > "$out/gpu_all.log" 2>&1
    echo "gpu_all: exit $?"; grep -v USDT "$out/gpu_all.log" | tail -20 | cut -c1-300
fi
