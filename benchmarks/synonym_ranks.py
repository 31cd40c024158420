"""Do prompts with words never seen in training land near their meaning? Rank of the intended caption.

    python benchmarks/synonym_ranks.py PIPELINE_DIR [PIPELINE_DIR ...]

For each query ("a crimson disc" meaning "a red circle", ...) the CLIP text embedding is compared with the 54
single-object captions "a {colour} {shape}" of ``shapes``; the rank of the intended one is printed (1 = best,
54 = worst, about 27 by chance) and written to ``benchmarks/results/synonym_ranks.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

QUERIES = {
    "a crimson disc": "a red circle",
    "a scarlet ball": "a red circle",
    "an azure box": "a blue square",
    "a golden star": "a yellow star",
}


def main() -> None:
    from dalle2.data.shapes import COLORS, SHAPES
    from dalle2.models.clip import ClipModel

    candidates = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", metavar="PIPELINE_DIR", help="pipeline folders whose CLIP to rank with")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    args = parser.parse_args()
    rows = []
    for folder in args.models:
        clip = ClipModel.load(Path(folder) / "clip").eval()
        with torch.no_grad():
            zc, _, _ = clip.encode_prompts(candidates)
            for query, target in QUERIES.items():
                zq, _, _ = clip.encode_prompts([query])
                sims = (zq @ zc.T)[0]
                rank = int((sims > sims[candidates.index(target)]).sum()) + 1
                rows.append({"model": folder, "text_encoder": clip.text_encoder, "query": query,
                             "intended": target, "rank": rank, "of": len(candidates)})  # fmt: skip
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "synonym_ranks.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Rank of the intended caption among 54 (chance about 27)", "",
             f"Command: `python benchmarks/synonym_ranks.py {' '.join(args.models)}`", "",
             "| model | text encoder | query | intended | rank |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['model']} | {r['text_encoder']} | {r['query']} | {r['intended']} | {r['rank']} |" for r in rows]
    (out / "synonym_ranks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
