"""``shapes``: procedurally rendered captioned scenes with exact ground truth.

A compositional text-to-image benchmark in the spirit of GenEval, small enough to train on a CPU.
Every image is a 3x3 grid of cells on a plain background; each object sits inside its own cell with a
margin, so objects never touch and connected components separate them.

Vocabulary
----------
* ``SHAPES``: circle, square, triangle, star, heart, cross
* ``COLORS``: 9 object colours with well separated RGB values (``dict`` name -> RGB)
* ``BACKGROUNDS``: black, gray, white (an object never has its background's colour)
* ``SIZES``: small (about half a cell), large (about three quarters of a cell)
* ``CELLS``: the 9 grid cells in row-major order ("top left" ... "bottom right")
* ``RELATIONS``: "left of", "right of", "above", "below" (checked with the GenEval rule, see
  :func:`geneval_relations`)
* ``KINDS``: ``single`` (one object), ``relation`` (two objects and a spatial relation between
  ``objects[0]`` (subject) and ``objects[1]`` (object)), ``count`` (1..4 identical objects)
* ``HELDOUT_PAIRS``: (colour, shape) pairs that never occur in the ``train``/``test`` splits and
  always occur (at least once per image) in the ``heldout`` split.

Main entry points
-----------------
* :func:`sample_scene` draws a random scene of the training distribution (or of a split);
* :func:`scene_from_spec` builds a scene satisfying a partial, structured specification (for
  evaluation prompts), filling in whatever is unspecified from an rng;
* :func:`caption_scene` writes a true caption from a small grammar with paraphrases;
* :func:`render` draws a scene at any resolution (supersampled, antialiased);
* :func:`scene_meta` gives JSON-serialisable ground truth (pixel bounding boxes included);
* :class:`ShapesDataset` is the map-style dataset behind ``open_dataset("shapes", ...)``; sample
  ``index`` depends only on ``(seed, split, index)``.

Coordinates: geometry lives in *unit* coordinates (the image is ``[0, 1] x [0, 1]``, x right, y
down), so the same scene renders identically at every resolution; pixel coordinates are unit
coordinates times the resolution.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from dalle2.data.base import DatasetError, Sample, pil_to_tensor, sample_index

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_PROBS",
    "CELLS",
    "CELL_PHRASES",
    "COLORS",
    "HELDOUT_PAIRS",
    "KINDS",
    "KIND_PROBS",
    "MAX_COUNT",
    "MAX_JITTER",
    "NUMBER_WORDS",
    "PLURALS",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SIZES",
    "SIZE_FRACTION",
    "SPLITS",
    "Obj",
    "Scene",
    "ShapesDataset",
    "caption_scene",
    "cell_center",
    "check_scene",
    "geneval_relations",
    "object_bbox",
    "parse_kind_mix",
    "relation_holds",
    "render",
    "sample_scene",
    "scene_from_spec",
    "scene_meta",
    "NEGATIVE_KINDS",
    "exchange_colours",
    "hard_negatives",
    "invert_relation",
    "swap_shape_words",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}

_SHAPE_WORD = re.compile(r"\b(" + "|".join(sorted([*SHAPES, *PLURALS.values()], key=len, reverse=True)) + r")\b")


def swap_shape_words(caption: str, seed: int | None = None) -> str:
    """``caption`` with every shape word replaced by a different shape (a random derangement of the six,
    plurals kept plural): a hard-negative caption that differs from the true one in shape only. The
    same ``seed`` gives the same swap; ``None`` seeds from the caption itself (deterministic)."""
    if seed is None:
        seed = zlib.crc32(caption.encode())
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(SHAPES))
        if all(order[i] != i for i in range(len(SHAPES))):
            break
    swap = {s: SHAPES[j] for s, j in zip(SHAPES, order, strict=True)}
    singular = {p: s for s, p in PLURALS.items()}

    def replace(match: re.Match) -> str:
        word = match.group(0)
        if word in singular:
            return PLURALS[swap[singular[word]]]
        return swap[word]

    return _SHAPE_WORD.sub(replace, caption)


COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 40),
    "green": (30, 170, 50),
    "cyan": (0, 210, 230),
    "blue": (40, 80, 240),
    "purple": (140, 40, 200),
    "pink": (255, 120, 200),
    "white": (255, 255, 255),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (96, 96, 96),
    "white": (255, 255, 255),
}
#: Background mix of the training distribution (mostly black, but all three appear).
BACKGROUND_PROBS: dict[str, float] = {"black": 0.6, "gray": 0.2, "white": 0.2}

SIZES: tuple[str, ...] = ("small", "large")
#: Object extent (the larger side of its bounding square) as a fraction of the cell side.
SIZE_FRACTION: dict[str, float] = {"small": 0.5, "large": 0.75}
#: Largest jitter of an object's centre, per axis, in unit (image-width) coordinates.
MAX_JITTER: dict[str, float] = {"small": 0.03, "large": 0.01}

CELLS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
#: How captions place an object in a cell ("a red circle in the top left corner").
CELL_PHRASES: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: Caption phrasings of each relation (all true under the GenEval rule).
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

#: The kinds of hard-negative caption :func:`hard_negatives` writes, each false of the image in one way:
#: ``shape`` (every shape word swapped), ``relation`` (the relation inverted) and ``binding`` (two objects'
#: colours exchanged: the words stay, what they attach to changes).
NEGATIVE_KINDS: tuple[str, ...] = ("shape", "relation", "binding")

#: each relation phrase -> (its relation, its index among that relation's phrasings)
_PHRASE_OF = {p: (rel, i) for rel, ps in RELATION_PHRASES.items() for i, p in enumerate(ps)}
_RELATION_WORD = re.compile(r"\b(" + "|".join(sorted(_PHRASE_OF, key=len, reverse=True)) + r")\b")


def invert_relation(caption: str) -> str | None:
    """``caption`` with its relation phrase replaced by the inverse relation's ("to the left of" -> "to the
    right of", "beneath" -> "above"): false of the scene under the GenEval rule, since no pair of boxes is
    both left and right of each other. None when the caption names no relation."""

    def replace(match: re.Match) -> str:
        rel, i = _PHRASE_OF[match.group(0)]
        inverse = RELATION_PHRASES[INVERSE_RELATION[rel]]
        return inverse[i] if i < len(inverse) else inverse[0]

    swapped = _RELATION_WORD.sub(replace, caption)
    return None if swapped == caption else swapped


_OBJECT_COLOUR = re.compile(r"\b(" + "|".join(COLORS) + r")\b(?! background)")


def exchange_colours(caption: str) -> str | None:
    """``caption`` with its two objects' colour words exchanged ("a red circle left of a blue square" ->
    "a blue circle left of a red square"; the background's colour is left alone): every word still
    occurs, bound to the wrong object. None unless the caption names exactly two different object colours."""
    words = [m.group(0) for m in _OBJECT_COLOUR.finditer(caption)]
    if len(words) != 2 or words[0] == words[1]:
        return None
    swap = {words[0]: words[1], words[1]: words[0]}
    return _OBJECT_COLOUR.sub(lambda m: swap[m.group(0)], caption)


def hard_negatives(caption: str, kinds: Sequence[str] = ("shape",)) -> list[str]:
    """The wrong twins of ``caption`` for contrastive training (NegCLIP, Yuksekgonul et al. 2023), one per
    kind in ``kinds`` (:data:`NEGATIVE_KINDS`) that applies to it: ``shape`` always
    (:func:`swap_shape_words`), ``relation`` to relation captions (:func:`invert_relation`), ``binding`` to
    captions of two differently coloured objects (:func:`exchange_colours`)."""
    unknown = [k for k in kinds if k not in NEGATIVE_KINDS]
    if unknown:
        raise DatasetError(f"unknown hard-negative kind {unknown[0]!r}; choose from {', '.join(NEGATIVE_KINDS)}")
    writers = {"shape": swap_shape_words, "relation": invert_relation, "binding": exchange_colours}
    twins = (writers[k](caption) for k in dict.fromkeys(kinds))
    return [t for t in twins if t is not None and t != caption]


KINDS: tuple[str, ...] = ("single", "relation", "count")
#: Kind mix of the training distribution.
KIND_PROBS: dict[str, float] = {"single": 0.4, "relation": 0.3, "count": 0.3}
MAX_COUNT = 4
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("blue", "star"),
        ("red", "triangle"),
        ("green", "heart"),
        ("yellow", "cross"),
        ("purple", "circle"),
        ("orange", "square"),
    }
)
_HELDOUT_LIST: tuple[tuple[str, str], ...] = tuple(sorted(HELDOUT_PAIRS))  # sets have no stable order

#: Split name -> split id (part of the per-sample rng seed).
SPLITS: dict[str, int] = {"train": 0, "test": 1, "heldout": 2}
_DEFAULT_LENGTH: dict[str, int] = {"train": 50_000, "test": 5_000, "heldout": 5_000}

_CELL = 1.0 / 3.0  # cell side in unit coordinates
_GENEVAL_THRESHOLD = 0.1

# ----------------------------------------------------------------------------------------------
# Shape templates: polygons in [-1, 1]^2, centred on their bounding box
# ----------------------------------------------------------------------------------------------


def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its bounding box and scale its larger half-extent to 1."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) / ((hi - lo).max() / 2)


def _templates() -> dict[str, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.85
    triangle = _normalise(np.array([[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]]))
    k = np.arange(10)
    radius = np.where(k % 2 == 0, 1.0, 0.45)
    angle = -np.pi / 2 + k * np.pi / 5
    star = _normalise(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
    h = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    heart = _normalise(
        np.stack(
            [
                16 * np.sin(h) ** 3,
                -(13 * np.cos(h) - 5 * np.cos(2 * h) - 2 * np.cos(3 * h) - np.cos(4 * h)),
            ],
            axis=1,
        )
    )
    a = 0.34  # half thickness of the arms
    cross = np.array(
        [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
        dtype=np.float64,
    )
    out = {
        "circle": circle,
        "square": square,
        "triangle": triangle,
        "star": star,
        "heart": heart,
        "cross": cross,
    }
    return {name: pts.astype(np.float64) for name, pts in out.items()}


_TEMPLATES: dict[str, np.ndarray] = _templates()
#: Half extents (x, y) of each template's bounding box, in template units.
_HALF_EXTENT: dict[str, tuple[float, float]] = {
    name: (float(np.abs(p[:, 0]).max()), float(np.abs(p[:, 1]).max())) for name, p in _TEMPLATES.items()
}

# ----------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One object: names from the vocabulary, plus a small centre offset ``jitter`` (unit coords).

    ``abs(jitter[i])`` must not exceed ``MAX_JITTER[size]`` so that the object stays inside its cell
    with a margin.
    """

    shape: str
    color: str
    size: str
    cell: str
    jitter: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for value, vocab, what in (
            (self.shape, SHAPES, "shape"),
            (self.color, COLORS, "color"),
            (self.size, SIZES, "size"),
            (self.cell, CELLS, "cell"),
        ):
            if value not in vocab:
                raise DatasetError(f"unknown {what} {value!r}; choose one of: {', '.join(vocab)}")
        object.__setattr__(self, "jitter", (float(self.jitter[0]), float(self.jitter[1])))

    @property
    def pair(self) -> tuple[str, str]:
        """The (colour, shape) pair, as in ``HELDOUT_PAIRS``."""
        return (self.color, self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell}


@dataclass(frozen=True)
class Scene:
    """A scene: its kind, background colour name, objects and (for ``relation``) the relation.

    For ``relation`` scenes, ``relation`` reads "objects[0] <relation> objects[1]", e.g. the subject
    ``objects[0]`` is "left of" the object ``objects[1]``.
    """

    kind: str
    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DatasetError(f"unknown scene kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.background not in BACKGROUNDS:
            raise DatasetError(f"unknown background {self.background!r}; choose one of: {', '.join(BACKGROUNDS)}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise DatasetError(f"unknown relation {self.relation!r}; choose one of: {', '.join(RELATIONS)}")
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def heldout(self) -> bool:
        """Whether any object has a held-out (colour, shape) pair."""
        return any(o.pair in HELDOUT_PAIRS for o in self.objects)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def cell_center(cell: str) -> tuple[float, float]:
    """Centre of a grid cell in unit coordinates (x right, y down)."""
    i = CELLS.index(cell)
    row, col = divmod(i, 3)
    return ((col + 0.5) * _CELL, (row + 0.5) * _CELL)


def _object_geometry(obj: Obj) -> tuple[float, float, float]:
    """(centre x, centre y, scale) in unit coordinates; scale maps template units to unit coords."""
    cx, cy = cell_center(obj.cell)
    return cx + obj.jitter[0], cy + obj.jitter[1], SIZE_FRACTION[obj.size] * _CELL / 2


def object_bbox(obj: Obj, resolution: float = 1.0) -> tuple[float, float, float, float]:
    """Tight bounding box ``(x0, y0, x1, y1)`` of an object, in pixels at ``resolution``
    (unit coordinates for the default 1.0)."""
    cx, cy, s = _object_geometry(obj)
    hx, hy = _HALF_EXTENT[obj.shape]
    return (
        (cx - hx * s) * resolution,
        (cy - hy * s) * resolution,
        (cx + hx * s) * resolution,
        (cy + hy * s) * resolution,
    )


def geneval_relations(bbox_a: Sequence[float], bbox_b: Sequence[float]) -> set[str]:
    """Relations of box A relative to box B by GenEval's rule (boxes are ``x0, y0, x1, y1``, y down).

    With centres a, b, per-axis sizes w_a, w_b and d = a - b, the revised offset per axis is
    ``max(|d| - 0.1 (w_a + w_b), 0) * sign(d)``, divided by ``||d||``; A is "left of" B if its x
    component is < -0.5, "right of" if > 0.5, "above" if the y component is < -0.5, "below" if > 0.5.
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in bbox_a)
    bx0, by0, bx1, by1 = (float(v) for v in bbox_b)
    ox, oy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2  # centre of A - centre of B
    rx = math.copysign(max(abs(ox) - _GENEVAL_THRESHOLD * (abs(ax1 - ax0) + abs(bx1 - bx0)), 0.0), ox)
    ry = math.copysign(max(abs(oy) - _GENEVAL_THRESHOLD * (abs(ay1 - ay0) + abs(by1 - by0)), 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = rx / norm, ry / norm
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


def relation_holds(subject: Obj, obj: Obj, relation: str) -> bool:
    """Whether ``subject <relation> obj`` holds under the GenEval rule."""
    return relation in geneval_relations(object_bbox(subject), object_bbox(obj))


@functools.cache
def _cell_pairs(relation: str, shape0: str, size0: str, shape1: str, size1: str) -> tuple[tuple[str, str], ...]:
    """Ordered cell pairs (a, b) for which a centred subject in a is ``relation`` a centred object in b."""
    return tuple(
        (a, b)
        for a in CELLS
        for b in CELLS
        if a != b and relation_holds(Obj(shape0, "red", size0, a), Obj(shape1, "red", size1, b), relation)
    )


def check_scene(scene: Scene) -> list[str]:
    """Everything wrong with a scene (an empty list for a valid one)."""
    problems: list[str] = []
    objs = scene.objects
    n = len(objs)
    if scene.kind == "single" and n != 1:
        problems.append(f"a single scene has one object, not {n}")
    if scene.kind == "count":
        if not 1 <= n <= MAX_COUNT:
            problems.append(f"a count scene has 1..{MAX_COUNT} objects, not {n}")
        if len({(o.shape, o.color, o.size) for o in objs}) > 1:
            problems.append("the objects of a count scene must be identical (shape, colour, size)")
    if scene.kind == "relation":
        if n != 2:
            problems.append(f"a relation scene has two objects, not {n}")
        elif objs[0].pair == objs[1].pair:
            problems.append("the two objects of a relation scene must differ in shape or colour")
        if scene.relation is None:
            problems.append("a relation scene needs a relation")
        elif n == 2 and not relation_holds(objs[0], objs[1], scene.relation):
            problems.append(f"{objs[0].cell} is not {scene.relation} {objs[1].cell} (GenEval rule)")
    elif scene.relation is not None:
        problems.append(f"only relation scenes have a relation, not {scene.kind}")
    if len({o.cell for o in objs}) != n:
        problems.append("objects must occupy distinct cells")
    bg = BACKGROUNDS[scene.background]
    for o in objs:
        if COLORS[o.color] == bg:
            problems.append(f"a {o.color} object on a {scene.background} background is invisible")
        if max(abs(o.jitter[0]), abs(o.jitter[1])) > MAX_JITTER[o.size] + 1e-9:
            problems.append(f"jitter {o.jitter} exceeds {MAX_JITTER[o.size]} for a {o.size} object")
    return problems


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

_ObjSpec = Mapping[str, Any]


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, options: Sequence[Any], weights: Sequence[float]) -> Any:
    """One of ``options`` drawn with probabilities proportional to ``weights`` (one rng draw)."""
    u = rng.random() * sum(weights)
    for option, weight in zip(options, weights, strict=True):
        u -= weight
        if u < 0:
            return option
    return options[-1]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown shapes split {split!r}; choose one of: {', '.join(SPLITS)}")


def _fill_pair(
    rng: np.random.Generator,
    shape: str | None,
    color: str | None,
    background: str,
    avoid_heldout: bool,
    exclude: Collection[tuple[str, str]] = (),
) -> tuple[str, str]:
    """Fill in a missing shape and/or colour: never the background colour, never an excluded
    (colour, shape) pair, and (if ``avoid_heldout``) never a held-out pair unless given in full."""
    colors = [c for c in COLORS if COLORS[c] != BACKGROUNDS[background]]
    if shape is not None and color is not None:
        if (color, shape) in exclude:
            raise DatasetError(f"the objects must differ, got two {color} {shape}s")
        return shape, color
    for _ in range(1000):
        s = shape if shape is not None else _pick(rng, SHAPES)
        c = color if color is not None else _pick(rng, colors)
        if (c, s) in exclude or (avoid_heldout and (c, s) in HELDOUT_PAIRS):
            continue
        return s, c
    raise DatasetError(f"cannot find a colour/shape for shape={shape!r}, color={color!r} on {background}")


def _sample_jitter(rng: np.random.Generator, size: str) -> tuple[float, float]:
    j = MAX_JITTER[size]
    x, y = rng.uniform(-j, j, size=2)
    return (float(x), float(y))


def _merge_count_specs(objects: Sequence[_ObjSpec], count: int) -> tuple[dict[str, Any], list[str | None]]:
    shared: dict[str, Any] = {}
    for spec in objects:
        for key in ("shape", "color", "size"):
            value = spec.get(key)
            if value is None:
                continue
            if shared.get(key, value) != value:
                raise DatasetError(f"the objects of a count scene are identical; got {key}s {shared[key]!r}, {value!r}")
            shared[key] = value
    cells = [spec.get("cell") for spec in objects] if len(objects) == count else [None] * count
    if len(objects) not in (0, 1, count):
        raise DatasetError(f"a count scene of {count} takes 1 or {count} object specs, not {len(objects)}")
    if len(objects) == 1 and count > 1 and objects[0].get("cell") is not None:
        raise DatasetError("give one object spec per object to place the objects of a count scene")
    return shared, cells


def _fill_cells(rng: np.random.Generator, given: list[str | None]) -> list[str]:
    used = [c for c in given if c is not None]
    if len(set(used)) != len(used):
        raise DatasetError(f"objects must occupy distinct cells, got {used}")
    free = [c for c in CELLS if c not in used]
    order = rng.permutation(len(free))
    out, k = [], 0
    for c in given:
        if c is None:
            c = free[int(order[k])]
            k += 1
        out.append(c)
    return out


def scene_from_spec(
    kind: str,
    rng: np.random.Generator | int | None = None,
    *,
    objects: Sequence[_ObjSpec] | None = None,
    background: str | None = None,
    count: int | None = None,
    relation: str | None = None,
    avoid_heldout: bool = False,
    jitter: bool = True,
) -> Scene:
    """Build a valid scene of ``kind`` satisfying a partial spec; fill in the rest from ``rng``.

    ``objects`` holds partial object specs (dicts with any of ``shape``, ``color``, ``size``,
    ``cell``): at most one for ``single``; at most two for ``relation`` (subject first, then
    object); one shared spec or one per object for ``count``. Unspecified attributes are drawn
    uniformly (background: ``BACKGROUND_PROBS``; count: 1..4; relation: uniform), subject to the
    scene rules: an object never has the background's colour, cells are distinct, the two objects
    of a relation differ in shape or colour and their cells satisfy the relation under the GenEval
    rule. With ``avoid_heldout`` filled-in colour/shape pairs are never held out (pairs given in
    full are kept). ``jitter=False`` centres every object in its cell.

    Raises ``ValueError`` when the spec cannot be satisfied, e.g.::

        scene_from_spec("relation", 0, objects=[{"shape": "star", "color": "red"}, {"cell": "top"}],
                        relation="above")  # a red star above something in the top cell: impossible
    """
    rng = _as_rng(rng)
    if kind not in KINDS:
        raise DatasetError(f"unknown scene kind {kind!r}; choose one of: {', '.join(KINDS)}")
    objects = [dict(o) for o in (objects or [])]
    for spec in objects:
        unknown = set(spec) - {"shape", "color", "size", "cell"}
        if unknown:
            raise DatasetError(f"unknown object attributes {sorted(unknown)}; use shape, color, size, cell")
        for key, vocab in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("cell", CELLS)):
            if spec.get(key) is not None and spec[key] not in vocab:
                raise DatasetError(f"unknown {key} {spec[key]!r}; choose one of: {', '.join(vocab)}")
    if relation is not None and relation not in RELATIONS:
        raise DatasetError(f"unknown relation {relation!r}; choose one of: {', '.join(RELATIONS)}")

    # Background: compatible with every colour given.
    given_colors = {o["color"] for o in objects if o.get("color") is not None}
    if background is None:
        names = [b for b in BACKGROUNDS if all(COLORS.get(c) != BACKGROUNDS[b] for c in given_colors)]
        background = _weighted(rng, names, [BACKGROUND_PROBS[b] for b in names])
    elif background not in BACKGROUNDS:
        raise DatasetError(f"unknown background {background!r}; choose one of: {', '.join(BACKGROUNDS)}")
    for color in given_colors:
        if COLORS.get(color) == BACKGROUNDS[background]:
            raise DatasetError(f"a {color} object would be invisible on a {background} background")

    def make(shape: str, color: str, size: str, cell: str) -> Obj:
        return Obj(shape, color, size, cell, _sample_jitter(rng, size) if jitter else (0.0, 0.0))

    if kind == "single":
        if len(objects) > 1:
            raise DatasetError(f"a single scene has one object, got {len(objects)} specs")
        if count not in (None, 1) or relation is not None:
            raise DatasetError("a single scene has count 1 and no relation")
        spec = objects[0] if objects else {}
        shape, color = _fill_pair(rng, spec.get("shape"), spec.get("color"), background, avoid_heldout)
        size = spec.get("size") or _pick(rng, SIZES)
        cell = spec.get("cell") or _pick(rng, CELLS)
        scene = Scene("single", background, (make(shape, color, size, cell),))

    elif kind == "count":
        if relation is not None:
            raise DatasetError("a count scene has no relation")
        if count is None:
            count = len(objects) if len(objects) > 1 else int(rng.integers(1, MAX_COUNT + 1))
        if not 1 <= count <= MAX_COUNT:
            raise DatasetError(f"count must be 1..{MAX_COUNT}, got {count}")
        shared, cells = _merge_count_specs(objects, count)
        shape, color = _fill_pair(rng, shared.get("shape"), shared.get("color"), background, avoid_heldout)
        size = shared.get("size") or _pick(rng, SIZES)
        cells = _fill_cells(rng, cells)
        scene = Scene("count", background, tuple(make(shape, color, size, c) for c in cells))

    else:  # relation
        if len(objects) > 2:
            raise DatasetError(f"a relation scene has two objects, got {len(objects)} specs")
        if count not in (None, 2):
            raise DatasetError("a relation scene has count 2")
        specs = objects + [{} for _ in range(2 - len(objects))]
        # Fill a fully given object first so that the other one can be made to differ from it.
        order = (1, 0) if specs[1].get("shape") and specs[1].get("color") else (0, 1)
        pairs: dict[int, tuple[str, str]] = {}
        for i in order:
            exclude = [(c, s) for s, c in pairs.values()]
            pairs[i] = _fill_pair(rng, specs[i].get("shape"), specs[i].get("color"), background, avoid_heldout, exclude)
        (s0, c0), (s1, c1) = pairs[0], pairs[1]
        sizes = [spec.get("size") or _pick(rng, SIZES) for spec in specs]
        relations = [relation] if relation is not None else list(RELATIONS)
        # Every (relation, cell pair) consistent with the spec that holds with centred objects.
        cell0, cell1 = specs[0].get("cell"), specs[1].get("cell")
        options = [
            (rel, a, b)
            for rel in relations
            for a, b in _cell_pairs(rel, s0, sizes[0], s1, sizes[1])
            if cell0 in (None, a) and cell1 in (None, b)
        ]
        if not options:
            raise DatasetError(f"no cells satisfy the relation spec {relation!r} with objects {specs}")
        if relation is None:  # uniform over relations first, then over cell pairs
            rel = _pick(rng, sorted({o[0] for o in options}, key=RELATIONS.index))
            options = [o for o in options if o[0] == rel]
        rel, a, b = _pick(rng, options)
        o0, o1 = Obj(s0, c0, sizes[0], a), Obj(s1, c1, sizes[1], b)
        if jitter:
            for _ in range(20):  # jitter is small: it almost never breaks the relation
                j0, j1 = make(s0, c0, sizes[0], a), make(s1, c1, sizes[1], b)
                if relation_holds(j0, j1, rel):
                    o0, o1 = j0, j1
                    break
        scene = Scene("relation", background, (o0, o1), rel)

    problems = check_scene(scene)
    if problems:  # pragma: no cover - the construction above guarantees validity
        raise AssertionError(f"invalid scene {scene}: {'; '.join(problems)}")
    return scene


def parse_kind_mix(text: str) -> dict[str, float]:
    """A kind mix from the ``shapes`` dataset spec's argument, e.g. ``"relation=0.6,single=0.2,count=0.2"``
    (``--data shapes:relation=0.6,...``): relative weights, normalised; a kind not named keeps its
    :data:`KIND_PROBS` weight. Two-object (relation) scenes are the only ones with two colours, so a
    decoder learns colour binding from them (docs/results.md, "Two colours in one image")."""
    weights = dict(KIND_PROBS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, eq, value = item.partition("=")
        kind = kind.strip()
        if kind not in KINDS or not eq:
            raise DatasetError(
                f"bad shapes kind mix {item!r}: write KIND=WEIGHT with KIND one of {', '.join(KINDS)} "
                "(e.g. shapes:relation=0.6,single=0.2,count=0.2)"
            )
        try:
            weight = float(value)
        except ValueError:
            raise DatasetError(f"bad weight {value.strip()!r} for {kind} in the shapes kind mix") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise DatasetError(f"the weight of {kind} in the shapes kind mix must be >= 0, got {value.strip()}")
        weights[kind] = weight
    total = sum(weights.values())
    if total <= 0:
        raise DatasetError("the shapes kind mix gives every kind weight 0")
    return {k: weights[k] / total for k in KINDS}


def sample_scene(
    rng: np.random.Generator | int | None,
    split: str = "train",
    kind: str | None = None,
    kind_probs: dict[str, float] | None = None,
) -> Scene:
    """Draw a scene of the split's distribution (kinds by ``kind_probs``, default :data:`KIND_PROBS`,
    unless ``kind`` is given).

    ``train``/``test``: no object has a held-out (colour, shape) pair. ``heldout``: at least one
    object (the only one, the subject or the object of a relation, or all of a count) has one.
    """
    _check_split(split)
    rng = _as_rng(rng)
    if kind is None:
        probs = KIND_PROBS if kind_probs is None else kind_probs
        kind = _weighted(rng, KINDS, [probs[k] for k in KINDS])
    elif kind not in KINDS:
        raise DatasetError(f"unknown scene kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if split != "heldout":
        return scene_from_spec(kind, rng, avoid_heldout=True)
    color, shape = _pick(rng, _HELDOUT_LIST)
    forced = {"shape": shape, "color": color}
    if kind == "relation":
        objects = [forced, {}] if rng.random() < 0.5 else [{}, forced]
    else:
        objects = [forced]
    return scene_from_spec(kind, rng, objects=objects)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _np(obj: Obj, with_size: bool) -> str:
    """Noun phrase without article: "[size] colour shape"."""
    return f"{obj.size} {obj.color} {obj.shape}" if with_size else f"{obj.color} {obj.shape}"


def _caption_single(scene: Scene, rng: np.random.Generator) -> str:
    o = scene.objects[0]
    pos, bg = CELL_PHRASES[o.cell], f"on {_a(scene.background)} background"
    templates = (
        lambda: _a(_np(o, False)),
        lambda: _a(_np(o, True)),
        lambda: f"{_a(_np(o, False))} {pos}",
        lambda: f"{_a(_np(o, True))} {pos}",
        lambda: f"{_a(_np(o, False))} {bg}",
        lambda: f"there is {_a(_np(o, True))} {pos}",
        lambda: f"{_a(_np(o, True))} {pos} {bg}",
        lambda: f"{_a(scene.background)} background with {_a(_np(o, False))} {pos}",
    )
    return _pick(rng, templates)()


def _caption_count(scene: Scene, rng: np.random.Generator) -> str:
    o, n = scene.objects[0], scene.count
    bg = f"on {_a(scene.background)} background"

    def phrase(with_size: bool, number: bool = False) -> str:
        words = _np(o, with_size)
        if n == 1:
            return f"one {words}" if number else _a(words)
        return f"{NUMBER_WORDS[n]} {words.rsplit(' ', 1)[0]} {PLURALS[o.shape]}"

    templates = (
        lambda: phrase(False),
        lambda: phrase(True),
        lambda: f"{phrase(False)} {bg}",
        lambda: f"there {'is' if n == 1 else 'are'} {phrase(False)}",
        lambda: f"{phrase(True)} {bg}",
        lambda: f"exactly {phrase(False, number=True)}",
        lambda: f"a picture of {phrase(True)}",
    )
    return _pick(rng, templates)()


def _caption_relation(scene: Scene, rng: np.random.Generator) -> str:
    a, b = scene.objects
    rel = scene.relation
    assert rel is not None
    bg = f"on {_a(scene.background)} background"
    sized = bool(rng.random() < 0.3)
    fwd = _pick(rng, RELATION_PHRASES[rel])
    inv = _pick(rng, RELATION_PHRASES[INVERSE_RELATION[rel]])
    na, nb = _np(a, sized), _np(b, sized)
    templates = (
        lambda: f"{_a(na)} {fwd} {_a(nb)}",
        lambda: f"{_a(nb)} {inv} {_a(na)}",
        lambda: f"{_a(na)} {fwd} {_a(nb)} {bg}",
        lambda: f"there is {_a(na)} {fwd} {_a(nb)}",
        lambda: f"the {na} is {fwd} the {nb}",
        lambda: f"{_a(nb)} {inv} {_a(na)} {bg}",
        lambda: f"{_a(na)} and {_a(nb)}",
        lambda: f"{_a(nb)} and {_a(na)} {bg}",
    )
    return _pick(rng, templates)()


def caption_scene(scene: Scene, rng: np.random.Generator | int | None = None) -> str:
    """A true caption of ``scene``, one of several paraphrases drawn with ``rng``.

    Lower case, no trailing period. Everything mentioned is true of the image (colour, shape, size,
    count, cell, background, relation); attributes may be omitted. Relation captions come in
    forward ("a red circle left of a blue square") and swapped ("a blue square right of a red
    circle") form.
    """
    rng = _as_rng(rng)
    if scene.kind == "single":
        return _caption_single(scene, rng)
    if scene.kind == "count":
        return _caption_count(scene, rng)
    return _caption_relation(scene, rng)


# ----------------------------------------------------------------------------------------------
# Rendering and ground truth
# ----------------------------------------------------------------------------------------------


def _supersampling(resolution: int) -> int:
    # At least 4x; small images get more (still a tiny canvas) for cleaner edges.
    return max(4, math.ceil(128 / resolution))


def render(scene: Scene, resolution: int, supersample: int | None = None) -> Image.Image:
    """Render ``scene`` as a ``resolution`` x ``resolution`` RGB image.

    Shapes are drawn with PIL at ``supersample`` x the target size (default: 4x, more below 32
    pixels) and box-filtered down, so edges are antialiased and the same scene looks the same at
    every resolution.
    """
    ss = supersample or _supersampling(resolution)
    size = resolution * ss
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, s = _object_geometry(obj)
        pts = (_TEMPLATES[obj.shape] * s + (cx, cy)) * size - 0.5  # PIL: integer coords = pixel centres
        draw.polygon([tuple(p) for p in pts.tolist()], fill=COLORS[obj.color])
    if ss == 1:
        return image
    return image.reduce(ss)  # box filter: each output pixel is the mean of an ss x ss block


def scene_meta(scene: Scene, resolution: int) -> dict[str, Any]:
    """JSON-serialisable ground truth; ``bbox`` (x0, y0, x1, y1) and ``center`` are in pixels at
    ``resolution``. ``relation`` reads "objects[subject] <relation> objects[object]"."""
    objects = []
    for o in scene.objects:
        x0, y0, x1, y1 = object_bbox(o, resolution)
        objects.append(
            {
                **o.to_dict(),
                "bbox": [round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4)],
                "center": [round((x0 + x1) / 2, 4), round((y0 + y1) / 2, 4)],
            }
        )
    return {
        "kind": scene.kind,
        "background": scene.background,
        "count": scene.count,
        "objects": objects,
        "relation": None if scene.relation is None else {"subject": 0, "object": 1, "relation": scene.relation},
        "heldout": scene.heldout,
    }


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


class ShapesDataset(Dataset):
    """Map-style dataset of rendered scenes; sample ``index`` depends only on (seed, split, index).

    ``split``: ``train``, ``test`` (same distribution, different samples) or ``heldout`` (every
    image has a held-out colour/shape pair). ``length`` defaults to 50 000 (train) or 5 000.
    Items are ``{"image": (3, R, R) float32 in [-1, 1], "caption": str, "meta": dict}`` where
    ``meta`` is :func:`scene_meta` plus the ``caption``. ``kinds``: the kind mix (:func:`parse_kind_mix`;
    default :data:`KIND_PROBS`).
    """

    name = "shapes"

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        seed: int = 0,
        length: int | None = None,
        kinds: str | None = None,
    ):
        _check_split(split)
        self.kind_probs = parse_kind_mix(kinds) if kinds else None
        if resolution < 1:
            raise DatasetError(f"resolution must be positive, got {resolution}")
        if length is not None and length < 0:
            raise DatasetError(f"length must be >= 0, got {length}")
        self.split = split
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.length = _DEFAULT_LENGTH[split] if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def hard_negatives(caption: str, kinds: Sequence[str] = ("shape",)) -> list[str]:
        """The wrong twins of ``caption`` for contrastive training (:func:`hard_negatives`)."""
        return hard_negatives(caption, kinds)

    def scene(self, index: int) -> tuple[Scene, str]:
        """The scene and caption of sample ``index`` (no rendering)."""
        index = sample_index(index, self.length, f"{self.length} samples")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        scene = sample_scene(rng, self.split, kind_probs=self.kind_probs)
        return scene, caption_scene(scene, rng)

    def __getitem__(self, index: int) -> Sample:
        scene, caption = self.scene(index)
        meta = scene_meta(scene, self.resolution)
        meta["caption"] = caption
        return {"image": pil_to_tensor(render(scene, self.resolution)), "caption": caption, "meta": meta}

    def __repr__(self) -> str:
        mix = "" if self.kind_probs is None else f", kinds={self.kind_probs!r}"
        return (
            f"ShapesDataset(split={self.split!r}, resolution={self.resolution}, seed={self.seed}, "
            f"length={self.length}{mix})"
        )
