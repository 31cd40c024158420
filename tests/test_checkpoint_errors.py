"""Incompatible saved folders fail with a clear error naming the problem, not a torch/safetensors traceback.

Each test damages a copy of the committed tiny unCLIP folder (tests/fixtures/unclip-tiny).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dalle2.folder_format import FolderError, MissingFileError
from dalle2.models.clip import ClipModel
from dalle2.models.prior import DiffusionPrior
from dalle2.pipeline import PipelineError, read_index

FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "pipe"
    shutil.copytree(FIXTURE, out)
    return out


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- (a) a format version from the future ---------------------------------------------------------------


def test_clip_config_from_the_future(folder):
    _edit_json(folder / "clip" / "config.json", config_version=99)
    with pytest.raises(FolderError, match=r"clip/config\.json: format version 99; this dalle2 reads version 1"):
        ClipModel.load(folder / "clip")


def test_prior_config_from_the_future(folder):
    _edit_json(folder / "prior" / "config.json", format_version=99)
    with pytest.raises(FolderError, match=r"prior/config\.json: format version 99; this dalle2 reads version 1"):
        DiffusionPrior.from_pretrained(folder / "prior")


def test_model_index_from_the_future(folder):
    _edit_json(folder / "model_index.json", format_version=2)
    with pytest.raises(PipelineError, match="format version 2; this dalle2 reads version 1"):
        read_index(folder)


# -- (b) weights of other shapes than the config says ------------------------------------------------------


def test_prior_weights_of_another_width(folder):
    config = json.loads((folder / "prior" / "config.json").read_text())
    _edit_json(folder / "prior" / "config.json", head_dim=2 * config["head_dim"])
    with pytest.raises(ValueError, match=r"model.safetensors does not match config.json \(size mismatch for net\."):
        DiffusionPrior.from_pretrained(folder / "prior")


def test_prior_weights_with_fewer_layers(folder):
    config = json.loads((folder / "prior" / "config.json").read_text())
    _edit_json(folder / "prior" / "config.json", num_layers=config["num_layers"] + 1)
    with pytest.raises(ValueError, match=r"does not match config.json \(Missing key\(s\)"):
        DiffusionPrior.from_pretrained(folder / "prior")


def test_clip_weights_of_another_width(folder):
    config = json.loads((folder / "clip" / "config.json").read_text())
    config["vision_config"]["hidden_size"] *= 2
    (folder / "clip" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FolderError, match=r"model.safetensors does not match config.json \(size mismatch for vision\."):
        ClipModel.load(folder / "clip")


# -- (c) missing weights --------------------------------------------------------------------------------


def test_missing_prior_weights(folder):
    (folder / "prior" / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"prior/model\.safetensors: file not found"):
        DiffusionPrior.from_pretrained(folder / "prior")


def test_missing_clip_weights(folder):
    (folder / "clip" / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"clip/model\.safetensors: file not found"):
        ClipModel.load(folder / "clip")


def test_prior_stage_refuses_a_clip_without_weights(folder):
    from dalle2.stages.prior_stage import PriorStageError, train_prior

    (folder / "clip" / "model.safetensors").unlink()
    with pytest.raises(PriorStageError, match="no trained CLIP in this pipeline folder"):
        train_prior(out=str(folder), preset="tiny", log_with=None, progress=False, quiet=True)
