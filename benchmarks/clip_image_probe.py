"""Is shape in a CLIP's image embedding but not aligned with the text, or not there at all?

    python benchmarks/clip_image_probe.py [CLIP_DIR ...] [--train 6000] [--test 2000]

For each CLIP folder (a pipeline folder with ``clip/``, or a ``clip/`` folder itself; ``eval`` names the
shipped evaluation CLIP ``clip-shapes-v1`` as a reference), single-object ``shapes`` images of the train
split are embedded with the image tower and a linear probe (benchmarks/caption_probe.py's logistic
regression) learns to name the shape; it is scored on single-object images of the test split, beside the
zero-shot shape accuracy (``dalle2.stages.zero_shot.attribute_accuracy``, the CLIP report's number) on
the same test images. Probe well above zero-shot: the image tower sees shape and the contrastive
alignment is what misses it; probe near zero-shot: the image tower itself is blind to it.
Writes ``benchmarks/results/clip_image_probe.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from caption_probe import probe

RESULTS = Path(__file__).resolve().parent / "results"


def _singles(split: str, resolution: int, n: int) -> tuple[torch.Tensor, list[dict]]:
    from dalle2.data import open_dataset
    from dalle2.stages.zero_shot import single_object

    dataset = open_dataset("shapes", split=split, resolution=resolution, seed=0, length=n)
    items = [s for s in (dataset[i] for i in range(len(dataset))) if single_object(s["meta"])]
    return torch.stack([s["image"] for s in items]), [s["meta"] for s in items]


def _encoders(spec: str):
    """(name, resolution, embed_images, embed_texts) for a CLIP folder or ``eval``."""
    if spec == "eval":
        from dalle2.eval.clip_evaluator import ClipScorer

        scorer = ClipScorer.load("clip-shapes-v1")
        return "clip-shapes-v1 (evaluator)", 64, scorer.embed_images, scorer.embed_texts
    from dalle2.models.clip import ClipModel

    folder = Path(spec)
    model = ClipModel.load(folder / "clip" if (folder / "clip").is_dir() else folder).eval()

    def images(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])

    def texts(prompts: list[str]) -> torch.Tensor:
        return model.encode_prompts(prompts)[0]

    return spec, model.image_size, images, texts


@torch.no_grad()
def measure(spec: str, n_train: int, n_test: int) -> dict:
    from dalle2.data.shapes import SHAPES
    from dalle2.stages.zero_shot import attribute_accuracy

    start = time.time()
    name, resolution, embed_images, embed_texts = _encoders(spec)
    train_x, train_meta = _singles("train", resolution, n_train)
    test_x, test_meta = _singles("test", resolution, n_test)
    features = torch.cat([embed_images(train_x), embed_images(test_x)]).float()
    shapes = list(SHAPES)
    labels = torch.tensor([shapes.index(m["objects"][0]["shape"]) for m in train_meta + test_meta])
    is_train = torch.zeros(len(labels), dtype=torch.bool)
    is_train[: len(train_meta)] = True
    zero_shot = attribute_accuracy(features[~is_train], test_meta, embed_texts)
    with torch.enable_grad():
        probed = probe(features, labels, is_train, len(shapes))
    return {
        "clip": name,
        "resolution": resolution,
        "train_images": len(train_meta),
        "test_images": len(test_meta),
        "shape_probe": round(probed, 4),
        "shape_zero_shot": round(zero_shot["shape_accuracy"], 4),
        "colour_zero_shot": round(zero_shot["color_accuracy"], 4),
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", default=["src/dalle2/assets/models/unclip-shapes", "eval"],
                        help="pipeline or clip/ folders, or 'eval' for the evaluation CLIP")  # fmt: skip
    parser.add_argument("--train", type=int, default=6000, help="train-split samples drawn (single objects kept)")
    parser.add_argument("--test", type=int, default=2000, help="test-split samples drawn (single objects kept)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    rows = []
    for spec in args.clips:
        rows.append(measure(spec, args.train, args.test))
        print(json.dumps(rows[-1]), flush=True)
    sizes = f"--train {args.train} --test {args.test}"
    command = " ".join(["python benchmarks/clip_image_probe.py", *args.clips, sizes])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip_image_probe.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Shape in CLIP image embeddings: linear probe against zero-shot\n",
        f"`{command}`\n",
        "| CLIP | render | train / test images | shape, linear probe | shape, zero-shot | colour, zero-shot |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['clip']} | {r['resolution']} | {r['train_images']} / {r['test_images']} | {r['shape_probe']:.3f} | "
        f"{r['shape_zero_shot']:.3f} | {r['colour_zero_shot']:.3f} |"
        for r in rows
    ]
    (out / "clip_image_probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
