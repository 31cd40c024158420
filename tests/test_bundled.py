"""The models shipped inside the package: they load, generate at the right size, follow prompts.

The faithfulness floor is a real assertion on a fixed seed: a small slice of the quick `shapes` benchmark
(``PROMPTS_PER_TASK`` prompts of every task, seen split, one image each) scored by the shipped scorer. The
floor sits a margin below what the shipped model measured on exactly this slice (see ``MEASURED``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import dalle2
from dalle2.pipeline import BUNDLED, bundled_path

PROMPTS_PER_TASK = 6
#: measured on this slice (seed 0) when the model was bundled; see docs/results.md "The bundled models":
#: 28 of 48 images at the shipped decoder guidance 3 (2026-12-05, the decoder continued on the CPU after the
#: GPU, lineage 21,694 steps; the GPU-continued model before it scored 30 here, the CPU-trained one before
#: that 21: this slice is too small to rank close models, the full benchmark does)
MEASURED = {"unclip": 0.583}
FLOOR = {"unclip": 0.45}  # 22 of 48: guards against regressions (float rounding moves a few images), not a claim
MAX_MB = 30.0


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_loads_and_generates(name):
    folder = bundled_path(name)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["kind"] == name
    assert "command" in index["provenance"]["note"] and "seed" in index["provenance"]["note"]
    pipe = dalle2.load(name)
    images = pipe(["a red circle above a blue square", "two green stars"], n=2, seed=0)
    assert len(images) == 4 and all(im.size == (pipe.resolution, pipe.resolution) for im in images)
    arrays = [np.asarray(im, dtype=float) for im in images]
    assert np.abs(arrays[0] - arrays[2]).mean() > 1.0  # different prompts, different images
    again = pipe(["a red circle above a blue square", "two green stars"], n=2, seed=0)[3]
    assert np.array_equal(np.asarray(again), np.asarray(images[3]))  # reproducible from the seed


def test_bundled_models_are_small():
    total = sum(p.stat().st_size for name in BUNDLED for p in bundled_path(name).rglob("*") if p.is_file())
    assert total / 1e6 <= MAX_MB


def test_bundled_unclip_follows_prompts():
    from dalle2.eval import prompts as P
    from dalle2.eval.evaluate import _faithfulness, benchmark

    records = [r for r in benchmark("shapes", quick=True, images_per_prompt=1) if r["split"] == P.SPLITS[0]]
    picked = []
    for task in P.TASKS:
        picked += [r for r in records if r["task"] == task][:PROMPTS_PER_TASK]
    pipe = dalle2.load("unclip")
    images = pipe([r["prompt"] for r in picked], n=1, seed=0)
    table, _ = _faithfulness(picked, images)
    overall = table[P.SPLITS[0]]["overall"]
    assert overall >= FLOOR["unclip"], f"faithfulness {overall:.3f} below the floor {FLOOR['unclip']}"
