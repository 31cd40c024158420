#!/usr/bin/env bash
# One GPU, under 8 minutes: decoder training steps at the `gpu` preset in bf16, then sampling.
# Prints training samples/s (from the stage report) and sampling images/s. Usage:
#   bash benchmarks/gpu_check.sh [WORK_DIR]      (default: a fresh temporary folder)
# Needs a CUDA build of torch and `pip install -e .`; data is the built-in `shapes` (nothing is downloaded).
set -euo pipefail
WORK="${1:-$(mktemp -d)}"
RUN="$WORK/gpu-check"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PY
start=$(date +%s)
# the decoder needs a CLIP (and the sampler a prior) in the folder: short runs, it is the decoder we time
dalle2 train clip --data shapes --preset gpu --out "$RUN" --max-steps 150 --no-progress \
  --set clip.eval_samples=200
dalle2 train prior --data shapes --preset gpu --out "$RUN" --max-steps 150 --no-progress \
  --set prior.pool_size=5000 --set prior.eval_samples=200
dalle2 train decoder --data shapes --preset gpu --out "$RUN" --max-steps 300 --no-progress \
  --set train.checkpoint_every=1000 --set decoder.eval_samples=64
dalle2 train upsampler --data shapes --preset gpu --out "$RUN" --max-steps 60 --no-progress \
  --set train.checkpoint_every=1000 --set upsampler.eval_samples=16
python3 - "$RUN" <<'PY'
import json, sys, time
from pathlib import Path

import torch

import dalle2

run = Path(sys.argv[1])
for stage in ("clip", "prior", "decoder", "upsampler"):
    train = json.loads((run / stage / "report.json").read_text())["train"]
    print(f"{stage:9s} train: {train['samples_per_second']:.1f} samples/s over {train['step']} steps (bf16)")
pipe = dalle2.load(run).to("cuda")
prompts = ["a red circle above a blue square"] * 16
pipe(prompts[:2], n=1, seed=0)  # warm-up
torch.cuda.synchronize()
start = time.perf_counter()
images = pipe(prompts, n=4, seed=0)
torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(f"sampling: {len(images) / seconds:.1f} images/s at {images[0].size[0]}x{images[0].size[1]} "
      f"(batch {len(images)}, default steps)")
PY
echo "total: $(( $(date +%s) - start )) s"
