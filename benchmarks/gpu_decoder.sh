#!/usr/bin/env bash
# Continue the bundled unCLIP's decoder on one GPU inside a fixed wall-clock budget (issue 21, item 6).
#
#   bash benchmarks/gpu_decoder.sh RESULTS_DIR [TRAIN_SECONDS]
#
# Same network, CLIP, prior and data as the bundled model; warm start from its decoder (--init-from), large
# batches, bf16 autocast, data rendered by DataLoader workers. A short timing run first measures steps per
# second on this machine, so that the cosine schedule of the real run ends inside TRAIN_SECONDS (a schedule
# cut off by the clock at a high learning rate scores far worse: docs/results.md, 2026-12-01). Leaves in
# RESULTS_DIR: gpu.txt (machine), timing.json, decoder.tar (the trained decoder component folder, its report
# and config), train.log. Evaluate and ship on the CPU:
#   tar -xf RESULTS_DIR/decoder.tar -C runs/gpu   (into a copy of the bundled folder without its decoder)
#   dalle2 eval runs/gpu --data shapes --quick --guidance 3 --out runs/gpu-eval
# Knobs (environment): BATCH (256), LR (5e-4), WORKERS (cores - 2), MP (bf16 on CUDA, else no),
# TIMING_STEPS (150), TRAIN_LENGTH (2,000,000 distinct scenes).
set -euo pipefail
OUT=${1:?usage: gpu_decoder.sh RESULTS_DIR [TRAIN_SECONDS]}
BUDGET=${2:-420}
BATCH=${BATCH:-256}
LR=${LR:-5e-4}
WORKERS=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
TIMING_STEPS=${TIMING_STEPS:-150}
TRAIN_LENGTH=${TRAIN_LENGTH:-2000000}
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # packages the machine lacks (diffusers), carried as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
MP=${MP:-$([ "$CUDA" = 1 ] && echo bf16 || echo no)}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    echo "cores $(nproc) workers $WORKERS batch $BATCH lr $LR mixed_precision $MP budget_s $BUDGET"
} | tee "$OUT/gpu.txt"

SRC=src/dalle2/assets/models/unclip-shapes
WORK=${WORK:-/tmp/gpu_decoder}
fresh() { rm -rf "$1" && cp -r "$SRC" "$1" && rm -r "$1/decoder"; }
train() {  # train FOLDER extra --set args...
    local dir=$1
    shift
    python3 -m dalle2 train decoder --out "$dir" --init-from "$SRC" \
        --set train.batch_size="$BATCH" --set train.learning_rate="$LR" --set train.mixed_precision="$MP" \
        --set data.num_workers="$WORKERS" --set data.train_length="$TRAIN_LENGTH" --set train.keep_checkpoints=1 "$@"
}

# 1. timing run: the whole path once (fails fast), and the steady rate for the schedule
mkdir -p "$WORK"
fresh "$WORK/timing"
train "$WORK/timing" --set train.max_steps="$TIMING_STEPS" --set train.checkpoint_every=100000 \
    >"$OUT/timing.log" 2>&1 || { tail -40 "$OUT/timing.log"; exit 1; }
STEPS=$(python3 - "$OUT/timing.log" "$BATCH" "$BUDGET" "$OUT/timing.json" <<'EOF'
import json, re, statistics, sys
# the progress bar's samples_s (the trainer's rate over its log window) in the second half of the run: the
# steady rate, without the start-up, the workers' warm-up and the final checkpoint
text = open(sys.argv[1]).read().replace("\r", "\n")
seen = [(int(m[1]), float(m[2])) for m in re.finditer(r"\| (\d+)/\d+ \[[^\n]*?samples_s=([\d.]+)", text)]
last = max(step for step, _ in seen)
rate = statistics.median(r for step, r in seen if step > last / 2) / int(sys.argv[2])  # steps per second
steps = int(rate * float(sys.argv[3]) * 0.93)  # 7% for checkpoints, previews and the final evaluation
json.dump({"samples_per_second": round(rate * int(sys.argv[2]), 1), "planned_steps": steps}, open(sys.argv[4], "w"))
print(steps)
EOF
)
echo "timing: $(cat "$OUT/timing.json")"

# 2. the run: a cosine schedule of STEPS that ends inside the budget (max_minutes is only a safety net)
fresh "$WORK/run"
EVERY=$((STEPS / 4 > 0 ? STEPS / 4 : 1))
train "$WORK/run" --no-progress --set train.max_steps="$STEPS" --set train.checkpoint_every="$EVERY" \
    --set train.max_minutes="$(python3 -c "print(round($BUDGET / 60 * 1.08, 2))")" >"$OUT/train.log" 2>&1 ||
    { tail -40 "$OUT/train.log"; exit 1; }
tail -12 "$OUT/train.log"
cp "$WORK/run/training/decoder/logs/decoder/"*.jsonl "$OUT/" 2>/dev/null || true
tar -cf "$OUT/decoder.tar" -C "$WORK/run" decoder
ls -la "$OUT"
