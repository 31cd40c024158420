"""Zero-shot attribute accuracy of a CLIP on ``shapes`` test images: colour, shape, count, position, relation.

For each image the candidate prompts differ only in the attribute under test; the prediction is the prompt
whose text embedding has the largest dot product with the image embedding (cosine, for L2-normalised
embeddings). The ground truth is the sample's ``meta`` (:func:`dalle2.data.shapes.scene_meta`).

* colour: single-object images, "a COLOUR SHAPE" for every colour at the true shape (chance 1/9);
* shape: single-object images, "a COLOUR SHAPE" for every shape at the true colour (chance 1/6);
* count: ``count`` scenes (1..4 identical objects), "NUMBER COLOUR SHAPE(S)" for every number, e.g. "one red
  circle" ... "four red circles" (chance 1/4);
* position: single-object images, "a COLOUR SHAPE CELL-PHRASE" for every cell of the 3x3 grid, e.g. "a red
  circle in the top left corner" (chance 1/9);
* relation: ``relation`` scenes, "a SUBJECT RELATION an OBJECT" for the four relations, e.g. "a red circle to
  the left of a blue square". A prediction is right when it holds under the GenEval rule the captions are
  true by (:func:`dalle2.data.shapes.geneval_relations` on the objects' boxes): a diagonal pair can be both
  "left of" and "above" its partner, so chance is the mean over images of (true relations) / 4, reported;
* binding: ``relation`` scenes of two differently coloured objects, the true relation caption against the
  same caption with the two colours exchanged, e.g. "a red circle to the left of a blue square" or "a blue
  circle to the left of a red square" (chance 1/2): whether the colours are bound to the right objects.

:func:`zero_shot_report` gives all six (the CLIP stage's ``report.json["zero_shot"]``);
:func:`attribute_accuracy` alone is colour and shape (also used by ``benchmarks/evaluator_zero_shot.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "attribute_accuracy",
    "binding_accuracy",
    "count_accuracy",
    "count_prompts",
    "position_accuracy",
    "position_prompts",
    "relation_accuracy",
    "relation_prompts",
    "single_object",
    "true_relations",
    "zero_shot_report",
]

EmbedTexts = Callable[[list[str]], torch.Tensor]
TEXT_BATCH = 256  # prompts per call of embed_texts


def single_object(meta: dict[str, Any]) -> bool:
    """Whether a ``shapes`` sample's metadata describes one object alone (the images this check uses)."""
    return meta.get("kind") == "single" and len(meta.get("objects", [])) == 1


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def count_prompts(color: str, shape: str) -> list[str]:
    """The count candidates for objects of ``color`` and ``shape``: "one red circle", "two red circles", ..."""
    from dalle2.data.shapes import MAX_COUNT, NUMBER_WORDS, PLURALS

    return [f"{NUMBER_WORDS[n]} {color} {shape if n == 1 else PLURALS[shape]}" for n in range(1, MAX_COUNT + 1)]


def position_prompts(color: str, shape: str) -> list[str]:
    """The position candidates, one per cell of ``CELLS``: "a red circle in the top left corner", ..."""
    from dalle2.data.shapes import CELL_PHRASES, CELLS

    return [f"{_article(f'{color} {shape}')} {CELL_PHRASES[cell]}" for cell in CELLS]


def relation_prompts(subject: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """The relation candidates, one per ``RELATIONS`` entry: "a red circle to the left of a blue square", ..."""
    from dalle2.data.shapes import RELATION_PHRASES, RELATIONS

    a, b = _article(f"{subject['color']} {subject['shape']}"), _article(f"{obj['color']} {obj['shape']}")
    return [f"{a} {RELATION_PHRASES[rel][0]} {b}" for rel in RELATIONS]


def _embed(prompts: list[str], embed_texts: EmbedTexts) -> dict[str, torch.Tensor]:
    """Each distinct prompt -> its embedding (D,), float32 on the CPU; ``embed_texts`` called in batches."""
    unique = list(dict.fromkeys(prompts))
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(unique), TEXT_BATCH):
        chunk = unique[start : start + TEXT_BATCH]
        table = embed_texts(chunk).float().cpu()  # (N, D)
        out.update(zip(chunk, table, strict=True))
    return out


def _pick(image_embed: torch.Tensor, prompts: list[str], table: dict[str, torch.Tensor]) -> int:
    """Index of the prompt nearest the image embedding."""
    candidates = torch.stack([table[p] for p in prompts])  # (K, D)
    return int((candidates @ image_embed.float().cpu()).argmax())


def attribute_accuracy(
    image_embeds: torch.Tensor,
    metas: Sequence[dict[str, Any]],
    embed_texts: EmbedTexts,
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
    table = table.view(len(colors), len(shapes), -1)  # (C * S, D) -> (C, S, D)
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


def count_accuracy(
    image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]], embed_texts: EmbedTexts
) -> dict[str, Any]:
    """Count accuracy over the ``count`` scenes among ``metas`` (see the module docstring); ``{}`` if none."""
    from dalle2.data.shapes import MAX_COUNT

    picks = [i for i, meta in enumerate(metas) if meta.get("kind") == "count" and meta.get("objects")]
    if not picks:
        return {}
    prompts = {i: count_prompts(metas[i]["objects"][0]["color"], metas[i]["objects"][0]["shape"]) for i in picks}
    table = _embed([p for ps in prompts.values() for p in ps], embed_texts)
    right = sum(_pick(image_embeds[i], prompts[i], table) + 1 == len(metas[i]["objects"]) for i in picks)
    return {"count_images": len(picks), "count_accuracy": right / len(picks), "count_chance": 1 / MAX_COUNT}


def position_accuracy(
    image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]], embed_texts: EmbedTexts
) -> dict[str, Any]:
    """Position (grid cell) accuracy over the single-object images among ``metas``; ``{}`` if none."""
    from dalle2.data.shapes import CELLS

    picks = [i for i, meta in enumerate(metas) if single_object(meta)]
    if not picks:
        return {}
    prompts = {i: position_prompts(metas[i]["objects"][0]["color"], metas[i]["objects"][0]["shape"]) for i in picks}
    table = _embed([p for ps in prompts.values() for p in ps], embed_texts)
    right = sum(CELLS[_pick(image_embeds[i], prompts[i], table)] == metas[i]["objects"][0]["cell"] for i in picks)
    return {"position_images": len(picks), "position_accuracy": right / len(picks), "position_chance": 1 / len(CELLS)}


def true_relations(meta: dict[str, Any]) -> set[str]:
    """Every relation that holds between a ``relation`` scene's subject and object (GenEval rule on their
    boxes), the captioned one included."""
    from dalle2.data.shapes import geneval_relations

    rel = meta["relation"]
    subject, obj = meta["objects"][rel["subject"]], meta["objects"][rel["object"]]
    return geneval_relations(subject["bbox"], obj["bbox"]) | {rel["relation"]}


def relation_accuracy(
    image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]], embed_texts: EmbedTexts
) -> dict[str, Any]:
    """Relation accuracy over the ``relation`` scenes among ``metas`` (right: the picked relation holds);
    the chance level is the mean share of true relations among the four. ``{}`` if no relation scene."""
    from dalle2.data.shapes import RELATIONS

    picks = [i for i, meta in enumerate(metas) if meta.get("kind") == "relation" and meta.get("relation")]
    if not picks:
        return {}
    prompts, truth = {}, {}
    for i in picks:
        rel = metas[i]["relation"]
        prompts[i] = relation_prompts(metas[i]["objects"][rel["subject"]], metas[i]["objects"][rel["object"]])
        truth[i] = true_relations(metas[i])
    table = _embed([p for ps in prompts.values() for p in ps], embed_texts)
    right = sum(RELATIONS[_pick(image_embeds[i], prompts[i], table)] in truth[i] for i in picks)
    chance = sum(len(truth[i]) for i in picks) / (len(RELATIONS) * len(picks))
    return {"relation_images": len(picks), "relation_accuracy": right / len(picks), "relation_chance": chance}


def binding_accuracy(
    image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]], embed_texts: EmbedTexts
) -> dict[str, Any]:
    """Colour-binding accuracy over the ``relation`` scenes of two different colours among ``metas`` (see the
    module docstring); ``{}`` if none."""
    from dalle2.data.shapes import RELATIONS, exchange_colours

    prompts = {}
    for i, meta in enumerate(metas):
        rel = meta.get("relation") if meta.get("kind") == "relation" else None
        if not rel:
            continue
        subject, obj = meta["objects"][rel["subject"]], meta["objects"][rel["object"]]
        true = relation_prompts(subject, obj)[RELATIONS.index(rel["relation"])]
        swapped = exchange_colours(true)  # None when both objects have one colour
        if swapped is None:
            continue
        prompts[i] = [true, swapped]
    if not prompts:
        return {}
    table = _embed([p for ps in prompts.values() for p in ps], embed_texts)
    right = sum(_pick(image_embeds[i], ps, table) == 0 for i, ps in prompts.items())
    return {"binding_images": len(prompts), "binding_accuracy": right / len(prompts), "binding_chance": 0.5}


def zero_shot_report(
    image_embeds: torch.Tensor, metas: Sequence[dict[str, Any]], embed_texts: EmbedTexts
) -> dict[str, Any]:
    """All six zero-shot accuracies with their chance levels and image counts (``images`` is the number of
    single-object images, for colour, shape and position); attributes without images are left out."""
    with torch.no_grad():
        return {
            **attribute_accuracy(image_embeds, metas, embed_texts),
            **count_accuracy(image_embeds, metas, embed_texts),
            **position_accuracy(image_embeds, metas, embed_texts),
            **relation_accuracy(image_embeds, metas, embed_texts),
            **binding_accuracy(image_embeds, metas, embed_texts),
        }
