#!/usr/bin/env bash
# The LeNet demo, end to end on CPU: the bundled MNIST sample → PNG class folders →
# `netforge convert` (LMDB, 10% held out) → `netforge train` → `netforge test`.
# Everything it writes goes under demo_run/ (git-ignored). Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=demo_run
start=$(date +%s)

rm -rf "$RUN"
mkdir -p "$RUN"
echo "== 1. expanding tests/data/mnist_4k.csv.gz into PNG class folders"
"$BIN/python" tools/mnist_to_folders.py --csv tests/data/mnist_4k.csv.gz "$RUN/digits"

echo "== 2. netforge convert (LMDB, 10% of each class held out for validation)"
"$BIN/netforge" convert "$RUN/digits" "$RUN/mnist" --gray --val-fraction 0.1 --seed 1

echo "== 3. netforge train (LeNet, configs/lenet_solver.prototxt)"
"$BIN/netforge" train --solver configs/lenet_solver.prototxt 2>&1 | tee "$RUN/train.log"

echo "== 4. netforge test (the held-out digits, final snapshot)"
"$BIN/netforge" test --model configs/lenet_train_test.prototxt \
    --weights "$RUN/lenet_iter_2000.caffemodel" --iterations 4 2>"$RUN/test.log" \
    | tee "$RUN/test_result.txt"

echo "== 5. netforge plot (training curves from the metrics file written beside the snapshots)"
"$BIN/netforge" plot "$RUN/lenet_metrics.jsonl" --output "$RUN/curves.png"

echo "== done in $(( $(date +%s) - start )) s; outputs in $RUN/"
