"""Zero-shot colour and shape accuracy of a CLIP on single-object ``shapes`` images.

Each image embedding is compared with the text embeddings of "a COLOUR SHAPE" for every colour at the true
shape (colour accuracy) and for every shape at the true colour (shape accuracy). Used by the CLIP stage's
report for the pipeline's own CLIP and by ``benchmarks/evaluator_zero_shot.py`` for the evaluator CLIP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["attribute_accuracy", "single_object"]


def single_object(meta: dict[str, Any]) -> bool:
    """Whether a ``shapes`` sample's metadata describes one object alone (the images this check uses)."""
    return meta.get("kind") == "single" and len(meta.get("objects", [])) == 1


def attribute_accuracy(
    image_embeds: torch.Tensor,
    metas: Sequence[dict[str, Any]],
    embed_texts: Callable[[list[str]], torch.Tensor],
) -> dict[str, Any]:
    """Colour and shape accuracy (with chance levels) over the single-object images among ``metas``;
    ``image_embeds[i]`` belongs to ``metas[i]``, ``embed_texts`` maps prompts to (N, D) embeddings in the
    same space. An empty dict when no image has a single object."""
    from dalle2.data.shapes import COLORS, SHAPES

    picks = [i for i, meta in enumerate(metas) if single_object(meta)]
    if not picks:
        return {}
    colors, shapes = list(COLORS), list(SHAPES)
    table = embed_texts([f"a {c} {s}" for c in colors for s in shapes]).float().cpu()
    table = table.view(len(colors), len(shapes), -1)  # (C, S, D)
    right = {"color": 0, "shape": 0}
    for i in picks:
        obj = metas[i]["objects"][0]
        c, s = colors.index(obj["color"]), shapes.index(obj["shape"])
        embed = image_embeds[i].float().cpu()
        right["color"] += int((table[:, s] @ embed).argmax()) == c
        right["shape"] += int((table[c] @ embed).argmax()) == s
    return {
        "images": len(picks),
        "color_accuracy": right["color"] / len(picks),
        "color_chance": 1 / len(colors),
        "shape_accuracy": right["shape"] / len(picks),
        "shape_chance": 1 / len(shapes),
    }
