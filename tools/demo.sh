#!/usr/bin/env bash
# The LeNet demo, end to end on CPU: the bundled MNIST sample → PNG class folders →
# `netforge convert` (LMDB, 10% held out) → `netforge train` → `netforge test` → freeze and
# predict → `netforge compress` (Deep Compression to an .nfz) → predict with the compressed model.
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

echo "== 2. netforge convert (LMDB at 32x32, 10% of each class held out for validation)"
# 32x32 so that training can take random 28x28 crops (see configs/lenet_train_test.prototxt).
"$BIN/netforge" convert "$RUN/digits" "$RUN/mnist" --gray --val-fraction 0.1 --seed 1 \
    --resize-height 32 --resize-width 32

echo "== 3. netforge train (LeNet, configs/lenet_solver.prototxt)"
"$BIN/netforge" train --solver configs/lenet_solver.prototxt 2>&1 | tee "$RUN/train.log"

echo "== 4. netforge test (the held-out digits, final snapshot)"
"$BIN/netforge" test --model configs/lenet_train_test.prototxt \
    --weights "$RUN/lenet_iter_2000.caffemodel" --iterations 4 2>"$RUN/test.log" \
    | tee "$RUN/test_result.txt"

echo "== 5. netforge plot (training curves from the metrics file written beside the snapshots)"
"$BIN/netforge" plot "$RUN/lenet_metrics.jsonl" --output "$RUN/curves.png"

echo "== 6. netforge freeze (deploy net + weights + preprocessing + labels in one file)"
# The database holds 32x32 digits and TEST takes their centre 28x28: --image-dims 32 32 makes
# predict do the same (resize to 32x32, centre crop to the net's 28x28 input).
"$BIN/netforge" freeze --model configs/lenet.prototxt \
    --weights "$RUN/lenet_iter_2000.caffemodel" --output "$RUN/lenet.nf" \
    --scale 0.00390625 --image-dims 32 32 --labels "$RUN/mnist/labels.txt"

echo "== 7. netforge predict (one digit image of each class from the sample)"
for digit in 0 1 2 3 4 5 6 7 8 9; do ls "$RUN/digits/$digit/"*.png | tail -n 1; done \
    | xargs "$BIN/netforge" -q predict "$RUN/lenet.nf" --top-k 3 | tee "$RUN/predictions.txt"

echo "== 8. netforge compress (prune -> retrain, k-means sharing, Huffman: configs/lenet_compress_recipe.prototxt)"
"$BIN/netforge" compress --solver configs/lenet_solver.prototxt \
    --weights "$RUN/lenet_iter_2000.caffemodel" --recipe configs/lenet_compress_recipe.prototxt \
    --output "$RUN/lenet.nfz" 2>"$RUN/compress.log" | tee "$RUN/compress_report.txt"

echo "== 9. netforge predict with the compressed model (.nfz as --weights of freeze)"
"$BIN/netforge" freeze --model configs/lenet.prototxt --weights "$RUN/lenet.nfz" \
    --output "$RUN/lenet_compressed.nf" --scale 0.00390625 --image-dims 32 32 \
    --labels "$RUN/mnist/labels.txt"
for digit in 0 1 2 3 4 5 6 7 8 9; do ls "$RUN/digits/$digit/"*.png | tail -n 1; done \
    | xargs "$BIN/netforge" -q predict "$RUN/lenet_compressed.nf" --top-k 1 \
    | tee "$RUN/predictions_compressed.txt"

echo "== done in $(( $(date +%s) - start )) s; outputs in $RUN/"
