"""The ``train prior`` stage on the tiny preset (seconds)."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from dalle2.config import ConfigError
from dalle2.models.prior import DiffusionPrior
from dalle2.stages.clip_stage import train_clip
from dalle2.stages.prior_cli import register
from dalle2.stages.prior_stage import PriorStageError, train_prior

TINY = {"preset": "tiny", "log_with": None, "progress": False, "quiet": True}
SMALL = ["prior.pool_size=32", "prior.eval_samples=8", "prior.sample_steps=3"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    train_clip(out=str(out), data="shapes", max_steps=2, overrides=["clip.eval_samples=8"], **TINY)
    return out


@pytest.fixture(scope="module")
def trained(clip_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "pipe"
    shutil.copytree(clip_folder, out)
    report = train_prior(out=str(out), data="shapes", max_steps=2, overrides=SMALL, **TINY)
    return out, report


def test_tiny_train_writes_folder_and_loads(trained):
    out, report = trained
    for name in ("config.json", "model.safetensors", "embedding_stats.safetensors", "report.json"):
        assert (out / "prior" / name).is_file(), name
    index = json.loads((out / "model_index.json").read_text())
    assert index["components"]["clip"]["folder"] == "clip"  # kept
    assert index["components"]["prior"]["folder"] == "prior"  # added
    assert (out / "training" / "prior" / "checkpoints").is_dir()
    saved = json.loads((out / "prior" / "report.json").read_text())
    assert set(saved["cosine"]) == {"prior", "text_baseline", "unrelated_caption", "mean_image_embedding"}
    assert saved["samples"] == 8 and saved["pool_size"] == 32 and report["train"]["step"] == 2

    prior = DiffusionPrior.from_pretrained(out / "prior")
    clip_config = json.loads((out / "clip" / "config.json").read_text())
    c = prior.config
    assert c.embed_dim == clip_config["embed_dim"]
    z = prior.sample(torch.randn(3, c.embed_dim), torch.randn(3, c.max_text_len, c.text_width), steps=2)
    assert z.shape == (3, c.embed_dim) and torch.isfinite(z).all()


def test_resume_continues(trained):
    out, _ = trained
    report = train_prior(out=str(out), data="shapes", max_steps=4, resume=True, overrides=SMALL, **TINY)
    assert report["train"]["step"] == 4 and report["train"]["steps_this_run"] == 2


def test_missing_clip_is_a_clear_error(tmp_path):
    with pytest.raises(PriorStageError, match="dalle2 train clip --out"):
        train_prior(out=str(tmp_path / "empty"), **TINY)


def test_bad_preset_and_keys(clip_folder):
    with pytest.raises(ConfigError, match="unknown preset"):
        train_prior(out=str(clip_folder), **{**TINY, "preset": "huge"})
    with pytest.raises(ConfigError, match="unknown key prior.bogus"):
        train_prior(out=str(clip_folder), overrides=["prior.bogus=1"], **TINY)
    with pytest.raises(ConfigError, match="taken from the CLIP"):
        train_prior(out=str(clip_folder), overrides=["prior.embed_dim=8"], **TINY)


def test_cli_registration():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prior", "--out", "D", "--preset", "tiny", "--max-steps", "3", "--set", "a.b=1"])
    assert args.out == "D" and args.max_steps == 3 and args.overrides == ["a.b=1"] and callable(args.func)
