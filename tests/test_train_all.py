"""``dalle2 train all`` on the tiny preset: every stage in order from one shared YAML, a run killed in the
decoder and resumed without retraining CLIP or prior, refusal of a used folder, --steps-scale, the eval step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dalle2.cli import main
from dalle2.train_all import TrainAllError, run_eval, scaled_max_steps, stage_done, train_all
from dalle2.training.checkpoint import latest_checkpoint, step_of
from dalle2.training.trainer import Trainer

TINY = {"preset": "tiny", "data": "shapes", "log_with": None, "progress": False, "quiet": True}
# one YAML for every stage: each reads its own section and ignores the others'
SHARED_YAML = """\
train:
  checkpoint_every: 2
clip:
  eval_samples: 8
prior:
  pool_size: 32
  eval_samples: 8
  sample_steps: 3
decoder:
  eval_samples: 4
upsampler:
  eval_samples: 4
"""
STAGE_FILES = [Path(s) / f for s in ("clip", "prior") for f in ("model.safetensors", "report.json", "config.json")]


class Killed(Exception):
    """Stands in for the process dying right after a checkpoint was written."""


@pytest.fixture(scope="module")
def shared_yaml(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "all.yaml"
    path.write_text(SHARED_YAML)
    return str(path)


def _die_in_decoder_at_step_2(monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = Trainer._save

    def save_then_die(self: Trainer) -> Path:
        path = real_save(self)
        if self.stage_name == "decoder" and self.step == 2:
            raise Killed(f"killed after writing {path}")
        return path

    monkeypatch.setattr(Trainer, "_save", save_then_die)


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, shared_yaml):
    """Run 1 dies in the decoder right after its step-2 checkpoint; run 2 (--resume) finishes."""
    out = tmp_path_factory.mktemp("all") / "pipe"
    with pytest.MonkeyPatch.context() as dying:
        _die_in_decoder_at_step_2(dying)
        with pytest.raises(Killed):
            train_all(out=str(out), config=shared_yaml, skip_eval=True, **TINY)
    first = json.loads((out / "train_all.json").read_text())
    state = {
        "first": first,
        "mtimes": {f: (out / f).stat().st_mtime_ns for f in STAGE_FILES},
        "decoder_checkpoint": step_of(latest_checkpoint(out / "training" / "decoder" / "checkpoints")),
        "decoder_folder_after_kill": (out / "decoder").exists(),
    }
    summary = train_all(out=str(out), config=shared_yaml, skip_eval=True, resume=True, **TINY)
    return out, state, summary


def test_killed_run_records_what_finished(killed_then_resumed):
    _, state, _ = killed_then_resumed
    first = state["first"]
    assert [s["stage"] for s in first["stages"]] == ["tokenizer", "clip", "prior", "upsampler"]
    assert [s["status"] for s in first["stages"]] == ["trained", "trained", "trained", "trained"]
    assert first["failed"]["stage"] == "decoder" and "Killed" in first["failed"]["error"]
    assert state["decoder_checkpoint"] == 2 and not state["decoder_folder_after_kill"]


def test_resume_skips_finished_stages_and_continues_the_rest(killed_then_resumed):
    out, state, summary = killed_then_resumed
    for f, mtime in state["mtimes"].items():  # clip and prior were not retrained
        assert (out / f).stat().st_mtime_ns == mtime, f
    stages = {s["stage"]: s for s in summary["stages"]}
    assert [s["stage"] for s in summary["stages"]] == ["tokenizer", "clip", "prior", "upsampler", "decoder", "eval"]
    assert stages["tokenizer"]["status"] == "reused"
    assert stages["clip"]["status"] == stages["prior"]["status"] == "skipped"
    assert stages["decoder"]["status"] == "resumed" and stages["decoder"]["steps"] == 4
    decoder_report = json.loads((out / "decoder" / "report.json").read_text())
    assert decoder_report["train"]["steps_this_run"] == 2  # continued from the step-2 checkpoint
    assert stages["upsampler"]["status"] == "skipped" and stages["upsampler"]["steps"] == 4  # before the decoder
    assert stages["eval"]["status"] == "skipped"
    for name in ("clip", "prior", "decoder", "upsampler"):
        assert stage_done(out, name)
    index = json.loads((out / "model_index.json").read_text())
    assert set(index["components"]) == {"tokenizer", "clip", "prior", "decoder", "upsampler"}
    assert index["resolutions"] == [16, 32]
    assert json.loads((out / "train_all.json").read_text()) == summary
    assert "failed" not in summary


def test_headlines_and_shared_yaml_sections(killed_then_resumed):
    out, _, summary = killed_then_resumed
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["clip"]["headline"]["metric"] == "text->image R@1"
    assert stages["prior"]["headline"]["metric"] == "cos(prior z_i, true z_i)"
    assert stages["decoder"]["headline"]["metric"] == "cos(CLIP(decoded), z_i)"
    assert stages["upsampler"]["headline"]["metric"] == "PSNR dB"
    for name in ("clip", "prior", "decoder", "upsampler"):
        assert isinstance(stages[name]["headline"]["value"], float), name
    # every stage took its own section of the shared YAML
    assert json.loads((out / "clip" / "report.json").read_text())["samples"] == 8
    prior = json.loads((out / "prior" / "report.json").read_text())
    assert prior["pool_size"] == 32 and prior["sample_steps"] == 3
    assert json.loads((out / "decoder" / "report.json").read_text())["consistency"]["samples"] == 4
    assert json.loads((out / "upsampler" / "report.json").read_text())["quality"]["samples"] == 4


def test_eval_step_runs_quick_eval_on_the_folder(killed_then_resumed, monkeypatch):
    """The eval step calls ``evaluate_model(OUT, DATA, OUT/eval, quick=True)`` (stubbed: the real quick eval
    takes about 25 s even on the tiny pipeline) and reports its faithfulness; a later --resume skips it."""
    out, _, _ = killed_then_resumed
    from dalle2.eval import evaluate as E

    calls = []

    def fake_evaluate(model_dir, data, eval_out, quick=False, **kw):
        calls.append((Path(model_dir), data, Path(eval_out), quick))
        report = {"faithfulness": {"train": {"overall": 0.25}, "heldout": {"overall": 0.125}}}
        Path(eval_out).mkdir(parents=True, exist_ok=True)
        (Path(eval_out) / "eval.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(E, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(E, "markdown", lambda report: "")
    summary = train_all(out=str(out), resume=True, **TINY)
    assert calls == [(out, "shapes", out / "eval", True)]
    ev = summary["stages"][-1]
    assert ev["stage"] == "eval" and ev["status"] == "done"
    assert ev["headline"] == {"metric": "faithfulness (train prompts)", "value": 0.25, "heldout": 0.125}
    again = train_all(out=str(out), resume=True, **TINY)
    assert len(calls) == 1 and again["stages"][-1]["status"] == "skipped"
    assert again["stages"][-1]["headline"]["value"] == 0.25


def test_eval_skipped_without_evaluators(tmp_path, capsys):
    messages = []
    assert run_eval(tmp_path, "folder:/nowhere", messages.append) is None
    assert run_eval(tmp_path, "webdataset:x.tar", messages.append) is None
    assert all(m.startswith("eval: skipped") for m in messages) and len(messages) == 2


def test_used_folder_needs_resume(tmp_path):
    out = tmp_path / "pipe"
    (out / "training" / "prior").mkdir(parents=True)
    with pytest.raises(TrainAllError, match=r"already holds prior; pass --resume .* or choose a new --out"):
        train_all(out=str(out), **TINY)
    # a folder holding only a tokenizer is not refused (the CLIP stage reuses it); bad options fail early
    with pytest.raises(TrainAllError, match="--steps-scale must be a number > 0"):
        train_all(out=str(tmp_path / "new"), steps_scale=0, **TINY)
    with pytest.raises(ValueError, match="unknown preset"):
        train_all(out=str(tmp_path / "new"), **{**TINY, "preset": "huge"})
    # a bad key in a later stage's section fails before the first stage trains
    with pytest.raises(ValueError, match="unknown key decoder.bogus"):
        train_all(out=str(tmp_path / "new"), overrides=["decoder.bogus=1"], **TINY)
    with pytest.raises(ValueError, match="unknown key prior.bogus"):
        train_all(out=str(tmp_path / "new"), overrides=["prior.bogus=1"], **TINY)
    with pytest.raises(ValueError, match="unknown config section 'decodr'"):
        train_all(out=str(tmp_path / "new"), overrides=["decodr.eval_samples=1"], **TINY)
    assert not (tmp_path / "new").exists()


def test_cli_refuses_used_folder(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    code = main(["train", "all", "--out", str(tmp_path), "--preset", "tiny", "--no-progress", "--skip-eval"])
    assert code == 2
    assert "pass --resume" in capsys.readouterr().err


def test_steps_scale(tmp_path):
    assert scaled_max_steps("decoder", "tiny", None, [], 1.0) == 4  # the stage preset's
    assert scaled_max_steps("decoder", "tiny", None, [], 0.5) == 2
    from dalle2.presets import STAGE_PRESETS

    assert scaled_max_steps("clip", "cpu", None, [], 2.0) == 2 * STAGE_PRESETS["clip"]["cpu"]["train"]["max_steps"]
    assert scaled_max_steps("prior", "cpu", None, [], 0.1) == 60
    assert scaled_max_steps("upsampler", "tiny", None, [], 0.01) == 1  # at least one step
    # the base is the resolved value: --set / --config win over the preset
    assert scaled_max_steps("prior", "tiny", None, ["train.max_steps=10"], 0.5) == 5
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 30\ndecoder:\n  eval_samples: 2\nclip:\n  embed_dim: 8\n")
    assert scaled_max_steps("decoder", "tiny", str(cfg), [], 0.5) == 15


def test_cli_parses_options():
    from dalle2.cli import build_parser

    args = build_parser().parse_args(
        ["train", "all", "--out", "D", "--steps-scale", "0.25", "--resume", "--skip-eval", "--max-minutes", "5"]
    )
    assert args.steps_scale == 0.25 and args.resume and args.skip_eval and args.max_minutes == 5
    assert args.preset == "cpu" and args.progress and callable(args.func)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "all", "--out", "D", "--steps-scale", "0"])


def test_train_all_and_generate_on_fashion_mnist(tmp_path):
    """The whole unCLIP chain on a (tiny, written here) Fashion-MNIST folder: grayscale data, RGB images out,
    the base and output resolutions of the tiny preset, and different prompts giving different images."""
    import numpy as np

    import dalle2
    from tests.test_idx import make_split

    root = tmp_path / "fmnist"
    root.mkdir()
    make_split(root, 40, "train", gz=True, seed=0)
    make_split(root, 10, "t10k", gz=False, seed=1)
    out = tmp_path / "pipe"
    summary = train_all(out=str(out), skip_eval=True, **{**TINY, "data": f"fashion-mnist:{root}"})
    assert [(s["stage"], s["status"]) for s in summary["stages"]][1:] == [
        ("clip", "trained"), ("prior", "trained"), ("upsampler", "trained"), ("decoder", "trained"), ("eval", "skipped")
    ]  # fmt: skip
    pipe = dalle2.load(out)
    assert pipe.resolutions == [16, 32]
    boots, shirts = pipe(["an ankle boot", "a t-shirt"], n=1, seed=0)
    assert boots.size == shirts.size == (32, 32) and boots.mode == "RGB"
    assert not np.array_equal(np.asarray(boots), np.asarray(shirts))
    again = pipe(["an ankle boot", "a t-shirt"], n=1, seed=0)[0]
    assert np.array_equal(np.asarray(again), np.asarray(boots))  # reproducible from the seed


# -- --minutes: a time budget that sizes the decoder ----------------------------------------------------

COST = {"seconds_per_step": 0.5, "checkpoint_seconds": 1.0, "checkpoint_every": 10, "fixed_seconds": 2.0}


def test_budget_steps_counts_steps_checkpoints_and_fixed_costs():
    from dalle2.train_all import BUDGET_RESERVE, budget_steps

    assert BUDGET_RESERVE == 0.02
    # 0.5 s a step plus a 1 s checkpoint every 10 steps: 0.6 s a step; 2 s of setup and report once:
    # (100 - 2) * 0.98 / 0.6 = 160.07
    assert budget_steps(100.0, COST) == 160
    assert budget_steps(2.5, COST) == 0 and budget_steps(-30.0, COST) == 0
    assert budget_steps(600.0, {**COST, "checkpoint_seconds": 0.0}) == 1172  # 598 * 0.98 / 0.5 = 1172.08
    with pytest.raises(TrainAllError, match="cannot size"):
        budget_steps(60.0, {**COST, "seconds_per_step": 0.0, "checkpoint_seconds": 0.0})
    with pytest.raises(TrainAllError, match="cannot size"):
        budget_steps(float("nan"), COST)


def _slow_probe(calls: list[dict]):
    """A stand-in for the throughput probe that reports a slow machine (0.5 s a step), so that the budget
    buys few steps and the test does not depend on this machine's speed."""

    def probe(opts, **kwargs):
        calls.append(dict(opts))
        return {**COST, "images_per_second": 16.0, "seconds": 0.1}

    return probe


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """``train all --minutes 0.5`` (on a machine the probe calls slow) killed in the decoder at step 2, a copy
    of that folder, then the original resumed with the same budget."""
    from dalle2.stages import image_stage

    out = tmp_path_factory.mktemp("budget") / "pipe"
    calls: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_stage, "decoder_throughput", _slow_probe(calls))
        with pytest.MonkeyPatch.context() as dying:
            _die_in_decoder_at_step_2(dying)
            with pytest.raises(Killed):
                train_all(out=str(out), minutes=0.5, skip_eval=True, **TINY)
        first = json.loads((out / "train_all.json").read_text())
        killed = out.parent / "killed"
        shutil.copytree(out, killed)
        summary = train_all(out=str(out), minutes=0.5, skip_eval=True, resume=True, **TINY)
    return {"first": first, "summary": summary, "calls": calls, "killed": killed, "out": out}


def test_minutes_sizes_the_decoder_and_records_it(budgeted):
    from dalle2.train_all import budget_steps

    first = budgeted["first"]
    budget = first["budget"]
    assert [s["stage"] for s in first["stages"]] == ["tokenizer", "clip", "prior", "upsampler"]
    assert first["failed"]["stage"] == "decoder"
    assert budget["minutes"] == 0.5 and 0 < budget["minutes_left"] < 0.5
    steps = budget["decoder_steps"]
    assert abs(steps - budget_steps(budget["minutes_left"] * 60, COST)) <= 1  # minutes_left is rounded there
    assert steps > 4  # more than the tiny preset's own 4 steps
    assert budgeted["calls"][0]["max_minutes"] is None  # the probe ran with the user's options


def test_minutes_resume_keeps_the_sized_schedule(budgeted):
    """The killed run resumes the schedule it was sized to, without measuring again."""
    summary, sized = budgeted["summary"], budgeted["first"]["budget"]["decoder_steps"]
    assert len(budgeted["calls"]) == 1  # measured once, in the first run
    assert summary["budget"]["decoder_steps"] == sized and summary["budget"]["resumed"] is True
    decoder = {s["stage"]: s for s in summary["stages"]}["decoder"]
    assert decoder["status"] == "resumed" and decoder["steps"] == sized
    assert decoder["stop_reason"] == "max_steps reached"
    assert json.loads((budgeted["out"] / "train_all.json").read_text())["budget"] == summary["budget"]


def test_minutes_refusals_are_one_clear_line(budgeted, tmp_path, monkeypatch):
    from dalle2.stages import image_stage

    monkeypatch.setattr(image_stage, "decoder_throughput", _slow_probe([]))
    # a decoder checkpoint whose run was not sized by a budget is not resized
    unsized = tmp_path / "unsized"
    shutil.copytree(budgeted["killed"], unsized)
    record = json.loads((unsized / "train_all.json").read_text())
    del record["budget"]
    (unsized / "train_all.json").write_text(json.dumps(record))
    with pytest.raises(TrainAllError, match="not sized by a time budget"):
        train_all(out=str(unsized), minutes=0.5, skip_eval=True, resume=True, **TINY)
    # a budget spent before the decoder: what finished is kept, so a --resume with more minutes goes on
    spent = tmp_path / "spent"
    shutil.copytree(budgeted["killed"], spent)
    shutil.rmtree(spent / "training" / "decoder")
    with pytest.raises(TrainAllError, match="leaves no time for a decoder step"):
        train_all(out=str(spent), minutes=0.01, skip_eval=True, resume=True, **TINY)
    assert stage_done(spent, "upsampler")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(TrainAllError, match="--minutes must be"):
            train_all(out=str(tmp_path / "b"), minutes=bad, **TINY)
    assert not (tmp_path / "b").exists()
