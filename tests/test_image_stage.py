"""The ``train decoder`` and ``train upsampler`` stages on the tiny preset, from the committed tiny CLIP + prior."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dalle2
from dalle2.config import ConfigError
from dalle2.models.decoder import ImageDiffusion
from dalle2.stages.image_cli import register
from dalle2.stages.image_stage import ImageStageError, train_decoder, train_upsampler

FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
TINY = {"preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}


def _copy(where: Path) -> Path:
    out = where / "pipe"
    shutil.copytree(FIXTURE, out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, dict]:
    out = _copy(tmp_path_factory.mktemp("image"))
    decoder = train_decoder(out=str(out), **TINY)
    upsampler = train_upsampler(out=str(out), **TINY)
    return out, decoder, upsampler


def test_decoder_writes_folder_report_and_index(trained):
    out, report, _ = trained
    for name in ("config.json", "model.safetensors", "report.json"):
        assert (out / "decoder" / name).is_file(), name
    assert (out / "training" / "decoder" / "checkpoints" / "step_00000004").is_dir()
    saved = json.loads((out / "decoder" / "report.json").read_text())
    assert saved["train"]["step"] == 4 == report["train"]["step"]
    assert {"decoded_vs_source", "unrelated_pairs", "samples"} <= set(saved["consistency"])
    assert saved["consistency"]["samples"] == 8  # the tiny preset's eval_samples
    decoder = ImageDiffusion.from_pretrained(out / "decoder")
    clip = json.loads((out / "clip" / "config.json").read_text())
    assert decoder.config.role == "decoder" and decoder.config.arch == "transformer"
    assert decoder.config.net["embed_dim"] == clip["embed_dim"]  # sizes come from the CLIP
    assert decoder.image_size == 16  # the CLIP's resolution
    index = json.loads((out / "model_index.json").read_text())
    assert index["components"]["decoder"] == {"folder": "decoder", "arch": "transformer", "image_size": 16}
    assert {"clip", "prior", "tokenizer"} <= set(index["components"])  # kept


def test_upsampler_writes_folder_report_and_index(trained):
    out, _, report = trained
    for name in ("config.json", "model.safetensors", "report.json"):
        assert (out / "upsampler" / name).is_file(), name
    up = ImageDiffusion.from_pretrained(out / "upsampler")
    assert up.config.role == "upsampler" and up.config.arch == "unet"
    assert up.image_size == 32 and up.config.low_res_size == 16  # tiny: data.resolution 16 -> 32
    assert {"psnr_upsampler", "psnr_bicubic"} <= set(report["quality"])
    index = json.loads((out / "model_index.json").read_text())
    assert index["components"]["upsampler"]["image_size"] == 32
    assert index["resolutions"] == [16, 32]
    out_image = up.sample(torch.randn(1, 3, 32, 32), low_res=torch.zeros(1, 3, 16, 16), steps=2)
    assert out_image.shape == (1, 3, 32, 32)


def test_resume_continues(trained):
    out, _, _ = trained
    report = train_decoder(out=str(out), max_steps=6, resume=True, **TINY)
    assert report["train"]["step"] == 6 and report["train"]["steps_this_run"] == 2
    report = train_upsampler(out=str(out), max_steps=6, resume=True, **TINY)
    assert report["train"]["step"] == 6 and report["train"]["steps_this_run"] == 2


def test_missing_clip_is_a_clear_error(tmp_path):
    with pytest.raises(ImageStageError, match="dalle2 train clip --out"):
        train_decoder(out=str(tmp_path / "empty"), **TINY)
    with pytest.raises(ImageStageError, match="--out"):
        train_decoder(**TINY)


def test_bad_preset_and_keys(tmp_path):
    out = tmp_path / "anywhere"  # configuration errors come before anything is loaded
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        train_decoder(out=str(out), **{**TINY, "preset": "huge"})
    with pytest.raises(ConfigError, match="unknown key decoder.bogus"):
        train_decoder(out=str(out), overrides=["decoder.bogus=1"], **TINY)
    with pytest.raises(ConfigError, match="unknown key upsampler.bogus"):
        train_upsampler(out=str(out), overrides=["upsampler.bogus=1"], **TINY)
    with pytest.raises(ConfigError, match="decoder.ema_decay must be a number"):
        train_decoder(out=str(out), overrides=["decoder.ema_decay=high"], **TINY)


def test_upsampler_needs_a_larger_output_resolution(tmp_path):
    with pytest.raises(ImageStageError, match=r"data.output_resolution \(16\) equals data.resolution"):
        train_upsampler(out=str(tmp_path), overrides=["data.output_resolution=16"], **TINY)
    with pytest.raises(ImageStageError, match="must be a multiple of data.resolution"):
        train_upsampler(out=str(tmp_path), overrides=["data.output_resolution=24"], **TINY)


def test_net_override_and_shared_yaml(tmp_path):
    """``decoder.net.width`` reaches the saved config; a YAML holding every stage's section is fine."""
    out = _copy(tmp_path)
    shared = tmp_path / "all.yaml"
    shared.write_text(
        "train:\n  max_steps: 1\n"
        "clip:\n  embed_dim: 999\n"
        "prior:\n  pool_size: 5\n"
        "upsampler:\n  net:\n    channels: [8]\n"
        "decoder:\n  eval_samples: 2\n  net:\n    depth: 2\n"
    )
    report = train_decoder(out=str(out), config=str(shared), overrides=["decoder.net.width=48"], **TINY)
    config = json.loads((out / "decoder" / "config.json").read_text())
    assert config["net"]["width"] == 48 and config["net"]["depth"] == 2 and config["net"]["heads"] == 2
    assert report["train"]["step"] == 1 and report["consistency"]["samples"] == 2


def test_cli_registration():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for stage in ("decoder", "upsampler"):
        args = parser.parse_args([stage, "--out", "D", "--preset", "tiny", "--max-steps", "3", "--set", "a.b=1"])
        assert args.stage == stage and args.out == "D" and args.max_steps == 3 and args.overrides == ["a.b=1"]
        assert callable(args.func)


@pytest.mark.parametrize("arch", ["unet", "transformer"])
def test_decoder_with_its_own_caption_encoder(tmp_path, arch):
    """decoder.net.caption_layers > 0: the stage sizes the encoder from the pipeline's tokenizer, trains on
    token ids, and the pipeline feeds the saved decoder ids (GLIDE's text encoder, as unCLIP's decoder)."""
    out = _copy(tmp_path)
    net = ["decoder.arch=unet", "decoder.net.channels=[16, 32]", "decoder.net.attention=[false, true]",
           "decoder.net.head_dim=8"] if arch == "unet" else []  # fmt: skip
    report = train_decoder(out=str(out), overrides=[*net, "decoder.net.caption_layers=1"], **TINY)
    assert report["train"]["step"] == 4
    decoder = ImageDiffusion.from_pretrained(out / "decoder")
    pipe = dalle2.load(out)
    assert decoder.reads_token_ids and pipe.decoder.reads_token_ids
    assert decoder.config.net["caption_vocab"] == pipe.clip.tokenizer.vocab_size
    assert decoder.config.net["caption_length"] == pipe.clip.tokenizer.max_length
    ids, _ = pipe.decoder_caption(["a red circle"], torch.zeros(1), torch.zeros(1))
    assert not ids.is_floating_point()
    images = pipe(["a red circle", "three green stars"], n=1, seed=0)
    assert [im.size for im in images] == [(pipe.resolution, pipe.resolution)] * 2
    assert np.abs(np.asarray(images[0], dtype=float) - np.asarray(images[1], dtype=float)).mean() > 0.5


def test_every_preset_decoder_config_is_valid_and_gpu_encodes_its_own_captions():
    from dalle2.models.decoder import DiffusionConfig
    from dalle2.stages.image_stage import _resolve

    sizes = {"image_size": 64, "embed_dim": 512, "context_dim": 512, "caption_vocab": 8000, "caption_length": 64}
    for preset in ("tiny", "cpu", "gpu"):
        _, spec, _ = _resolve("decoder", {"preset": preset})
        net = {**spec["net"], **sizes}  # what the stage adds from the CLIP and its tokenizer
        if not spec["net"].get("caption_layers"):
            net = {k: v for k, v in net.items() if not k.startswith("caption_")}
        config = DiffusionConfig(**{**spec, "net": net})
        assert bool(config.net_config().caption_layers) == (preset != "tiny"), preset


def test_self_conditioned_decoder_trains_saves_and_generates(tmp_path):
    out = _copy(tmp_path)
    report = train_decoder(out=str(out), overrides=["decoder.net.self_condition=true"], **TINY)
    assert report["train"]["step"] == 4
    pipe = dalle2.load(out)
    assert pipe.decoder.self_conditions and ImageDiffusion.from_pretrained(out / "decoder").self_conditions
    images = pipe(["a red circle", "three green stars"], n=1, seed=0)
    assert [im.size for im in images] == [(pipe.resolution, pipe.resolution)] * 2
    assert np.abs(np.asarray(images[0], dtype=float) - np.asarray(images[1], dtype=float)).mean() > 0.5


def _trainer_call(monkeypatch, stage: str, out: Path, overrides: list[str] | None = None) -> dict:
    """What the decoder or upsampler stage hands the Trainer (the dataset and the keyword arguments); the
    run stops there."""
    import dalle2.training.trainer as trainer_module

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_trainer(model, loss_fn, dataset, *args, **kwargs):
        seen.update(kwargs, dataset=dataset)
        raise Stop

    monkeypatch.setattr(trainer_module, "Trainer", fake_trainer)
    run = train_decoder if stage == "decoder" else train_upsampler
    with pytest.raises(Stop):
        run(out=str(_copy(out)), overrides=overrides or [], **TINY)
    return seen


@pytest.mark.parametrize("stage", ["decoder", "upsampler"])
def test_data_num_workers_reaches_the_loader(tmp_path, monkeypatch, stage):
    """Issue 22: the image stages ignored data.num_workers (the gpu preset's 8 workers never ran)."""
    assert _trainer_call(monkeypatch, stage, tmp_path, ["data.num_workers=3"])["num_workers"] == 3


@pytest.mark.parametrize("stage", ["decoder", "upsampler"])
def test_data_train_length_sizes_the_training_split(tmp_path, monkeypatch, stage):
    """data.train_length: shapes renders that many distinct training scenes (a long GPU run needs more than
    the default 50,000, or its data-loader workers restart every few seconds at a new epoch)."""
    assert len(_trainer_call(monkeypatch, stage, tmp_path, ["data.train_length=123456"])["dataset"]) == 123456
    assert len(_trainer_call(monkeypatch, stage, tmp_path / "default")["dataset"]) == 50_000
    with pytest.raises(ConfigError, match="data.train_length must be >= 1"):
        _trainer_call(monkeypatch, stage, tmp_path / "zero", ["data.train_length=0"])


def test_decoder_throughput_measures_without_touching_the_run(tmp_path):
    """The probe behind ``train all --minutes``: positive costs of each kind; nothing written under --out; and
    a decoder trained after it gets the same weights as one trained without it (the stage seeds its own)."""
    from dalle2.stages.image_stage import decoder_throughput

    probed, plain = _copy(tmp_path / "a"), _copy(tmp_path / "b")
    before = sorted(p.relative_to(probed) for p in probed.rglob("*"))
    cost = decoder_throughput(out=str(probed), steps=4, untimed=2, **TINY)
    assert sorted(p.relative_to(probed) for p in probed.rglob("*")) == before
    assert cost["images_per_second"] > 0 and cost["seconds_per_step"] > 0
    assert cost["images_per_second"] == pytest.approx(8 / cost["seconds_per_step"], rel=0.01)  # tiny: batch 8
    assert cost["checkpoint_seconds"] > 0 and cost["fixed_seconds"] > 0
    assert cost["checkpoint_every"] == 2  # the tiny preset's
    assert cost["seconds"] >= cost["fixed_seconds"]
    train_decoder(out=str(probed), **TINY)
    train_decoder(out=str(plain), **TINY)
    a = ImageDiffusion.from_pretrained(probed / "decoder").state_dict()
    b = ImageDiffusion.from_pretrained(plain / "decoder").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ImageStageError, match="steps >= 1"):
        decoder_throughput(out=str(probed), steps=0, **TINY)
