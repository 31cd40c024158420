"""The committed tiny unCLIP folder (tests/fixtures/unclip-tiny) still loads and computes what it did.

The folder was written once by ``tests/fixtures/make_unclip_tiny.py`` (never regenerated here): a code
change that breaks loading of saved checkpoints (renamed weights, a changed config key, another
tokenizer format, a changed text pooling) fails this test. Regenerate the fixture only for a deliberate
format change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dalle2.data.shapes import ShapesDataset
from dalle2.models.clip import ClipModel
from dalle2.models.prior import DiffusionPrior
from dalle2.pipeline import read_index

FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
ATOL = 1e-4


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return ClipModel.load(FIXTURE / "clip")


@pytest.fixture(scope="module")
def prior() -> DiffusionPrior:
    return DiffusionPrior.from_pretrained(FIXTURE / "prior")


def _close(actual: torch.Tensor, values: list) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(values), atol=ATOL, rtol=0)


def test_fixture_holds_only_what_inference_loads():
    names = {p.name for p in FIXTURE.iterdir()}
    assert names == {"tokenizer", "clip", "prior", "model_index.json", "expected.json"}
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 300_000, f"the fixture grew to {size} bytes"


def test_model_index_format():
    index = json.loads((FIXTURE / "model_index.json").read_text())
    assert index["format"] == "dalle2" and index["format_version"] == 1 and index["kind"] == "unclip"
    assert {name: entry["folder"] for name, entry in index["components"].items()} == {
        "clip": "clip",
        "tokenizer": "tokenizer",
        "prior": "prior",
    }
    assert read_index(FIXTURE)["format_version"] == 1  # the pipeline loader accepts it too


@torch.no_grad()
def test_clip_text_embedding_reproduces(clip, expected):
    text_embed, hidden, mask = clip.encode_prompts(expected["prompts"])
    _close(text_embed, expected["text_embed"])
    assert hidden.shape[:2] == mask.shape and bool(mask.any(1).all())


@torch.no_grad()
def test_clip_image_embedding_reproduces(clip, expected):
    spec = expected["image"]
    assert clip.image_size == spec["resolution"]
    dataset = ShapesDataset(split=spec["split"], resolution=clip.image_size, seed=spec["seed"])
    image = dataset[spec["index"]]["image"].unsqueeze(0)
    _close(clip.encode_image(image), spec["image_embed"])


@torch.no_grad()
def test_prior_sample_reproduces(clip, prior, expected):
    assert prior.config.embed_dim == clip.config["embed_dim"]
    spec = expected["prior_sample"]
    text_embed, hidden, mask = clip.encode_prompts(expected["prompts"])
    z = prior.sample(
        text_embed, hidden, mask, steps=spec["steps"], generator=torch.Generator().manual_seed(spec["seed"])
    )
    _close(z, spec["z_i"])
