"""How much shape the frozen CLIP text tower's outputs carry: the case for the decoder's own caption encoder.

    python benchmarks/caption_probe.py [MODEL_DIR]   (default: the bundled unCLIP; any pipeline folder with a clip/)

Captions "a COLOUR SHAPE" and six other templates, every colour x shape. For each text representation the
decoder could read, a linear probe (logistic regression, standardised features) is trained to name the
shape on captions with six of the nine colours and scored on the other three:

* the pooled CLIP text embedding z_t (what the prior reads);
* the mean of CLIP's final hidden states over the caption (the token states a decoder attends to);
* the final hidden state of the shape word's last token (captions that end in the shape word);
* that token's input embedding (what a caption encoder trained with the decoder starts from).

Also the mean cosine between captions of one template that differ only in the shape word, and only in
the colour word. Writes ``benchmarks/results/caption_probe.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATES = (
    "a {c} {s}",
    "a small {c} {s}",
    "a large {c} {s} on a black background",
    "there is a {c} {s} at the top",
    "a {c} {s} in the bottom left corner",
    "a {c} {s} to the left of a white circle",
    "a blue square above a {c} {s}",
)


def probe(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a linear classifier (Adam, small L2) on standardised ``features``."""
    x = features.float()
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(x[train] @ w + b, labels[train]) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (x[~train] @ w + b).argmax(1).eq(labels[~train]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="src/dalle2/assets/models/unclip-shapes",
                        help="pipeline folder holding clip/ and tokenizer/")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from dalle2.data.shapes import COLORS, SHAPES
    from dalle2.models.clip import ClipModel

    clip = ClipModel.load(Path(args.model) / "clip").eval()
    colours = list(COLORS)
    rows = [(t.format(c=c, s=s), si, ci, ti) for ti, t in enumerate(TEMPLATES) for si, s in enumerate(SHAPES)
            for ci, c in enumerate(colours)]  # fmt: skip
    texts = [r[0] for r in rows]
    shape = torch.tensor([r[1] for r in rows])
    colour = torch.tensor([r[2] for r in rows])
    template = torch.tensor([r[3] for r in rows])
    with torch.no_grad():
        z_t, hidden, mask = clip.encode_prompts(texts)
        ids, _ = clip.tokenize(texts)
    m = mask.float()[..., None]
    mean_state = (hidden * m).sum(1) / m.sum(1)
    train = colour < 6
    ends = torch.tensor([t.split()[-1] in SHAPES for t in texts])  # the shape word is the last word
    word_at = mask.long().sum(1) - 2  # the token before EOS
    word_state = hidden[torch.arange(len(rows)), word_at]
    table = clip.text.text_model.embeddings.token_embedding.weight
    word_embedding = table[ids[torch.arange(len(rows)), word_at]].detach()
    n = len(SHAPES)
    accuracy = {
        "pooled z_t": probe(z_t, shape, train, n),
        "mean of the hidden states": probe(mean_state, shape, train, n),
        "final hidden state of the shape word's last token": probe(word_state[ends], shape[ends], train[ends], n),
        "input embedding of that token": probe(word_embedding[ends], shape[ends], train[ends], n),
    }

    def mean_cos(x: torch.Tensor, differ: torch.Tensor, same: torch.Tensor) -> float:
        x = F.normalize(x.float(), dim=-1)
        one_template = template[:, None] == template[None]
        pairs = one_template & (differ[:, None] != differ[None]) & (same[:, None] == same[None])
        return (x @ x.T)[pairs].mean().item()

    cosine = {
        name: {"shape word differs": mean_cos(x, shape, colour), "colour word differs": mean_cos(x, colour, shape)}
        for name, x in (("pooled z_t", z_t), ("mean of the hidden states", mean_state))
    }
    result = {"model": args.model, "captions": len(rows), "chance": round(1 / n, 3), "probe_accuracy": accuracy,
              "cosine": cosine}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "caption_probe.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# What the frozen CLIP text tower says about shape",
        "",
        f"Command: `python benchmarks/caption_probe.py {args.model}` ({len(rows)} captions; probes trained on six "
        f"colours, scored on the other three; chance {1 / n:.3f})",
        "",
        "| representation | shape probe accuracy |",
        "|---|---:|",
        *[f"| {name} | {acc:.3f} |" for name, acc in accuracy.items()],
        "",
        "| representation | mean cosine, shape word differs | colour word differs |",
        "|---|---:|---:|",
        *[f"| {k} | {v['shape word differs']:.3f} | {v['colour word differs']:.3f} |" for k, v in cosine.items()],
    ]
    (out / "caption_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
