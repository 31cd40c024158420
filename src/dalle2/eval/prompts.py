"""The fixed, seeded benchmark prompt sets (GenEval-style tasks on ``shapes``; classes on MNIST-like data).

Every prompt carries the structured requirement it is scored against, so images made by any program
for these prompts can be scored (``dalle2 eval --images DIR --prompts prompts.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dalle2.data import shapes as S
from dalle2.errors import Dalle2Error

TASKS = ("single", "two_objects", "counting", "colors", "position", "relation", "color_attribution", "background")
SPLITS = ("train", "heldout")  # attribute combinations seen in training / the declared held-out pairs
PROMPT_SET_VERSION = 1
REPORT_PROMPTS, REPORT_IMAGES = 100, 4  # per task and split, at reporting size
QUICK_PROMPTS, QUICK_IMAGES = 12, 2
CLASS_REPORT, CLASS_QUICK = 1000, 50  # class datasets: prompts per class (10k / 500 images)


def _np(color: str, shape: str) -> str:
    return S._a(f"{color} {shape}")


def _pairs(split: str) -> list[tuple[str, str]]:
    every = [(c, s) for c in S.COLORS for s in S.SHAPES]
    return [p for p in every if (p in S.HELDOUT_PAIRS) == (split == "heldout")]


def _spec(task: str, split: str, rng: np.random.Generator) -> dict[str, Any]:
    """One prompt with its requirement. Held-out prompts contain at least one held-out colour-shape pair."""
    seen, held = _pairs("train"), _pairs("heldout")
    first = held if split == "heldout" else seen

    def pick(pool: list[tuple[str, str]], differ_from: tuple[str, str] | None = None) -> tuple[str, str]:
        while True:
            c, s = pool[rng.integers(len(pool))]
            if differ_from is None or (s != differ_from[1] and c != differ_from[0]):
                return c, s

    def background_for(*colors: str) -> str:
        options = [b for b in S.BACKGROUNDS if all(S.COLORS[c] != S.BACKGROUNDS[b] for c in colors)]
        return options[rng.integers(len(options))]

    c, s = pick(first)
    spec: dict[str, Any] = {"task": task, "split": split}
    if task in ("single", "colors"):
        spec.update(prompt=_np(c, s), objects=[{"shape": s, "color": c}])
    elif task == "position":
        cell = S.CELLS[rng.integers(9)]
        spec.update(prompt=f"{_np(c, s)} {S.CELL_PHRASES[cell]}", objects=[{"shape": s, "color": c}], cell=cell)
    elif task == "background":
        bg = background_for(c)
        spec.update(prompt=f"{_np(c, s)} on {S._a(bg)} background", objects=[{"shape": s, "color": c}], background=bg)
    elif task == "counting":
        n = int(rng.integers(2, S.MAX_COUNT + 1))
        spec.update(prompt=f"{S.NUMBER_WORDS[n]} {c} {S.PLURALS[s]}", objects=[{"shape": s, "color": c}], count=n)
    else:  # two objects: different shapes and colours, so that binding is testable
        c2, s2 = pick(seen, differ_from=(c, s))
        a, b = ((c, s), (c2, s2)) if rng.random() < 0.5 else ((c2, s2), (c, s))
        objects = [{"shape": a[1], "color": a[0]}, {"shape": b[1], "color": b[0]}]
        if task == "relation":
            rel = S.RELATIONS[rng.integers(len(S.RELATIONS))]
            spec.update(prompt=f"{_np(*a)} {S.RELATION_PHRASES[rel][0]} {_np(*b)}", objects=objects, relation=rel)
        else:
            spec.update(prompt=f"{_np(*a)} and {_np(*b)}", objects=objects)
    return spec


def shapes_prompts(quick: bool = False, seed: int = 2024, num_prompts: int | None = None) -> list[dict[str, Any]]:
    """The benchmark prompts: every task on both splits, ``num_prompts`` each, deterministic from ``seed``."""
    n = num_prompts or (QUICK_PROMPTS if quick else REPORT_PROMPTS)
    out = []
    for t, task in enumerate(TASKS):
        for s, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, t, s])
            for i in range(n):
                spec = _spec(task, split, rng)
                spec["id"] = f"{task}-{split}-{i:03d}"
                out.append(spec)
    return out


def class_prompts(dataset: str, quick: bool = False, per_class: int | None = None) -> list[dict[str, Any]]:
    """Class-conditional prompts for Fashion-MNIST / MNIST: the canonical caption of every class."""
    from dalle2.data.idx import class_prompt, classes_for

    n = per_class or (CLASS_QUICK if quick else CLASS_REPORT)
    out = []
    for label, name in enumerate(classes_for(dataset)):
        for i in range(n):
            prompt = class_prompt(dataset, label, i % 3)
            out.append(
                {
                    "task": "class",
                    "split": "test",
                    "prompt": prompt,
                    "label": label,
                    "class_name": name,
                    "id": f"class-{label}-{i:03d}",
                }
            )
    return out


def render_real(spec: dict[str, Any], resolution: int, rng: np.random.Generator):
    """A real ``shapes`` render satisfying a prompt's requirement (the validation of the scorer)."""
    task = spec["task"]
    objects = [dict(o) for o in spec["objects"]]
    if task == "counting":
        scene = S.scene_from_spec("count", rng, objects=objects, count=spec["count"])
    elif task in ("two_objects", "relation", "color_attribution"):
        scene = S.scene_from_spec("relation", rng, objects=objects, relation=spec.get("relation"))
    else:
        if "cell" in spec:
            objects[0]["cell"] = spec["cell"]
        scene = S.scene_from_spec("single", rng, objects=objects, background=spec.get("background"))
    return S.render(scene, resolution)


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a prompts file, with the line number of any malformed line in the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise Dalle2Error(
            f"{path}: not UTF-8 text (byte {error.start + 1}); write it with `dalle2 eval-prompts`"
        ) from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise Dalle2Error(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or "prompt" not in record:
            raise Dalle2Error(f"{path}:{number}: each line must be an object with at least a 'prompt'")
        records.append(record)
    if not records:
        raise Dalle2Error(f"{path}: no prompts")
    return records
