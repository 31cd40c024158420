"""dalle2.stages.zero_shot: colour, shape, count, position, relation and binding accuracy on hand-built
embedding spaces."""

from __future__ import annotations

import zlib

import torch

from dalle2.data.shapes import CELLS, COLORS, RELATIONS, SHAPES, ShapesDataset, scene_from_spec, scene_meta
from dalle2.stages.zero_shot import (
    attribute_accuracy,
    binding_accuracy,
    count_accuracy,
    count_prompts,
    position_accuracy,
    position_prompts,
    relation_accuracy,
    relation_prompts,
    true_relations,
    zero_shot_report,
)

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


# -- count, position, relation: a space where every prompt is its own (random, nearly orthogonal) direction ----

DIM = 512


def random_texts(prompts: list[str]) -> torch.Tensor:
    """Each prompt -> a fixed random unit vector (seeded by the prompt): distinct prompts are nearly orthogonal
    (|cos| about 0.04), so an image embedding built from some prompts' vectors picks exactly those."""
    rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def pointing_at(*prompts: str) -> torch.Tensor:
    return random_texts(list(prompts)).sum(0)


def meta(kind: str, objects: list[dict], **spec) -> dict:
    return scene_meta(scene_from_spec(kind, 0, objects=objects, jitter=False, background="black", **spec), 32)


def test_prompts_differ_only_in_the_attribute():
    assert count_prompts("red", "star") == ["one red star", "two red stars", "three red stars", "four red stars"]
    assert count_prompts("blue", "cross")[1] == "two blue crosses"
    positions = position_prompts("orange", "circle")
    assert len(positions) == len(CELLS) == len(set(positions))
    assert (
        positions[0] == "an orange circle in the top left corner" and positions[4] == "an orange circle in the center"
    )
    relations = relation_prompts({"color": "red", "shape": "circle"}, {"color": "orange", "shape": "square"})
    assert relations == [
        "a red circle to the left of an orange square",
        "a red circle to the right of an orange square",
        "a red circle above an orange square",
        "a red circle below an orange square",
    ]


def test_count_accuracy_on_a_hand_built_space():
    metas = [meta("count", [{"shape": "star", "color": "red"}], count=n) for n in (1, 2, 3, 4)]
    metas.append(meta("single", [{"shape": "star", "color": "red"}]))  # not a count scene: skipped
    picked = [1, 2, 3, 1, 4]  # the counts the images "show": right, right, right, wrong (4 read as 1)
    images = torch.stack([pointing_at(count_prompts("red", "star")[n - 1]) for n in picked])
    assert count_accuracy(images, metas, random_texts) == {
        "count_images": 4,
        "count_accuracy": 0.75,
        "count_chance": 0.25,
    }
    assert count_accuracy(images[4:], metas[4:], random_texts) == {}


def test_position_accuracy_on_a_hand_built_space():
    cells = ["top left", "center", "bottom right", "top"]
    metas = [meta("single", [{"shape": "heart", "color": "green", "cell": c}]) for c in cells]
    seen = ["top left", "center", "bottom left", "bottom"]  # two right, two wrong
    images = torch.stack([pointing_at(position_prompts("green", "heart")[CELLS.index(c)]) for c in seen])
    result = position_accuracy(images, metas, random_texts)
    assert result == {"position_images": 4, "position_accuracy": 0.5, "position_chance": 1 / 9}


def test_relation_accuracy_counts_any_relation_that_holds():
    red, blue = {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}
    beside = meta("relation", [{**red, "cell": "left"}, {**blue, "cell": "center"}], relation="left of")
    diagonal = meta("relation", [{**red, "cell": "top left"}, {**blue, "cell": "bottom right"}], relation="left of")
    assert true_relations(beside) == {"left of"} and true_relations(diagonal) == {"left of", "above"}
    prompts = relation_prompts(red, blue)  # left of, right of, above, below
    metas = [beside, beside, diagonal, diagonal, diagonal]
    seen = [prompts[0], prompts[2], prompts[0], prompts[2], prompts[3]]  # right, wrong, right, right (above), wrong
    images = torch.stack([pointing_at(p) for p in seen])
    result = relation_accuracy(images, metas, random_texts)
    assert result["relation_images"] == 5 and result["relation_accuracy"] == 3 / 5
    assert result["relation_chance"] == (1 + 1 + 2 + 2 + 2) / (4 * 5)
    # the relation is read from meta's subject/object indices, not the order of the objects
    flipped = {
        **diagonal,
        "objects": diagonal["objects"][::-1],
        "relation": {**diagonal["relation"], "subject": 1, "object": 0},
    }
    assert relation_accuracy(images[2:3], [flipped], random_texts)["relation_accuracy"] == 1.0


def test_binding_accuracy_asks_which_object_has_which_colour():
    red, blue = {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}
    scene = meta("relation", [{**red, "cell": "left"}, {**blue, "cell": "center"}], relation="left of")
    same = meta("relation", [{**red, "cell": "left"}, {**red, "shape": "star", "cell": "center"}], relation="left of")
    true, exchanged = "a red circle to the left of a blue square", "a blue circle to the left of a red square"
    images = torch.stack([pointing_at(true), pointing_at(exchanged), pointing_at(true), pointing_at(true)])
    result = binding_accuracy(images, [scene, scene, scene, same], random_texts)  # same colours: skipped
    assert result == {"binding_images": 3, "binding_accuracy": 2 / 3, "binding_chance": 0.5}
    # subject and object come from meta's indices: the prompts name the subject first
    flipped = {**scene, "objects": scene["objects"][::-1], "relation": {**scene["relation"], "subject": 1, "object": 0}}
    assert binding_accuracy(images[:1], [flipped], random_texts)["binding_accuracy"] == 1.0
    assert binding_accuracy(images[:1], [same], random_texts) == {}


def test_report_is_perfect_when_each_image_points_at_its_true_prompts():
    """On 200 real test scenes: an image embedding made of its true prompts gets every attribute right, and an
    embedding pointing nowhere in particular gets them right about as often as chance."""
    data = ShapesDataset("test", 32, length=200)
    metas = [scene_meta(data.scene(i)[0], 32) for i in range(len(data))]
    images = []
    for m in metas:
        first = m["objects"][0]
        if m["kind"] == "single":
            prompts = [
                f"a {first['color']} {first['shape']}",
                position_prompts(first["color"], first["shape"])[CELLS.index(first["cell"])],
            ]
        elif m["kind"] == "count":
            prompts = [count_prompts(first["color"], first["shape"])[m["count"] - 1]]
        else:
            rel = m["relation"]
            candidates = relation_prompts(m["objects"][rel["subject"]], m["objects"][rel["object"]])
            prompts = [candidates[RELATIONS.index(rel["relation"])]]
        images.append(pointing_at(*prompts))
    report = zero_shot_report(torch.stack(images), metas, random_texts)
    kinds = [m["kind"] for m in metas]
    assert report["images"] == report["position_images"] == kinds.count("single") > 0
    assert (
        report["count_images"] == kinds.count("count") > 0 and report["relation_images"] == kinds.count("relation") > 0
    )
    assert all(report[f"{a}_accuracy"] == 1.0 for a in ("color", "shape", "count", "position", "relation", "binding"))
    two_colours = [m for m in metas if m["kind"] == "relation" and m["objects"][0]["color"] != m["objects"][1]["color"]]
    assert report["binding_images"] == len(two_colours) > 0 and report["binding_chance"] == 0.5
    assert 0.25 < report["relation_chance"] < 0.5  # diagonal pairs hold two relations

    noise = torch.randn(len(metas), DIM, generator=torch.Generator().manual_seed(0))
    blind = zero_shot_report(noise, metas, random_texts)
    for a in ("color", "shape", "count", "position", "relation", "binding"):
        assert abs(blind[f"{a}_accuracy"] - blind[f"{a}_chance"]) < 0.15, (a, blind)
