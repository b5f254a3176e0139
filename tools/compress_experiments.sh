#!/usr/bin/env bash
# Reproduces the two tables of the README's compress section on CPU (a few minutes alone):
#   1. a half-width LeNet student trained alone vs with a 2x-wide LeNet teacher (distillation),
#   2. DSD (dense 2000 + sparse 1000 + re-dense 1000) vs dense LeNet 4000 iterations,
# seeds 1-3, accuracy on the 400 held-out digits of the demo's data.
# Usage: tools/compress_experiments.sh [WORKDIR]   (default /tmp/distill; reruns reuse the
# data and any finished training run found there).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
W=${1:-/tmp/distill}
mkdir -p "$W"

echo "== data: the demo's steps 1-2 (PNG class folders -> 32x32 LMDBs, 10% held out)"
if [ ! -d "$W/mnist/val" ]; then
    "$BIN/python" tools/mnist_to_folders.py --csv tests/data/mnist_4k.csv.gz "$W/digits"
    "$BIN/netforge" convert "$W/digits" "$W/mnist" --gray --val-fraction 0.1 --seed 1 \
        --resize-height 32 --resize-width 32
fi

# The configs read demo_run/mnist/*: copies pointing at $W/mnist, and per-seed solvers.
for net in lenet lenet_teacher lenet_student lenet_distill; do
    sed "s#demo_run/mnist#$W/mnist#" "configs/${net}_train_test.prototxt" > "$W/${net}_train_test.prototxt"
done
solver() {  # solver NET SEED MAX_ITER OUTDIR -> path of a solver file
    local base=configs/${1}_solver.prototxt out=$W/${1}_s${2}_${3}.prototxt
    sed -e "s#^net:.*#net: \"$W/${1}_train_test.prototxt\"#" -e "s#^max_iter:.*#max_iter: $3#" \
        -e "s#^snapshot_prefix:.*#snapshot_prefix: \"$4/net\"#" -e "/^random_seed:/d" "$base" > "$out"
    echo "random_seed: $2" >> "$out"
    echo "$out"
}
train() {  # train OUTDIR FINAL_ITER ARGS... (skipped when OUTDIR holds the final snapshot)
    local dir=$1 final=$2; shift 2
    mkdir -p "$dir"
    [ -f "$dir/net_iter_$final.caffemodel" ] || "$BIN/netforge" train "$@" > "$dir/train.log" 2>&1
}
score() {  # score MODEL WEIGHTS [OUTPUT] -> accuracy (or OUTPUT, e.g. loss) on the 400 held-out digits
    "$BIN/netforge" test --model "$1" --weights "$2" --iterations 4 2>/dev/null \
        | sed -n "s/^${3:-accuracy} = //p"
}
mean() { "$BIN/python" -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{sum(v)/len(v):.4f}")' "$@"; }

echo "== dense LeNet, 4000 iterations, seeds 1-3 (its 2000-iteration snapshots: DSD's start)"
for s in 1 2 3; do
    train "$W/dense_s$s" 4000 --solver "$(solver lenet "$s" 4000 "$W/dense_s$s")"
done

echo "== teachers (2x-wide LeNet + dropout), 4000 iterations, seeds 1-3"
for s in 1 2 3; do
    train "$W/teacher_s$s" 4000 --solver "$(solver lenet_teacher "$s" 4000 "$W/teacher_s$s")"
done

echo "== students, 2000 iterations: alone, and distilled from the teacher of the same seed"
for s in 1 2 3; do
    train "$W/student_s$s" 2000 --solver "$(solver lenet_student "$s" 2000 "$W/student_s$s")"
    train "$W/distill_s$s" 2000 --solver "$(solver lenet_distill "$s" 2000 "$W/distill_s$s")" \
        --weights "$W/teacher_s$s/net_iter_4000.caffemodel"
done

echo "== DSD from each dense 2000-iteration snapshot (configs/lenet_dsd_recipe.prototxt)"
for s in 1 2 3; do
    [ -f "$W/dsd_s$s/report.txt" ] || { mkdir -p "$W/dsd_s$s" && "$BIN/netforge" compress \
        --solver "$(solver lenet "$s" 4000 "$W/dsd_s$s")" --weights "$W/dense_s$s/net_iter_2000.caffemodel" \
        --recipe configs/lenet_dsd_recipe.prototxt --output "$W/dsd_s$s/dsd.nfz" \
        > "$W/dsd_s$s/report.txt" 2> "$W/dsd_s$s/compress.log"; }
done

student_net=$W/lenet_student_train_test.prototxt
echo
echo "Table 1: half-width LeNet student (conv 10/25, ip 250), 2000 iterations alone or distilled"
echo "(T = 4, 0.9 soft + 0.1 hard) from a 2x-wide LeNet teacher (conv 40/100, ip 1000, dropout), 4000 it."
echo "(accuracy, and in brackets the held-out cross-entropy: a finer measure than 400 digits' accuracy)"
printf '%-6s %-22s %-22s %-22s\n' seed teacher alone distilled
t=(); a=(); d=(); tl=(); al=(); dl=()
for s in 1 2 3; do
    teacher=("$W/lenet_teacher_train_test.prototxt" "$W/teacher_s$s/net_iter_4000.caffemodel")
    t+=("$(score "${teacher[@]}")"); tl+=("$(score "${teacher[@]}" loss)")
    a+=("$(score "$student_net" "$W/student_s$s/net_iter_2000.caffemodel")")
    al+=("$(score "$student_net" "$W/student_s$s/net_iter_2000.caffemodel" loss)")
    d+=("$(score "$student_net" "$W/distill_s$s/net_iter_2000.caffemodel")")
    dl+=("$(score "$student_net" "$W/distill_s$s/net_iter_2000.caffemodel" loss)")
    printf '%-6s %-22s %-22s %-22s\n' "$s" "${t[-1]} (${tl[-1]})" "${a[-1]} (${al[-1]})" \
        "${d[-1]} (${dl[-1]})"
done
printf '%-6s %-22s %-22s %-22s\n' mean "$(mean "${t[@]}") ($(mean "${tl[@]}"))" \
    "$(mean "${a[@]}") ($(mean "${al[@]}"))" "$(mean "${d[@]}") ($(mean "${dl[@]}"))"

echo
echo "Table 2: LeNet, 4000 iterations in all: dense vs DSD (dense 2000 + sparse 50% 1000 + re-dense 1000 at lr/10)"
echo "(accuracy, and in brackets the held-out cross-entropy)"
printf '%-6s %-20s %-20s %-20s %-20s\n' seed dense4000 dense2000 "D+S (sparse)" DSD
x=(); y=(); xl=(); yl=()
for s in 1 2 3; do
    x+=("$(score "$W/lenet_train_test.prototxt" "$W/dense_s$s/net_iter_4000.caffemodel")")
    xl+=("$(score "$W/lenet_train_test.prototxt" "$W/dense_s$s/net_iter_4000.caffemodel" loss)")
    # the stage table's accuracy and loss (compress tests the same 400 digits after each stage)
    mapfile -t stages < <(sed -n 's/.*accuracy = \([0-9.]*\).*/\1/p' "$W/dsd_s$s/report.txt")
    mapfile -t losses < <(sed -n 's/.*accuracy = .*loss = \([0-9.]*\).*/\1/p' "$W/dsd_s$s/report.txt")
    y+=("${stages[2]}"); yl+=("${losses[2]}")
    printf '%-6s %-20s %-20s %-20s %-20s\n' "$s" "${x[-1]} (${xl[-1]})" "${stages[0]} (${losses[0]})" \
        "${stages[1]} (${losses[1]})" "${stages[2]} (${losses[2]})"
done
printf '%-6s %-20s %-20s %-20s %-20s\n' mean "$(mean "${x[@]}") ($(mean "${xl[@]}"))" "" "" \
    "$(mean "${y[@]}") ($(mean "${yl[@]}"))"
