"""The bundled models draw the same images as when they were shipped, for the same seed.

A refactor that changes what a shipped model draws (a sampler loop, a conditioning path, a loader that rounds
weights differently) fails here, whatever else the tests check. Each bundled model generates a fixed batch
(fixed prompts, seed, few sampling steps) and each image is reduced to its 8x8 block means (a 0-255 array of
shape (H/8, W/8, 3)); those are compared with ``tests/fixtures/bundled_images.json``. The tolerance absorbs
floating-point noise between CPUs and thread counts (measured: at most a few levels), not a changed picture.

When a bundled model is re-exported on purpose, regenerate the file and commit it with the weights::

    PYTHONPATH=src python tests/test_bundled_same_images.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import dalle2
from dalle2.pipeline import BUNDLED, bundled_path

DATA = Path(__file__).parent / "fixtures" / "bundled_images.json"
PROMPTS = ["a red circle above a blue square", "two green stars", "a small yellow heart in the top left"]
SEED = 7
CALL = {"unclip": {"steps": 8}, "gan": {}}  # few decoder steps keep the test fast; the GAN samples in one step
BLOCK = 8
MAX_LEVELS = 12.0  # largest allowed block difference (0-255)
MEAN_LEVELS = 1.5  # allowed mean block difference


def _weights_digest(name: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in sorted(bundled_path(name).rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def _blocks(name: str, seed: int = SEED) -> np.ndarray:
    pipe = dalle2.load(name)
    images = pipe(PROMPTS, n=1, seed=seed, **CALL[name])
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) for im in images])  # (N, H, W, 3)
    n, h, w, c = arrays.shape
    # (N, H, W, 3) -> (N, H/8, 8, W/8, 8, 3) -> block means (N, H/8, W/8, 3)
    return arrays.reshape(n, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).mean(axis=(2, 4))


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_draws_the_shipped_images(name):
    stored = json.loads(DATA.read_text())[name]
    assert stored["weights_sha256"] == _weights_digest(name), (
        f"the bundled {name} weights changed: regenerate {DATA.name} (see this module's docstring)"
    )
    got = _blocks(name)
    want = np.asarray(stored["blocks"], dtype=np.float64)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (
        f"{name}: block difference max {diff.max():.1f}, mean {diff.mean():.2f} (allowed {MAX_LEVELS}, {MEAN_LEVELS})"
    )


def test_a_changed_picture_is_caught():
    """The tolerance is far below what a different image costs: another seed of the GAN fails it."""
    stored = np.asarray(json.loads(DATA.read_text())["gan"]["blocks"], dtype=np.float64)
    other = _blocks("gan", seed=SEED + 1)
    diff = np.abs(other - stored)
    assert diff.max() > MAX_LEVELS or diff.mean() > MEAN_LEVELS


def main() -> None:
    out = {}
    for name in sorted(BUNDLED):
        out[name] = {
            "prompts": PROMPTS,
            "seed": SEED,
            "call": CALL[name],
            "weights_sha256": _weights_digest(name),
            "blocks": np.round(_blocks(name), 2).tolist(),
        }
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(out) + "\n")
    print(f"wrote {DATA}")


if __name__ == "__main__":
    sys.exit(main())
