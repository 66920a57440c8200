#!/usr/bin/env bash
# The one prepared GPU run: install the project offline, then benchmarks/gpu_run.py (run as
# the module benchmarks.gpu_run from the repository root, so every package imports by its own
# name) runs its budgeted sections (correctness, end to end, kernels, the static kernel
# report) and leaves three files under $OUT: summary.json, summary.md and gpu-run.tar.gz
# (CSVs, section JSON, logs). Scratch (exported models, the growing CSVs) lives beside $OUT,
# in .<name>-work.
# Budget: at most 9 minutes of wall time on an H100/H200 with a cold Triton cache.
#
#   OUT=DIR bash benchmarks/gpu_check.sh              # on the GPU machine, from the repo root
#   OUT=DIR bash benchmarks/gpu_check.sh --dry-run    # on a CPU: tiny shapes, the interpreter
#
# Further arguments go to the driver, e.g. --budget kernels=60 or --only correctness.
set -uo pipefail
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); shift; fi
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export GPU_RUN_WORK=${GPU_RUN_WORK:-$(dirname "$OUT")/.$(basename "$OUT")-work}
mkdir -p "$GPU_RUN_WORK"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}   # kept between calls on a warm machine
PY=${PYTHON:-python3}
if [ ${#DRY[@]} = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$GPU_RUN_WORK/nvidia-smi.log" 2>&1
  # offline: the GPU machine has no network, and its torch/triton must stay as they are
  $PY -m pip install -q --no-deps --no-build-isolation -e . > "$GPU_RUN_WORK/install.log" 2>&1 \
    || echo "install failed (see install.log in the tarball); running from the checkout"
else
  export TRITON_INTERPRET=1
fi
$PY -m benchmarks.gpu_run --out "$OUT" "${DRY[@]}" "$@"
rc=$?
ls -la "$OUT"
exit $rc
