"""The ``shapes`` dataset: determinism, ground truth vs pixels, held-out split, captions, relations."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from scipy import ndimage

from dalle2.data import DatasetError, open_dataset
from dalle2.data import shapes as S
from dalle2.data.shapes import (
    BACKGROUNDS,
    CELL_PHRASES,
    CELLS,
    COLORS,
    HELDOUT_PAIRS,
    KINDS,
    NUMBER_WORDS,
    PLURALS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    ShapesDataset,
    caption_scene,
    check_scene,
    render,
    sample_scene,
    scene_from_spec,
    scene_meta,
)


def _scenes(split: str, n: int, seed: int = 0) -> list[tuple[Scene, str]]:
    ds = ShapesDataset(split=split, seed=seed, length=n)
    return [ds.scene(i) for i in range(n)]


def _geneval(bbox_a, bbox_b) -> set[str]:
    """Independent re-implementation of GenEval's relative_position (numpy, as in its repository)."""
    boxes = np.array([bbox_a, bbox_b], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - 0.1 * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


# ----------------------------------------------------------------------------------------------
# API and vocabulary
# ----------------------------------------------------------------------------------------------


def test_vocabulary():
    assert set(SHAPES) >= {"circle", "square", "triangle", "star", "heart", "cross"}
    assert list(COLORS) == ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white"]
    assert set(BACKGROUNDS) == {"black", "gray", "white"}
    assert SIZES == ("small", "large")
    assert len(CELLS) == 9 and CELLS[0] == "top left" and CELLS[4] == "center" and CELLS[8] == "bottom right"
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}
    assert set(KINDS) == {"single", "relation", "count"}
    assert len(HELDOUT_PAIRS) == 6 and ("blue", "star") in HELDOUT_PAIRS
    # Object colours are well separated from each other and from the gray background.
    rgb = {k: np.array(v, float) for k, v in COLORS.items()}
    names = list(rgb)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.linalg.norm(rgb[a] - rgb[b]) > 60, (a, b)
        assert np.linalg.norm(rgb[a] - np.array(BACKGROUNDS["gray"])) > 100, a
        assert np.linalg.norm(rgb[a] - np.array(BACKGROUNDS["black"])) > 100, a


def test_dataset_attributes_and_lengths():
    assert len(ShapesDataset()) == 50_000
    assert len(ShapesDataset("test")) == 5_000
    assert len(ShapesDataset("heldout")) == 5_000
    ds = open_dataset("shapes", split="test", resolution=16, seed=3, length=7)
    assert isinstance(ds, ShapesDataset)
    assert (ds.name, ds.split, ds.resolution, len(ds)) == ("shapes", "test", 16, 7)
    with pytest.raises(IndexError):
        ds[7]
    assert ds[-1]["caption"] == ds[6]["caption"]


def test_bad_split():
    with pytest.raises(DatasetError, match="train.*test.*heldout"):
        ShapesDataset(split="validation")
    with pytest.raises(DatasetError):
        open_dataset("shapes", split="nope")
    with pytest.raises(DatasetError):
        sample_scene(0, split="nope")


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
def test_render_resolutions(resolution):
    ds = ShapesDataset(resolution=resolution, length=8)
    for i in range(len(ds)):
        item = ds[i]
        image = item["image"]
        assert image.shape == (3, resolution, resolution)
        assert image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert isinstance(item["caption"], str) and item["caption"]
        json.dumps(item["meta"])  # JSON-serialisable
        assert item["meta"]["caption"] == item["caption"]


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------


def test_determinism():
    a, b = ShapesDataset(seed=5, length=20), ShapesDataset(seed=5, length=20)
    for i in (0, 3, 19):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert x["caption"] == y["caption"] and x["meta"] == y["meta"]
    # Only (seed, split, index) matter: reading order does not.
    c = ShapesDataset(seed=5, length=20)
    assert c[19]["caption"] == a[19]["caption"] and torch.equal(c[3]["image"], a[3]["image"])
    other = ShapesDataset(seed=6, length=20)
    assert sum(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(20)) >= 15
    test = ShapesDataset("test", seed=5, length=20)
    assert sum(a[i]["caption"] != test[i]["caption"] for i in range(20)) >= 15
    # Same resolution-independent scene at every resolution.
    assert ShapesDataset(seed=5, resolution=64)[3]["caption"] == a[3]["caption"]


def test_rng_is_deterministic_across_calls():
    s1 = sample_scene(np.random.default_rng([1, 2, 3]))
    s2 = sample_scene(np.random.default_rng([1, 2, 3]))
    assert s1 == s2
    assert np.array_equal(np.asarray(render(s1, 32)), np.asarray(render(s2, 32)))


# ----------------------------------------------------------------------------------------------
# Ground truth matches pixels
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64])
def test_ground_truth_matches_pixels(resolution):
    for split in ("train", "heldout"):
        ds = ShapesDataset(split=split, resolution=resolution, seed=1)
        for i in range(120):
            scene, _ = ds.scene(i)
            image = np.asarray(render(scene, resolution)).astype(np.float64)
            meta = scene_meta(scene, resolution)
            assert meta["count"] == len(meta["objects"]) == len(scene.objects)
            bg = np.array(BACKGROUNDS[meta["background"]], np.float64)
            outside = np.ones((resolution, resolution), bool)
            for o in meta["objects"]:
                x0, y0, x1, y1 = o["bbox"]
                assert 0 < x0 < x1 < resolution and 0 < y0 < y1 < resolution
                assert o["center"] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2], abs=1e-3)
                ix0, iy0, ix1, iy1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
                region = image[iy0:iy1, ix0:ix1].reshape(-1, 3)
                color = np.array(COLORS[o["color"]], np.float64) - bg
                alpha = (region - bg) @ color / (color @ color)
                # Every pixel is a blend of background and object colour, some pixels are the pure
                # object colour, and the object covers a good part of its box.
                assert np.abs(region - bg - alpha[:, None] * color).max() <= 3
                assert alpha.max() >= 0.95, (i, o)
                assert alpha.mean() >= 0.2, (i, o)
                outside[max(iy0 - 1, 0) : iy1 + 1, max(ix0 - 1, 0) : ix1 + 1] = False
            assert np.abs(image - bg).max(axis=-1)[outside].max() == 0, i
            # Objects never touch: connected components separate them.
            mask = np.abs(image - bg).max(axis=-1) > 0
            _, n = ndimage.label(mask, structure=np.ones((3, 3)))
            assert n == meta["count"], (i, meta)


def test_objects_in_own_cells_without_overlap():
    resolution = 32
    for scene, _ in _scenes("train", 600) + _scenes("heldout", 200):
        assert check_scene(scene) == []
        meta = scene_meta(scene, resolution)
        cells = [o["cell"] for o in meta["objects"]]
        assert len(set(cells)) == len(cells)
        boxes = [o["bbox"] for o in meta["objects"]]
        for o in meta["objects"]:  # fully inside its cell with a margin
            row, col = divmod(CELLS.index(o["cell"]), 3)
            cx0, cy0 = col * resolution / 3, row * resolution / 3
            x0, y0, x1, y1 = o["bbox"]
            margin = 0.05 * resolution / 3
            assert cx0 + margin < x0 and x1 < cx0 + resolution / 3 - margin
            assert cy0 + margin < y0 and y1 < cy0 + resolution / 3 - margin
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert gap >= 1.5, (a, b)  # at least 1.5 pixels apart at 32x32


def test_relations_follow_geneval_rule():
    seen = Counter()
    for scene, _ in _scenes("train", 1500):
        if scene.kind != "relation":
            continue
        meta = scene_meta(scene, 64)
        rel = meta["relation"]
        assert rel["subject"] == 0 and rel["object"] == 1
        a, b = meta["objects"][0], meta["objects"][1]
        assert (a["shape"], a["color"]) != (b["shape"], b["color"])
        assert rel["relation"] in _geneval(a["bbox"], b["bbox"])
        assert rel["relation"] in S.geneval_relations(a["bbox"], b["bbox"])
        seen[rel["relation"]] += 1
    assert set(seen) == set(RELATIONS) and min(seen.values()) > 50


def test_kind_and_background_mix():
    scenes = [s for s, _ in _scenes("train", 2000)]
    kinds = Counter(s.kind for s in scenes)
    backgrounds = Counter(s.background for s in scenes)
    assert 0.33 < kinds["single"] / 2000 < 0.47
    assert 0.23 < kinds["relation"] / 2000 < 0.37 and 0.23 < kinds["count"] / 2000 < 0.37
    assert set(backgrounds) == set(BACKGROUNDS) and backgrounds["black"] > backgrounds["gray"]
    counts = Counter(s.count for s in scenes if s.kind == "count")
    assert set(counts) == {1, 2, 3, 4}
    for s in scenes:
        for o in s.objects:
            assert COLORS[o.color] != BACKGROUNDS[s.background]
        if s.kind == "count":
            assert len({(o.shape, o.color, o.size) for o in s.objects}) == 1


def test_kind_mix_from_the_dataset_spec():
    mixed = open_dataset("shapes:relation=0.6,single=0.2,count=0.2")
    kinds = Counter(mixed.scene(i)[0].kind for i in range(2000))
    assert 0.54 < kinds["relation"] / 2000 < 0.66 and 0.15 < kinds["single"] / 2000 < 0.25
    # a kind left out keeps its default weight; weights are relative
    expected = {"single": 0.4 / 1.3, "relation": 0.6 / 1.3, "count": 0.3 / 1.3}
    assert S.parse_kind_mix("relation=0.6") == pytest.approx(expected)
    assert S.parse_kind_mix("single=0, relation=1, count=0") == {"single": 0.0, "relation": 1.0, "count": 0.0}
    only = open_dataset("shapes:single=0,count=0", split="heldout")
    assert {only.scene(i)[0].kind for i in range(50)} == {"relation"}
    # the default mix named explicitly draws exactly the scenes of no mix (same rng draws)
    default = [ShapesDataset().scene(i) for i in range(20)]
    assert [ShapesDataset(kinds="single=0.4").scene(i) for i in range(20)] == default
    assert "kinds=" in repr(mixed) and "kinds=" not in repr(open_dataset("shapes"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("shapes:square=1", "bad shapes kind mix 'square=1'"),
        ("shapes:relation", "bad shapes kind mix 'relation'"),
        ("shapes:relation=many", "bad weight 'many' for relation"),
        ("shapes:relation=-1", "must be >= 0"),
        ("shapes:relation=nan", "must be >= 0"),
        ("shapes:single=0,relation=0,count=0", "every kind weight 0"),
    ],
)
def test_bad_kind_mix(spec, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        open_dataset(spec)


# ----------------------------------------------------------------------------------------------
# Held-out split
# ----------------------------------------------------------------------------------------------


def test_heldout_never_leaks():
    for split in ("train", "test"):
        for scene, _ in _scenes(split, 3000):
            assert not scene.heldout
            assert all((o.color, o.shape) not in HELDOUT_PAIRS for o in scene.objects)
    pairs = Counter()
    kinds = Counter()
    for scene, _ in _scenes("heldout", 1000):
        meta = scene_meta(scene, 32)
        assert meta["heldout"] is True
        held = [(o["color"], o["shape"]) for o in meta["objects"] if (o["color"], o["shape"]) in HELDOUT_PAIRS]
        assert held
        pairs.update(held[:1])
        kinds[scene.kind] += 1
    assert set(pairs) == HELDOUT_PAIRS
    assert set(kinds) == set(KINDS)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(sorted(list(SHAPES) + list(PLURALS.values()), key=len, reverse=True))
_REL_RE = "|".join(sorted((p for ps in RELATION_PHRASES.values() for p in ps), key=len, reverse=True))
_PHRASE_TO_REL = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}
_SINGULAR = {v: k for k, v in PLURALS.items()} | {s: s for s in SHAPES}
_NP = rf"(?:a|an|the) (?:(small|large) )?({_COLOR_RE}) ({'|'.join(SHAPES)})"
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _strip_background(caption: str, background: str) -> str:
    for phrase in (f" on a {background} background", f"a {background} background with "):
        caption = caption.replace(phrase, " ")
    assert "background" not in caption, caption  # the only background mentioned is the true one
    return caption.strip()


def _skeleton(caption: str) -> str:
    text = re.sub(rf"\b({_REL_RE})\b", "<REL>", caption)
    for phrase in sorted(CELL_PHRASES.values(), key=len, reverse=True):
        text = text.replace(phrase, "<POS>")
    text = re.sub(rf"\b({'|'.join(BACKGROUNDS)}) background\b", "<BG> background", text)
    text = re.sub(rf"\b({_COLOR_RE})\b", "<C>", text)
    text = re.sub(rf"\b({_SHAPE_RE})\b", "<S>", text)
    text = re.sub(r"\b(small|large)\b", "<Z>", text)
    text = re.sub(rf"\b(an|a|{'|'.join(NUMBER_WORDS.values())})\b <", "<N> <", text)
    return re.sub(r"\bis\b|\bare\b", "<BE>", text)


def test_captions_are_true():
    skeletons = defaultdict(set)
    for split in ("train", "heldout"):
        for scene, caption in _scenes(split, 1500):
            assert caption == caption.lower() and not caption.endswith(".") and "  " not in caption
            skeletons[scene.kind].add(_skeleton(caption))
            text = _strip_background(caption, scene.background)
            colors = {o.color for o in scene.objects}
            shapes = {o.shape for o in scene.objects}
            assert set(re.findall(rf"\b({_COLOR_RE})\b", text)) <= colors, caption
            found_shapes = {_SINGULAR[w] for w in re.findall(rf"\b({_SHAPE_RE})\b", text)}
            assert found_shapes and found_shapes <= shapes, caption
            assert set(re.findall(r"\b(small|large)\b", text)) <= {o.size for o in scene.objects}, caption
            no_relation = re.sub(rf"\b({_REL_RE})\b", "<REL>", text)
            for phrase in CELL_PHRASES.values():
                if phrase in no_relation:
                    assert scene.kind == "single" and CELL_PHRASES[scene.objects[0].cell] == phrase, caption
            assert not re.search(r"\ba [aeiou]", caption) and not re.search(r"\ban [^aeiou]", caption), caption
            if scene.kind == "count":
                n = scene.count
                numbers = re.findall(rf"\b({'|'.join(NUMBER_WORDS.values())})\b", text)
                if n == 1:
                    assert numbers in ([], ["one"]) and not re.search(rf"\b({'|'.join(PLURALS.values())})\b", text)
                else:
                    assert numbers == [NUMBER_WORDS[n]], caption
                    assert PLURALS[scene.objects[0].shape] in text.split(), caption
            if scene.kind == "relation" and re.search(rf"{_NP} and {_NP}", text):
                m = re.search(rf"{_NP} and {_NP}", text)
                found = {(m.group(2), m.group(3)), (m.group(5), m.group(6))}
                assert found == {o.pair for o in scene.objects}, caption
            elif scene.kind == "relation":
                m = re.search(rf"{_NP} (?:is )?({_REL_RE}) {_NP}", text)
                assert m, caption
                size1, color1, shape1, phrase, size2, color2, shape2 = m.groups()
                a, b = scene.objects
                rel = _PHRASE_TO_REL[phrase]
                if (color1, shape1) == (a.color, a.shape):
                    assert (color2, shape2, rel) == (b.color, b.shape, scene.relation), caption
                    assert size1 in (None, a.size) and size2 in (None, b.size), caption
                else:
                    assert (color1, shape1, color2, shape2) == (b.color, b.shape, a.color, a.shape), caption
                    assert rel == _INVERSE[scene.relation], caption
                    assert size1 in (None, b.size) and size2 in (None, a.size), caption
    for kind in KINDS:
        assert len(skeletons[kind]) >= 5, (kind, skeletons[kind])


def test_caption_examples():
    red_circle = Obj("circle", "red", "small", "top left")
    scene = Scene("single", "black", [red_circle])
    captions = {caption_scene(scene, np.random.default_rng(i)) for i in range(200)}
    assert "a red circle" in captions
    assert "a small red circle in the top left corner" in captions
    assert "a red circle on a black background" in captions
    crosses = Scene("count", "gray", [Obj("cross", "orange", "large", c) for c in ("top", "left", "center")])
    captions = {caption_scene(crosses, np.random.default_rng(i)) for i in range(200)}
    assert "three orange crosses" in captions and "three large orange crosses" in captions
    one = Scene("count", "gray", [Obj("cross", "orange", "large", "top")])
    assert "an orange cross" in {caption_scene(one, np.random.default_rng(i)) for i in range(200)}
    rel = Scene(
        "relation",
        "black",
        [Obj("square", "green", "large", "left"), Obj("heart", "yellow", "large", "right")],
        "left of",
    )
    captions = {caption_scene(rel, np.random.default_rng(i)) for i in range(300)}
    assert "a green square to the left of a yellow heart" in captions
    assert "a yellow heart to the right of a green square" in captions


# ----------------------------------------------------------------------------------------------
# Structured specs (used by the evaluator)
# ----------------------------------------------------------------------------------------------


def test_scene_from_spec():
    rng = np.random.default_rng(0)
    s = scene_from_spec("single", rng, objects=[{"shape": "star", "color": "blue", "cell": "top right"}])
    assert (s.objects[0].shape, s.objects[0].color, s.objects[0].cell) == ("star", "blue", "top right")
    s = scene_from_spec("single", rng, objects=[{"color": "white"}])
    assert s.background != "white"
    s = scene_from_spec("count", rng, objects=[{"shape": "heart"}], count=3, background="gray")
    assert s.count == 3 and {o.shape for o in s.objects} == {"heart"} and s.background == "gray"
    s = scene_from_spec(
        "relation", rng, objects=[{"shape": "circle", "color": "red"}, {"shape": "square"}], relation="above"
    )
    assert s.relation == "above" and s.objects[0].pair == ("red", "circle") and s.objects[1].shape == "square"
    assert check_scene(s) == []
    s = scene_from_spec("relation", rng, objects=[{"cell": "left"}, {"cell": "right"}])
    assert s.relation == "left of"


def test_scene_from_spec_filling_and_errors():
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = scene_from_spec("relation", rng, avoid_heldout=True)
        assert check_scene(s) == [] and not s.heldout
        s = scene_from_spec("count", rng, objects=[{"color": "purple"}], avoid_heldout=True)
        assert s.objects[0].shape != "circle"
    # Fill-in never copies the fully specified object of a relation.
    for i in range(100):
        s = scene_from_spec("relation", i, objects=[{}, {"shape": "star", "color": "blue"}], background="black")
        assert s.objects[0].pair != ("blue", "star")
    with pytest.raises(ValueError):
        scene_from_spec("relation", rng, objects=[{"shape": "star", "color": "red"}] * 2)
    with pytest.raises(ValueError):
        scene_from_spec("relation", rng, objects=[{"cell": "top"}, {"cell": "bottom"}], relation="left of")
    with pytest.raises(ValueError):
        scene_from_spec("single", rng, objects=[{"shape": "hexagon"}])
    with pytest.raises(ValueError):
        scene_from_spec("count", rng, count=5)
    with pytest.raises(ValueError):
        scene_from_spec("single", rng, objects=[{"color": "white"}], background="white")
    for bad in ({"shape": "hexagon"}, {"color": "black"}, {"size": "huge"}, {"cell": "middle"}):
        for kind in KINDS:
            with pytest.raises(ValueError):
                scene_from_spec(kind, rng, objects=[bad])
    with pytest.raises(ValueError):
        scene_from_spec("relation", rng, relation="near")
    with pytest.raises(ValueError):
        Obj("circle", "red", "huge", "top")


def test_swap_shape_words_changes_every_shape_and_nothing_else():
    import re

    from dalle2.data.shapes import PLURALS, SHAPES, ShapesDataset, swap_shape_words

    words = set(SHAPES) | set(PLURALS.values())
    data = ShapesDataset("train", length=300)
    for i in range(300):
        caption = data[i]["caption"]
        (negative,) = ShapesDataset.hard_negatives(caption)  # the default kind: shape only
        assert negative == swap_shape_words(caption)  # deterministic (resume-exact)
        a, b = caption.split(), negative.split()
        assert len(a) == len(b)
        changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        assert changed, caption  # every caption names a shape
        for x, y in changed:
            assert x in words and y in words
            assert (x in PLURALS.values()) == (y in PLURALS.values())  # plurals stay plural
        # the same shape word always maps to the same other shape (a derangement)
        mapping = dict(changed)
        assert all(re.sub(r"s$|es$", "", k) != re.sub(r"s$|es$", "", v) for k, v in mapping.items())
    assert swap_shape_words("a red crosses-free sky", seed=1) == "a red crosses-free sky".replace(
        "crosses", swap_shape_words("crosses", seed=1)
    )


def test_relation_and_binding_negatives_are_false_of_the_scene():
    """Issue 20: an inverted relation never holds between the captioned boxes (GenEval rule); exchanged
    colours keep every word but bind two different colours to the other object; backgrounds stay."""
    from dalle2.data.base import DatasetError
    from dalle2.data.shapes import (
        COLORS,
        INVERSE_RELATION,
        RELATION_PHRASES,
        ShapesDataset,
        exchange_colours,
        hard_negatives,
        invert_relation,
        relation_holds,
    )

    phrases = {p: rel for rel, ps in RELATION_PHRASES.items() for p in ps}
    data = ShapesDataset("train", length=400)
    kinds_seen = {"relation": 0, "binding": 0}
    for i in range(400):
        scene, caption = data.scene(i)
        inverted, exchanged = invert_relation(caption), exchange_colours(caption)
        if scene.kind != "relation":
            assert inverted is None  # "on the left", "in the top left corner" are cells, not relations
        if inverted is not None:
            kinds_seen["relation"] += 1
            (before,) = [p for p in sorted(phrases, key=len, reverse=True) if f" {p} " in f" {caption} "][:1]
            (after,) = [p for p in sorted(phrases, key=len, reverse=True) if f" {p} " in f" {inverted} "][:1]
            assert phrases[after] == INVERSE_RELATION[phrases[before]]
            assert caption.replace(before, "") == inverted.replace(after, "")  # only the phrase changed
            a, b = scene.objects
            rel = scene.relation
            # the caption's relation holds of the scene, its inverse never does
            assert relation_holds(a, b, rel) and not relation_holds(a, b, INVERSE_RELATION[rel])
        if exchanged is not None:
            kinds_seen["binding"] += 1
            assert scene.kind == "relation" and scene.objects[0].color != scene.objects[1].color
            assert sorted(exchanged.split()) == sorted(caption.split()) and exchanged != caption
            words = [w for w in caption.split() if w in COLORS]
            assert [w for w in exchanged.split() if w in COLORS][:2] == words[:2][::-1]
            if "background" in caption:
                assert (
                    caption.split()[caption.split().index("background") - 1]
                    == exchanged.split()[exchanged.split().index("background") - 1]
                )
        twins = hard_negatives(caption, ("shape", "relation", "binding"))
        assert twins == [t for t in (hard_negatives(caption)[0], inverted, exchanged) if t is not None]
    assert kinds_seen["relation"] > 50 and kinds_seen["binding"] > 50
    assert exchange_colours("a red circle on a white background") is None  # one object colour
    assert exchange_colours("a red circle above a red square") is None  # nothing to exchange
    assert exchange_colours("a white star left of a red heart on a white background") == (
        "a red star left of a white heart on a white background"
    )
    assert invert_relation("a red circle beneath a blue star") == "a red circle above a blue star"
    with pytest.raises(DatasetError, match="unknown hard-negative kind 'colour'"):
        hard_negatives("a red circle", ("shape", "colour"))
