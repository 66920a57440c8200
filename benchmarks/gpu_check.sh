#!/usr/bin/env bash
# One prepared GPU run for the Triton kernels (issue 6) and whatever else is ready:
# install offline, run the gpu-marked tests and the kernel tests on the GPU, then the kernel
# microbenchmark (IR-v2 first, batch 128 first, under a time budget) and the end-to-end
# benchmark if present. Every log lands under $OUT. Adapted from ../shared/device/gpu-check.sh.
# Usage on the device machine, from the repo root:  bash benchmarks/gpu_check.sh
# Budget: about 9 minutes of wall time in all, so one call fits a 10-minute command limit.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}   # kept between calls on a warm machine
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || echo "install failed, see install.log"
# 1. GPU-marked kernel tests (autotuned kernels, int8 bit-exact on the compiled epilogue)
timeout 120 python3 -m pytest -q -m gpu -x --timeout=110 tests/test_kernels_gpu.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5
# 2. Kernel microbenchmarks: IR-v2 shapes, batch 128 then 32 then 1; stops starting shapes at the budget
[ -f benchmarks/kernels.py ] && timeout 200 python3 benchmarks/kernels.py --models inception_resnet_v2 \
  --batch 128 32 1 --budget-s 150 --compile-limit 6 --rep-ms 30 --out "$OUT/kernels.csv" 2>&1 \
  | tee "$OUT/kernels.log" | tail -30
# 3. The interpreter suite, now compiled on the GPU (same references and tolerances)
timeout 90 python3 -m pytest -q --timeout=85 tests/test_kernels.py 2>&1 | tee "$OUT/kernel-tests.log" | tail -3
# 4. Other gpu-marked tests of the project (Triton engine, TensorRT), if any
timeout 45 python3 -m pytest -q -m gpu --timeout=40 --ignore=tests/test_kernels_gpu.py 2>&1 | tee "$OUT/other-gpu-tests.log" | tail -3
# 5. End-to-end benchmark, if another issue has written it
[ -f benchmarks/e2e.py ] && timeout 60 python3 benchmarks/e2e.py --device cuda --out "$OUT/e2e.csv" 2>&1 | tail -30
ls -la "$OUT"
