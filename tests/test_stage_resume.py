"""Stage-level resume on the tiny preset: a resumed prior run ends bit-identical to an uninterrupted one,
and resuming with another model size is refused with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle2.stages.clip_stage import train_clip
from dalle2.stages.prior_stage import train_prior
from dalle2.training.checkpoint import latest_checkpoint, step_of
from dalle2.training.errors import TrainingError
from dalle2.training.trainer import Trainer

TINY = {"preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}
SMALL = ["prior.pool_size=32", "prior.eval_samples=8", "prior.sample_steps=3"]
STEPS = 4  # the tiny preset's train.max_steps: every run below keeps this schedule length
LOAD_ERROR = r"cannot load .*model\.safetensors into this model \(was it saved by another model or config\?\)"


class Killed(Exception):
    """Stands in for the process dying right after a checkpoint was written."""


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "pipe"
    train_clip(out=str(out), max_steps=2, overrides=["clip.eval_samples=8"], **TINY)
    return out


def _copy(clip_folder: Path, where: Path) -> Path:
    """A pipeline folder holding only the trained CLIP (no prior, no prior checkpoints)."""
    shutil.copytree(clip_folder, where)
    return where


@pytest.fixture(scope="module")
def uninterrupted(clip_folder, tmp_path_factory) -> Path:
    out = _copy(clip_folder, tmp_path_factory.mktemp("a") / "pipe")
    report = train_prior(out=str(out), max_steps=STEPS, overrides=SMALL, **TINY)
    assert report["train"]["step"] == STEPS and report["train"]["steps_this_run"] == STEPS
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    """The exported EMA prior and the last checkpoint's raw weights are bit-identical."""
    files = [Path("prior/model.safetensors"), Path(f"training/prior/checkpoints/step_{STEPS:08d}/model.safetensors")]
    for file in files:
        wa, wb = load_file(a / file), load_file(b / file)
        assert wa.keys() == wb.keys(), file
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not different, f"{file}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_after_a_kill_is_exact(clip_folder, uninterrupted, tmp_path, monkeypatch):
    out = _copy(clip_folder, tmp_path / "pipe")
    real_save = Trainer._save

    def save_then_die(self: Trainer) -> Path:
        path = real_save(self)
        if self.step == 2:
            raise Killed(f"killed after writing {path}")
        return path

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save", save_then_die)
        with pytest.raises(Killed):
            train_prior(out=str(out), max_steps=STEPS, overrides=SMALL, **TINY)
    assert step_of(latest_checkpoint(out / "training" / "prior" / "checkpoints")) == 2
    assert not (out / "prior").exists()

    report = train_prior(out=str(out), max_steps=STEPS, resume=True, overrides=SMALL, **TINY)
    assert report["train"]["step"] == STEPS and report["train"]["steps_this_run"] == 2
    _assert_same_weights(uninterrupted, out)


def test_resume_after_the_time_budget_is_exact(clip_folder, uninterrupted, tmp_path):
    out = _copy(clip_folder, tmp_path / "pipe")
    first = train_prior(out=str(out), max_steps=STEPS, max_minutes=1e-9, overrides=SMALL, **TINY)
    assert first["train"]["stop_reason"] == "time budget reached" and first["train"]["step"] == 1
    report = train_prior(out=str(out), max_steps=STEPS, resume=True, overrides=SMALL, **TINY)
    assert report["train"]["step"] == STEPS and report["train"]["steps_this_run"] == STEPS - 1
    _assert_same_weights(uninterrupted, out)


def test_resume_with_a_larger_max_steps_is_exact(clip_folder, uninterrupted, tmp_path):
    # train.schedule_steps fixes the LR schedule's length, so stopping at 2 and resuming to 4 is exact
    out = _copy(clip_folder, tmp_path / "pipe")
    schedule = [*SMALL, f"train.schedule_steps={STEPS}"]
    first = train_prior(out=str(out), max_steps=2, overrides=schedule, **TINY)
    report = train_prior(out=str(out), max_steps=STEPS, resume=True, overrides=schedule, **TINY)
    assert report["train"]["step"] == STEPS and report["train"]["steps_this_run"] == 2
    _assert_same_weights(uninterrupted, out)
    # the report's total training time counts both runs (the checkpoint carries the first run's time)
    before, this_run = first["train"]["total_wall_seconds"], report["train"]["wall_seconds"]
    assert before > 0 and report["train"]["total_wall_seconds"] >= before + this_run - 0.2


@pytest.mark.parametrize("change", ["prior.num_layers=3", "prior.head_dim=32"])
def test_prior_resume_with_another_model_size_is_refused(clip_folder, tmp_path, change):
    out = _copy(clip_folder, tmp_path / "pipe")
    train_prior(out=str(out), max_steps=2, overrides=SMALL, **TINY)
    saved = (out / "prior" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match=LOAD_ERROR):
        train_prior(out=str(out), max_steps=STEPS, resume=True, overrides=[*SMALL, change], **TINY)
    # nothing was overwritten: the folder still holds the 2-step run
    assert (out / "prior" / "model.safetensors").read_bytes() == saved
    assert step_of(latest_checkpoint(out / "training" / "prior" / "checkpoints")) == 2


def test_clip_resume_with_another_model_size_is_refused(clip_folder, tmp_path):
    out = _copy(clip_folder, tmp_path / "pipe")
    with pytest.raises(TrainingError, match=LOAD_ERROR):
        train_clip(out=str(out), max_steps=STEPS, resume=True, overrides=["clip.vision_layers=2"], **TINY)
