#!/usr/bin/env bash
# One prepared GPU run for the Triton kernels and engine: install offline, run the gpu-marked
# kernel tests, the kernel microbenchmark (IR-v2 first, batch 128 first, under a time budget),
# the kernel tests compiled on the GPU, the other gpu-marked tests, and the end-to-end
# benchmark. Every log lands under $OUT.
# Usage on the device machine, from the repo root:  bash benchmarks/gpu_check.sh
# Budget: about 9 minutes of wall time in all, so one call fits a 10-minute command limit.
#
#   bash benchmarks/gpu_check.sh --dry-run
# runs every section on a CPU-only machine in its cheapest form: no install, the gpu tests
# and benchmarks take their no-GPU paths (skips, "nothing measured"), a few kernel tests run
# under the Triton interpreter, the end-to-end benchmark only parses its arguments. It checks
# that every entry point the GPU run calls exists and starts.
set -uo pipefail
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
if [ "$DRY" = 1 ]; then OUT=${OUT:-$(mktemp -d -t gpu-check-dry.XXXX)}; else OUT=${OUT:-gpu-out}; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}   # kept between calls on a warm machine
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; fi
{ if [ "$DRY" = 0 ]; then nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; fi
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
FAILED=0
note() { echo "== $1 (exit $2)"; [ "$2" = 0 ] || FAILED=1; }
if [ "$DRY" = 0 ]; then
  $PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || echo "install failed, see install.log"
fi
# 1. GPU-marked kernel tests (autotuned kernels, int8 bit-exact on the compiled epilogue)
timeout 120 $PY -m pytest -q -m gpu -x --timeout=110 tests/test_kernels_gpu.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5
note "gpu kernel tests" "${PIPESTATUS[0]}"
# 2. Kernel microbenchmarks: IR-v2 shapes, batch 128 then 32 then 1; stops starting shapes at the budget
timeout 200 $PY benchmarks/kernels.py --models inception_resnet_v2 \
  --batch 128 32 1 --budget-s 150 --compile-limit 6 --rep-ms 30 --out "$OUT/kernels.csv" 2>&1 \
  | tee "$OUT/kernels.log" | tail -30
note "kernel microbenchmark" "${PIPESTATUS[0]}"
# 3. The interpreter suite, now compiled on the GPU (same references and tolerances);
#    the dry run interprets the quantisation tests only
if [ "$DRY" = 0 ]; then SEL=(); else SEL=(-k "quantize or quantization"); fi
timeout 90 $PY -m pytest -q --timeout=85 tests/test_kernels.py "${SEL[@]}" 2>&1 | tee "$OUT/kernel-tests.log" | tail -3
note "kernel tests" "${PIPESTATUS[0]}"
# 4. Other gpu-marked tests of the project (Triton engine, TensorRT)
timeout 45 $PY -m pytest -q -m gpu --timeout=40 --ignore=tests/test_kernels_gpu.py 2>&1 | tee "$OUT/other-gpu-tests.log" | tail -3
note "other gpu tests" "${PIPESTATUS[0]}"
# 5. End-to-end benchmark
if [ "$DRY" = 0 ]; then E2E=(--device cuda --out "$OUT/e2e.csv"); else E2E=(--help); fi
timeout 60 $PY benchmarks/e2e.py "${E2E[@]}" 2>&1 | tail -30
note "end-to-end benchmark" "${PIPESTATUS[0]}"
ls -la "$OUT"
# the GPU run reports and carries on; the dry run fails when an entry point does not start
if [ "$DRY" = 1 ]; then exit "$FAILED"; fi
