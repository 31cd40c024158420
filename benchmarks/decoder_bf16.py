"""bf16 autocast against fp32 for a pipeline's decoder training step on this CPU (AMX or not: measure).

    python benchmarks/decoder_bf16.py [MODEL_DIR] [--threads 2] [--batch 32] [--steps 15] [--rounds 2]

Full training steps (the decoder's own loss with its condition drops, backward, AdamW) on random 32x32
inputs, z_i and caption ids; fp32 and bf16 alternately, ``--rounds`` times each, 3 warm-up steps before
each timing. Prints samples/s and whether oneDNN reports bf16 support. No results file: the number belongs
to the machine, see docs/results.md.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="unclip", help="pipeline folder (default: the bundled unCLIP)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dalle2 import load

    dec = load(args.model).decoder.train()
    opt = torch.optim.AdamW(dec.parameters(), 1e-4)
    b, r = args.batch, dec.image_size
    x0, z = torch.randn(b, 3, r, r), torch.randn(b, int(dec.config.net["embed_dim"]))
    length = int(dec.config.net.get("caption_length", 32))
    ids, mask = torch.randint(1, 400, (b, length)), torch.ones(b, length, dtype=torch.bool)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = dec.loss(dec, x0, image_embed=z, text_tokens=ids, text_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()

    print(f"oneDNN bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for _ in range(args.rounds):
        for bf16 in (False, True):
            for _ in range(3):
                step(bf16)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(bf16)
            rate = args.steps * b / (time.perf_counter() - start)
            print(f"{'bf16' if bf16 else 'fp32'}: {rate:.1f} samples/s", flush=True)


if __name__ == "__main__":
    main()
