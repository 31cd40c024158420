"""What the FD feature space sees: zero-shot colour and shape accuracy of the ``clip-shapes-v1`` evaluator.

    python benchmarks/evaluator_zero_shot.py [--samples 2000]

On single-object ``shapes`` test images (64x64), each image embedding is compared with the text embeddings
of "a COLOUR SHAPE" for every colour at the true shape (colour accuracy) and every shape at the true colour
(shape accuracy), with ``dalle2.stages.zero_shot``, as the CLIP stage's report does for the pipeline's own
CLIP. Its image tower is the feature space of ``FD_clip-shapes-v1``, so this says how much of FD on
``shapes`` can be about shape.
Writes ``benchmarks/results/evaluator_zero_shot.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="test pairs to draw (single-object ones count)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    from dalle2.data import open_dataset
    from dalle2.eval.clip_evaluator import ClipScorer
    from dalle2.stages.zero_shot import attribute_accuracy, single_object

    scorer = ClipScorer.load("clip-shapes-v1")
    dataset = open_dataset("shapes", split="test", resolution=64, seed=0, length=args.samples)
    items = [s for s in (dataset[i] for i in range(len(dataset))) if single_object(s["meta"])]
    image_embeds = scorer.embed_images(torch.stack([s["image"] for s in items]))
    result = {
        "evaluator": scorer.name,
        **attribute_accuracy(image_embeds, [s["meta"] for s in items], scorer.embed_texts),
        "command": f"python benchmarks/evaluator_zero_shot.py --samples {args.samples}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluator_zero_shot.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "evaluator_zero_shot.md").write_text(
        "# Zero-shot attributes of the FD feature space (`clip-shapes-v1`)\n\n"
        f"`{result['command']}`: {result['images']} single-object `shapes` test images, 64x64\n\n"
        "| attribute | accuracy | chance |\n|---|---|---|\n"
        f"| colour | {result['color_accuracy']:.3f} | {result['color_chance']:.3f} |\n"
        f"| shape | {result['shape_accuracy']:.3f} | {result['shape_chance']:.3f} |\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
