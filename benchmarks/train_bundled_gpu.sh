#!/usr/bin/env bash
# The bundled unCLIP model's recipe on one GPU: the `cpu` preset's architecture and data (shapes, seed 0),
# trained longer than the CPU hour allows, in about 6 minutes of one GPU. Stages that do not depend on each
# other train side by side (small models leave a GPU mostly idle): the upsampler beside everything, then the
# prior beside the decoder once CLIP is done. Each stage has a minutes cap (--max-minutes) as a safety net.
# Usage:
#   bash benchmarks/train_bundled_gpu.sh WORK_DIR       writes WORK_DIR/unclip (trained) and WORK_DIR/export
# Needs a CUDA build of torch and `pip install -e .`; nothing is downloaded.
set -euo pipefail
WORK="${1:?usage: train_bundled_gpu.sh WORK_DIR}"
R="$WORK/unclip" P="$WORK/prior-run" U="$WORK/upsampler-run"
mkdir -p "$WORK"
export DALLE2_SHAPES_CACHE="${DALLE2_SHAPES_CACHE:-$WORK/shapes-cache}"  # render once, not per step
COMMON=(--data shapes --preset cpu --no-progress --set data.num_workers=5 --set train.keep_checkpoints=1)
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "upsampler (beside every other stage) and CLIP"
dalle2 train upsampler "${COMMON[@]}" --out "$U" --max-steps 6000 --max-minutes 5.0 \
  --set train.checkpoint_every=1000 > "$WORK/upsampler.log" 2>&1 &
up=$!
dalle2 train clip "${COMMON[@]}" --out "$R" --max-steps 3000 --max-minutes 1.5 \
  --set train.batch_size=128 --set train.checkpoint_every=1000 > "$WORK/clip.log" 2>&1
stamp "CLIP done; prior and decoder"
mkdir -p "$P"
cp -r "$R/clip" "$R/tokenizer" "$R/model_index.json" "$P/"
dalle2 train prior "${COMMON[@]}" --out "$P" --max-steps 3000 --max-minutes 3.5 \
  --set train.batch_size=256 --set prior.pool_size=50000 --set train.checkpoint_every=1000 > "$WORK/prior.log" 2>&1 &
pr=$!
dalle2 train decoder "${COMMON[@]}" --out "$R" --max-steps 7000 --max-minutes 3.5 \
  --set train.batch_size=64 --set train.checkpoint_every=1000 > "$WORK/decoder.log" 2>&1
stamp "decoder done"
wait "$pr"
stamp "prior done"
wait "$up"
stamp "upsampler done; merging and exporting"
cp -r "$P/prior" "$U/upsampler" "$R/"
python3 - "$R" "$P" "$U" <<'PY'
import json, sys
from pathlib import Path

from dalle2.stages.clip_stage import write_model_index

run, prior_run, up_run = (Path(p) for p in sys.argv[1:])
for folder, component in ((prior_run, "prior"), (up_run, "upsampler")):
    entry = json.loads((folder / "model_index.json").read_text())["components"][component]
    write_model_index(run, component, entry, {})
index = json.loads((run / "model_index.json").read_text())
index["resolutions"] = sorted({c["image_size"] for c in index["components"].values() if c.get("image_size")})
(run / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
for stage in ("clip", "prior", "decoder", "upsampler"):
    train = json.loads((run / stage / "report.json").read_text())["train"]
    print(f"{stage:9s} {train['step']:6d} steps, {train['samples_per_second']:8.1f} samples/s, "
          f"final loss {train['final_loss']:.4f}, stopped: {train.get('stop_reason', '?')}")
PY
dalle2 export "$R" "$WORK/export" --overwrite --note "bundled recipe: benchmarks/train_bundled_gpu.sh (seed 0)"
stamp "total"
