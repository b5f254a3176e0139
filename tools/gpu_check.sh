#!/usr/bin/env bash
# The one prepared GPU check for the device machine (H200, CUDA 13, CuPy 14 preinstalled).
#
# Run it through the device tool from the repo root, carrying the wheels:
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Fill .whl/ here first (pip works here, not there; see /work/.library/device/README.md):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl nvidia-cudnn-frontend==1.32.0 lmdb==3.0.0
# Carried wheels (not on the device image): nvidia-cudnn-frontend 1.32.0 (--no-deps: its
# cutlass-dsl/tvm-ffi needs serve only its optional DSL kernels), lmdb 3.0.0 (a core
# netforge dependency). Everything else (cupy-cuda13x, nvidia-cudnn-cu13, ml-dtypes, numpy,
# protobuf, click, h5py, pillow, pytest, torch, torchvision) is on the image.
#
# Steps, each with its own time limit so the whole fits in 8 minutes; every figure and log
# lands in $OUT (at most 8 files come back):
#   1. environment.txt   versions, GPU, `import cudnn` without torch
#   2. pytest_gpu.log    pytest -m gpu (layer tables on CuPy, kernels, LeNet vs CPU, graphs)
#   3. lenet_train.log   the MNIST sample converted and LeNet trained 500 iterations on GPU
#   4. bench_gpu.json/.log  tools/bench/gpu.py (netforge vs PyTorch, same session)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed" | tee "$OUT/environment.txt"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site"
PY=python3

{
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import cupy, numpy, ml_dtypes; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'ml_dtypes', ml_dtypes.__version__); print('cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
    $PY -c "import sys, cudnn; print('cudnn-frontend', cudnn.__version__, 'backend', cudnn.backend_version_string()); print('torch imported by cudnn:', 'torch' in sys.modules)"
    $PY -c "import torch; print('torch', torch.__version__)"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

echo "== pytest -m gpu ($(( $(date +%s) - start )) s)"
timeout 200 $PY -m pytest -q -m gpu tests/gpu --maxfail=30 -p no:cacheprovider -rf \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_gpu.log"
tail -n 30 "$OUT/pytest_gpu.log"

echo "== LeNet training on GPU ($(( $(date +%s) - start )) s)"
RUN=/tmp/gpu_lenet
rm -rf "$RUN"; mkdir -p "$RUN"
{
    $PY tools/mnist_to_folders.py --csv tests/data/mnist_4k.csv.gz "$RUN/digits" &&
    $PY -m netforge convert "$RUN/digits" "$RUN/mnist" --gray --val-fraction 0.1 --seed 1 \
        --resize-height 32 --resize-width 32 &&
    sed -e "s#demo_run/#$RUN/#g" -e "s/max_iter: [0-9]*/max_iter: 500/" \
        -e "s/snapshot: [0-9]*/snapshot: 500/" -e "s/test_interval: [0-9]*/test_interval: 250/" \
        configs/lenet_solver.prototxt > "$RUN/solver.prototxt" &&
    sed -e "s#demo_run/#$RUN/#g" configs/lenet_train_test.prototxt > "$RUN/lenet_train_test.prototxt" &&
    sed -i "s#configs/lenet_train_test.prototxt#$RUN/lenet_train_test.prototxt#" "$RUN/solver.prototxt" &&
    timeout 150 $PY -m netforge train --solver "$RUN/solver.prototxt" --gpu 0
} > "$OUT/lenet_train.log" 2>&1
echo "lenet rc=$?" >> "$OUT/lenet_train.log"
grep -E "Test net output|Optimization|error|rc=" "$OUT/lenet_train.log" | tail -n 12

echo "== tools/bench/gpu.py ($(( $(date +%s) - start )) s)"
left=$(( 470 - ($(date +%s) - start) ))
timeout $(( left > 30 ? left : 30 )) $PY tools/bench/gpu.py --out "$OUT" \
    --budget-s $(( left > 60 ? left - 60 : 10 )) > "$OUT/bench_gpu.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench_gpu.log"
cat "$OUT/bench_gpu.log" | grep -v traceback | tail -n 20
echo "== done in $(( $(date +%s) - start )) s"
