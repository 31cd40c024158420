"""``--init-from``: a decoder / upsampler run that starts from a pipeline folder's weights (issue 21)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from dalle2.export import export_pipeline
from dalle2.models.decoder import ImageDiffusion
from dalle2.stages.image_stage import ImageStageError, train_decoder, train_upsampler, warm_start

FIXTURE = Path(__file__).parent / "fixtures" / "unclip-tiny"
TINY = {"preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny pipeline trained 4 decoder + 4 upsampler steps (seed 1), exported (float16) as a shipped one is."""
    root = tmp_path_factory.mktemp("warm")
    shutil.copytree(FIXTURE, root / "first")
    other_seed = ["train.seed=1"]  # so its weights differ from a seed-0 run's random start
    train_decoder(out=str(root / "first"), overrides=other_seed, **TINY)
    train_upsampler(out=str(root / "first"), overrides=other_seed, **TINY)
    export_pipeline(root / "first", root / "shipped")
    return root / "shipped"


def _fresh(where: Path, name: str = "second") -> Path:
    out = where / name
    shutil.copytree(FIXTURE, out)
    return out


def test_warm_start_loads_the_weights(exported, tmp_path):
    out = _fresh(tmp_path)
    frozen = ["train.learning_rate=1e-12"]  # the one step leaves the weights where they started
    report = train_decoder(out=str(out), init_from=str(exported), max_steps=1, overrides=frozen, **TINY)
    start = ImageDiffusion.from_pretrained(exported / "decoder").state_dict()
    after = ImageDiffusion.from_pretrained(out / "decoder").state_dict()
    for key in start:
        torch.testing.assert_close(after[key].float(), start[key].float(), atol=1e-3, rtol=0)
    fresh = _fresh(tmp_path, "random")  # without --init-from the same run ends elsewhere
    train_decoder(out=str(fresh), max_steps=1, overrides=frozen, **TINY)
    random = ImageDiffusion.from_pretrained(fresh / "decoder").state_dict()
    assert max((random[k].float() - start[k].float()).abs().max().item() for k in start) > 1e-2
    assert report["train"]["step"] == 1  # this run's own steps, from 0
    assert report["init_from"]["steps"] == 4  # the 4 tiny steps that made the shipped decoder
    assert report["lineage"]["steps"] == 5


def test_warm_start_function_copies_every_tensor(exported, tmp_path):
    model = ImageDiffusion.from_pretrained(exported / "decoder")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    record = warm_start("decoder", model, exported, tmp_path, False, lambda _m: None)
    saved = ImageDiffusion.from_pretrained(exported / "decoder").state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key].to(value.dtype)), key
    assert json.loads((tmp_path / "training" / "decoder" / "init_from.json").read_text()) == record


def test_report_index_and_provenance_record_the_start(exported, tmp_path):
    out = _fresh(tmp_path)
    train_decoder(out=str(out), init_from=str(exported / "decoder"), max_steps=2, **TINY)  # the component folder
    saved = json.loads((out / "decoder" / "report.json").read_text())
    digest = hashlib.sha256((exported / "decoder" / "model.safetensors").read_bytes()).hexdigest()
    assert saved["init_from"]["sha256"] == digest
    assert saved["init_from"]["source"] == "shipped"  # the folder's name, not a path of this machine
    assert str(tmp_path) not in json.dumps(saved)
    index = export_pipeline(out, tmp_path / "again")
    record = index["provenance"]["stages"]["decoder"]
    assert record["steps"] == 2 and record["init_from"]["steps"] == 4 and record["lineage"]["steps"] == 6
    assert index["provenance"]["exported_from"] == "second"
    assert str(tmp_path) not in (tmp_path / "again" / "model_index.json").read_text()


def test_resume_of_a_warm_started_run_keeps_its_record(exported, tmp_path):
    out = _fresh(tmp_path)
    train_decoder(out=str(out), init_from=str(exported), max_steps=2, **TINY)
    report = train_decoder(out=str(out), resume=True, max_steps=3, **TINY)
    assert report["train"]["step"] == 3 and report["train"]["steps_this_run"] == 1
    assert report["init_from"]["steps"] == 4 and report["lineage"]["steps"] == 7


def test_upsampler_warm_start(exported, tmp_path):
    out = _fresh(tmp_path)
    report = train_upsampler(out=str(out), init_from=str(exported), max_steps=1, **TINY)
    assert report["init_from"]["steps"] == 4 and report["lineage"]["steps"] == 5


def test_another_network_is_a_clear_error(exported, tmp_path):
    out = _fresh(tmp_path)
    with pytest.raises(ImageStageError, match=r"another network.*net\.width"):
        train_decoder(out=str(out), init_from=str(exported), overrides=["decoder.net.width=48"], **TINY)
    assert not (out / "decoder").exists()  # nothing written


def test_missing_or_wrong_component_is_a_clear_error(exported, tmp_path):
    out = _fresh(tmp_path)
    with pytest.raises(ImageStageError, match="no decoder there"):
        train_decoder(out=str(out), init_from=str(tmp_path / "nowhere"), **TINY)
    with pytest.raises(ImageStageError, match="holds the upsampler, not the decoder"):
        train_decoder(out=str(out), init_from=str(exported / "upsampler"), **TINY)


def test_warm_start_without_source_is_a_fresh_run(tmp_path):
    model = torch.nn.Linear(2, 2)
    assert warm_start("decoder", model, None, tmp_path, False, print) is None


def test_cli_option(exported, tmp_path):
    from dalle2.cli import build_parser

    args = build_parser().parse_args(["train", "decoder", "--out", str(tmp_path), "--init-from", str(exported)])
    assert args.init_from == str(exported)


def test_lineage_lists_each_run_with_images_and_device(exported, tmp_path):
    """CPU and GPU minutes are never summed unsaid: every run that led to the weights is listed with its
    steps, images seen and what it ran on, also through a second warm start."""
    first = _fresh(tmp_path, "first")
    train_decoder(out=str(first), init_from=str(exported), max_steps=2, **TINY)
    second = _fresh(tmp_path, "second")
    report = train_decoder(out=str(second), init_from=str(first), max_steps=3, **TINY)
    runs = report["lineage"]["runs"]
    assert [r["steps"] for r in runs] == [4, 2, 3]
    assert [r["samples"] for r in runs] == [4 * 8, 2 * 8, 3 * 8]  # the tiny preset's batch of 8
    assert all(r["device"] == f"cpu ({torch.get_num_threads()} threads)" for r in runs)
    assert report["lineage"]["steps"] == 9 and report["train"]["samples_per_step"] == 8
    assert "runs" not in report["init_from"]  # listed once, in the lineage


def test_a_folder_from_before_runs_were_recorded_counts_as_one_run(exported, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    path = old / "decoder" / "report.json"
    report = json.loads(path.read_text())
    for key in ("samples_per_step", "device"):
        report["train"].pop(key)
    path.write_text(json.dumps(report))
    out = _fresh(tmp_path)
    report = train_decoder(out=str(out), init_from=str(old), max_steps=1, **TINY)
    assert report["lineage"]["runs"][0] == {"steps": 4, "training_minutes": report["init_from"]["training_minutes"]}


# -- --init-grow: a larger network from the saved one's weights ------------------------------------------

UNET = ["decoder.arch=unet", 'decoder.net={"channels": [8, 16], "attention": [false, true], "head_dim": 8}']
GROWN = ["decoder.arch=unet", 'decoder.net={"channels": [8, 16], "attention": [true, true], "head_dim": 8}']


@pytest.fixture(scope="module")
def small_unet(tmp_path_factory) -> Path:
    """A tiny pipeline whose decoder is a UNet with attention at its lower level only, trained 2 steps."""
    out = tmp_path_factory.mktemp("grow") / "unet"
    shutil.copytree(FIXTURE, out)
    train_decoder(out=str(out), overrides=[*UNET, "train.seed=1"], max_steps=2, **TINY)
    return out


def test_grown_network_starts_as_the_saved_one(small_unet, tmp_path):
    saved = ImageDiffusion.from_pretrained(small_unet / "decoder")
    config = saved.config.to_dict()
    config["net"]["attention"] = [True, True]
    torch.manual_seed(3)
    grown = ImageDiffusion(type(saved.config).from_dict(config))
    record = warm_start("decoder", grown, small_unet, tmp_path, False, lambda _: None, grow=True)
    assert record["grown"]["net"] == ["net.attention ([False, True] there, [True, True] here)"]
    new = [k for k in grown.state_dict() if k not in saved.state_dict()]
    assert new and all(".attns." in k for k in new)  # only the added attention blocks
    assert record["grown"]["new_tensors"] == len(new)
    assert record["grown"]["new_parameters"] == sum(grown.state_dict()[k].numel() for k in new)
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(grown.state_dict()[key], value.float())
    # the new attention blocks' output projections start at zero: the grown decoder computes what the saved one did
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([100, 700])
    cond = {"image_embed": torch.randn(2, 16, generator=g), "text_tokens": torch.randn(2, 5, 16, generator=g)}
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, **cond), saved.float()(x, t, **cond), atol=1e-5, rtol=1e-4)


def test_grow_end_to_end_trains_and_records(small_unet, tmp_path):
    out = _fresh(tmp_path)
    grow = {"init_from": str(small_unet), "init_grow": True, "overrides": GROWN}
    report = train_decoder(out=str(out), max_steps=2, **grow, **TINY)
    assert report["train"]["step"] == 2 and report["lineage"]["steps"] == 4
    assert report["init_from"]["grown"]["new_tensors"] > 0
    assert ImageDiffusion.from_pretrained(out / "decoder").config.to_dict()["net"]["attention"] == [True, True]
    record = json.loads((out / "training" / "decoder" / "init_from.json").read_text())
    assert record["grown"] == report["init_from"]["grown"]


def test_grow_refuses_a_network_the_saved_weights_do_not_fit(small_unet, tmp_path):
    out = _fresh(tmp_path)
    wider = ["decoder.arch=unet", 'decoder.net={"channels": [16, 16], "attention": [false, true], "head_dim": 8}']
    with pytest.raises(ImageStageError, match="no place of the same shape"):
        train_decoder(out=str(out), init_from=str(small_unet), init_grow=True, overrides=wider, **TINY)
    with pytest.raises(ImageStageError, match="--init-grow loads it into a larger network"):
        train_decoder(out=str(out), init_from=str(small_unet), overrides=GROWN, **TINY)  # without --init-grow
    with pytest.raises(ImageStageError, match=r"another network.*arch"):  # another arch is never grown into
        train_decoder(out=str(out), init_from=str(small_unet), init_grow=True, **TINY)
    assert not (out / "decoder").exists()  # nothing written


def test_init_grow_needs_init_from(tmp_path):
    out = _fresh(tmp_path)
    with pytest.raises(ImageStageError, match="--init-grow needs --init-from"):
        train_decoder(out=str(out), init_grow=True, **TINY)
    from dalle2.cli import build_parser

    args = build_parser().parse_args(["train", "decoder", "--out", str(tmp_path), "--init-from", "X", "--init-grow"])
    assert args.init_grow is True
