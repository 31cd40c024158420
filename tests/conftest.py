"""Shared fixtures."""

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_unclip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny unCLIP pipeline folder: the committed tokenizer, CLIP and prior of
    ``fixtures/unclip-tiny`` plus a decoder (16x16) and upsampler (32x32) trained here (tiny preset, a few
    seconds). The decoder's learning rate is raised (1e-3 -> 3e-2) so that after its 4 steps the prompt and the
    guidance scale already change the images (at 1e-3 the zero-initialised conditioning has no visible effect).
    Session-scoped and shared: tests must not write into it."""
    from dalle2.stages.image_stage import train_decoder, train_upsampler

    folder = tmp_path_factory.mktemp("pipelines") / "unclip-tiny"
    shutil.copytree(FIXTURES / "unclip-tiny", folder)
    opts = {"out": str(folder), "preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}
    train_decoder(**opts, overrides=["train.learning_rate=0.03"])
    train_upsampler(**opts)
    return folder
