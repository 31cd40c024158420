"""GenEval-style faithfulness scorer for ``shapes`` (Ghosh et al. 2023), deterministic and checkable.

1. Background: the median colour of the image border, named by the nearest background colour.
2. Objects: 8-connected components of pixels far from the background colour (tiny specks dropped).
3. Colour: majority vote of the nearest palette colour over an object's core pixels.
4. Shape: a small CNN (evaluator ``shapes-attr-v1``) on the object's normalised soft mask.
5. Position: the 3x3 cell holding the centroid; relation: GenEval's rule on the two boxes.
A task's score is the fraction of images that pass; ``overall`` is the unweighted mean of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from dalle2.data import shapes as S
from dalle2.errors import Dalle2Error

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that makes a pixel foreground (of 441)
MIN_AREA_FRACTION = 0.25 * (0.5 / 3) ** 2 * 0.3  # a quarter of the smallest object's area (small star ~0.3 fill)
CROP = 24  # shape classifier input size
_PALETTE = np.array(list(S.COLORS.values()), dtype=np.float32)  # (9, 3)
_PALETTE_NAMES = list(S.COLORS)
_BG = np.array(list(S.BACKGROUNDS.values()), dtype=np.float32)
_BG_NAMES = list(S.BACKGROUNDS)


@dataclass
class Detection:
    shape: str
    color: str
    size: str
    cell: str
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    area: int
    shape_confidence: float


@dataclass
class Analysis:
    background: str
    objects: list[Detection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [vars(o) for o in self.objects]}


def _as_uint8(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return array.astype(np.uint8)


def segment(image: Image.Image | np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Background name, its estimated colour, the (H, W) distance map, the label map and per-object crops.

    Each crop is the object's soft mask (distance scaled to [0, 1], other objects removed), padded to a
    square around its box and resized to ``CROP`` x ``CROP``: the shape classifier's input.
    """
    rgb = _as_uint8(image).astype(np.float32)  # (H, W, 3)
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2H + 2W, 3)
    bg_color = np.median(border, axis=0)
    background = _BG_NAMES[int(np.argmin(((_BG - bg_color) ** 2).sum(1)))]
    distance = np.sqrt(((rgb - bg_color) ** 2).sum(-1))  # (H, W)
    labels, n = ndimage.label(distance > FOREGROUND_DISTANCE, structure=np.ones((3, 3)))
    min_area = max(2, MIN_AREA_FRACTION * h * w)
    keep = [
        k
        for k, area in enumerate(ndimage.sum_labels(np.ones_like(distance), labels, range(1, n + 1)), 1)
        if area >= min_area
    ]
    crops = []
    relabeled = np.zeros_like(labels)
    for new, k in enumerate(keep, 1):
        relabeled[labels == k] = new
        crops.append(_crop(distance, labels == k))
    return background, bg_color, distance, relabeled, crops


def _crop(distance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    grown = ndimage.binary_dilation(mask, iterations=1)
    soft = np.where(grown, distance, 0.0)
    peak = soft[mask].max()
    soft = np.clip(soft / max(peak, 1e-6), 0, 1)
    ys, xs = np.nonzero(grown)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0) + 2
    canvas = np.zeros((side, side), dtype=np.float32)
    oy, ox = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
    canvas[oy : oy + y1 - y0, ox : ox + x1 - x0] = soft[y0:y1, x0:x1]
    return np.asarray(Image.fromarray(canvas, mode="F").resize((CROP, CROP), Image.Resampling.BILINEAR))


class ShapesScorer:
    """Detects objects in ``shapes``-style images and checks benchmark requirements against them."""

    def __init__(self, classifier: torch.nn.Module, version: str = "shapes-attr-v1"):
        self.classifier = classifier.eval()
        self.version = version

    @classmethod
    def load(cls, name_or_path: str = "shapes-attr-v1") -> ShapesScorer:
        from dalle2.eval.networks import load_evaluator

        model, meta = load_evaluator(name_or_path)
        return cls(model, meta.get("name", str(name_or_path)))

    @torch.no_grad()
    def classify(self, crops: list[np.ndarray]) -> tuple[list[str], list[float]]:
        if not crops:
            return [], []
        x = torch.from_numpy(np.stack(crops)).unsqueeze(1).mul(2).sub(1)  # (N, 1, CROP, CROP) in [-1, 1]
        probs = self.classifier(x.contiguous(memory_format=torch.channels_last))["shape"].softmax(-1)
        conf, idx = probs.max(-1)
        return [S.SHAPES[i] for i in idx.tolist()], conf.tolist()

    def analyze(self, image: Image.Image | np.ndarray) -> Analysis:
        return self.analyze_many([image])[0]

    def analyze_many(self, images: list[Image.Image] | list[np.ndarray], batch_size: int = 1024) -> list[Analysis]:
        """Analyse images, classifying every object crop of the whole batch in a few network calls."""
        segmented = [(rgb, *segment(rgb)) for rgb in map(_as_uint8, images)]
        crops = [crop for *_, image_crops in segmented for crop in image_crops]
        shapes: list[str] = []
        confidence: list[float] = []
        for i in range(0, len(crops), batch_size):
            s, c = self.classify(crops[i : i + batch_size])
            shapes += s
            confidence += c
        out, k = [], 0
        for rgb, background, bg_color, distance, labels, image_crops in segmented:
            n = len(image_crops)
            out.append(_describe(rgb, background, bg_color, distance, labels, shapes[k : k + n], confidence[k : k + n]))
            k += n
        return out

    def check(self, spec: dict[str, Any], analysis: Analysis) -> bool:
        """Whether an image's analysis satisfies a benchmark prompt's requirement (see ``prompts.py``)."""
        objects = analysis.objects
        task, want = spec["task"], spec["objects"]

        def matches(o: Detection, w: dict[str, str], color: bool = True) -> bool:
            return o.shape == w["shape"] and (not color or o.color == w["color"])

        if task == "single":
            return any(matches(o, want[0], color=False) for o in objects)
        if task == "colors":
            return any(matches(o, want[0]) for o in objects)
        if task == "position":
            return any(matches(o, want[0]) and o.cell == spec["cell"] for o in objects)
        if task == "background":
            return analysis.background == spec["background"] and any(matches(o, want[0], color=False) for o in objects)
        if task == "counting":
            return sum(o.shape == want[0]["shape"] for o in objects) == spec["count"]
        if task == "two_objects":
            return _two(objects, want, color=False) is not None
        if task == "color_attribution":
            return _two(objects, want, color=True) is not None
        if task == "relation":
            for a in objects:
                for b in objects:
                    if a is not b and matches(a, want[0]) and matches(b, want[1]):
                        if spec["relation"] in S.geneval_relations(a.bbox, b.bbox):
                            return True
            return False
        raise Dalle2Error(f"unknown task {task!r}")


def _describe(
    rgb: np.ndarray,
    background: str,
    bg_color: np.ndarray,
    distance: np.ndarray,
    labels: np.ndarray,
    shapes: list[str],
    confidence: list[float],
) -> Analysis:
    """Colour, size, cell and box of each segmented object, given its classified shape."""
    h, w, _ = rgb.shape
    analysis = Analysis(background)
    cell_w, cell_h = w / 3, h / 3
    for k, (shape, conf) in enumerate(zip(shapes, confidence, strict=True), 1):
        mask = labels == k
        ys, xs = np.nonzero(mask)
        color = _vote_color(rgb[mask].astype(np.float32), bg_color, distance[mask])
        weights = distance[mask]
        cx, cy = (
            float((xs * weights).sum() / weights.sum()) + 0.5,
            float((ys * weights).sum() / weights.sum()) + 0.5,
        )
        col, row = min(2, int(cx // cell_w)), min(2, int(cy // cell_h))
        extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / cell_w
        analysis.objects.append(
            Detection(
                shape=shape,
                color=color,
                size="large" if extent > 0.62 else "small",
                cell=S.CELLS[row * 3 + col],
                bbox=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                area=int(mask.sum()),
                shape_confidence=round(float(conf), 4),
            )
        )
    return analysis


def _vote_color(pixels: np.ndarray, bg_color: np.ndarray, weight: np.ndarray) -> str:
    """The palette colour whose blend line with the background best explains an object's pixels.

    Antialiased edges (and whole small objects) are mixes ``alpha * colour + (1 - alpha) * background``;
    each pixel votes, weighted by its distance from the background, for the colour whose segment
    background -> colour passes closest to it, so dark blends of cyan are not read as green.
    """
    v = _PALETTE - bg_color  # (K, 3)
    d = pixels - bg_color  # (P, 3)
    t = np.clip(d @ v.T / np.maximum((v * v).sum(1), 1e-6), 0, 1)  # (P, K) blend factor per colour
    residual = ((d[:, None, :] - t[..., None] * v[None]) ** 2).sum(-1)  # (P, K)
    votes = np.bincount(residual.argmin(1), weights=weight, minlength=len(_PALETTE))
    return _PALETTE_NAMES[int(votes.argmax())]


def _two(objects: list[Detection], want: list[dict[str, str]], color: bool) -> tuple[Detection, Detection] | None:
    for a in objects:
        for b in objects:
            if a is not b and a.shape == want[0]["shape"] and b.shape == want[1]["shape"]:
                if not color or (a.color == want[0]["color"] and b.color == want[1]["color"]):
                    return a, b
    return None
