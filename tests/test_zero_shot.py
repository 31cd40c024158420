"""dalle2.eval.zero_shot: colour and shape accuracy against a hand-built embedding space."""

from __future__ import annotations

import torch

from dalle2.data.shapes import COLORS, SHAPES
from dalle2.eval.zero_shot import attribute_accuracy

COLOR_LIST, SHAPE_LIST = list(COLORS), list(SHAPES)
PAIRS = [(c, s) for c in COLOR_LIST for s in SHAPE_LIST]


def one_hot_texts(prompts: list[str]) -> torch.Tensor:
    """Each "a COLOUR SHAPE" prompt -> an axis of its own."""
    assert prompts == [f"a {c} {s}" for c, s in PAIRS]
    return torch.eye(len(PAIRS))


def axis(color: str, shape: str) -> torch.Tensor:
    return torch.eye(len(PAIRS))[PAIRS.index((color, shape))]


def image(true: tuple[str, str], seen: tuple[str, str]) -> torch.Tensor:
    """An image of ``true`` whose embedding reads colour ``seen[0]`` at the true shape and shape ``seen[1]``
    at the true colour (the 0.5 keeps every argmax unique)."""
    return axis(seen[0], true[1]) + 0.5 * axis(true[0], seen[1])


def single(color: str, shape: str) -> dict:
    return {"kind": "single", "objects": [{"color": color, "shape": shape}]}


def test_attribute_accuracy_counts_colour_and_shape_apart_and_skips_scenes():
    (c0, c1), (s0, s1) = COLOR_LIST[:2], SHAPE_LIST[:2]
    true = (c0, s0)
    seen = [(c0, s0), (c1, s0), (c1, s1), (c0, s0)]  # right, colour wrong, both wrong, right
    metas = [single(*true)] * 3 + [{"kind": "two_objects", "objects": [single(*true)["objects"][0]] * 2}]
    images = torch.stack([image(true, s) for s in seen])
    result = attribute_accuracy(images, metas, one_hot_texts)
    assert result["images"] == 3  # the two-object scene is skipped
    assert result["color_accuracy"] == 1 / 3 and result["shape_accuracy"] == 2 / 3
    assert result["color_chance"] == 1 / len(COLOR_LIST) and result["shape_chance"] == 1 / len(SHAPE_LIST)
    assert attribute_accuracy(images[3:], metas[3:], one_hot_texts) == {}
