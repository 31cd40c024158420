"""``dalle2 train all``: every unCLIP stage into one pipeline folder, in order, resumable, then a quick eval.

Order: tokenizer (trained by the CLIP stage when ``OUT/tokenizer`` is missing), CLIP
(:func:`~dalle2.stages.clip_stage.train_clip`), prior (:func:`~dalle2.stages.prior_stage.train_prior`),
upsampler and decoder (:mod:`dalle2.stages.image_stage`; the upsampler trains on real images only, so it
goes first), then ``dalle2 eval OUT --data DATA --quick --out OUT/eval`` for the datasets that have
evaluator networks (shapes, fashion-mnist); other datasets skip it with a message, and ``--skip-eval``
skips it always.

Time budget (``--minutes M``): the training stages end within M minutes of the start (the eval is not
counted). The stages before the decoder train their steps; then the decoder's training speed is measured
on this machine (:func:`~dalle2.stages.image_stage.decoder_throughput`, about a minute, counted) and
its ``train.max_steps`` set to the steps that fit in what is left (:func:`budget_steps`, a few percent kept
for previews, checkpoints and the report; its time is also capped there). This replaces the decoder's
preset steps, which are sized for an hour on a slow laptop, and gives a faster machine's hour to the stage
whose training time buys the most. The sizing is recorded in ``train_all.json`` (``budget``), and a
``--resume`` of a decoder cut short keeps the schedule it was sized to.

Every stage gets the same options: ``--data``, ``--preset``, ``--config`` (one YAML may hold the sections
of several stages, ``clip:``, ``prior:``, ``decoder:``, ``upsampler:``, beside the shared ``train:`` and
``data:``; each stage reads its own and ignores the others'), ``--set``, ``--max-minutes`` (a cap on
*each* stage's training time) and ``--no-progress``. ``--steps-scale F`` multiplies every stage's
``train.max_steps`` (its preset's, or the value ``--config`` / ``--set`` give) by F, rounded, at least 1:
``--steps-scale 0.1`` is a quick end-to-end run, ``2`` trains everything twice as long.

Resume (``--resume``): a stage whose folder (``OUT/clip``, ``OUT/prior``, ...) holds ``model.safetensors``
and ``report.json`` is finished and skipped; any other stage is run with ``resume=True``, so one with
checkpoints under ``OUT/training/<stage>`` continues from the latest, and one without starts afresh. A
finished eval (``OUT/eval/eval.json``) is skipped too. A stage stopped by ``--max-minutes`` wrote its folder
and report, so it counts as finished (the later stages were trained on it); to train it longer, run
``dalle2 train <stage> --resume`` and then retrain the stages after it. Without ``--resume``, a folder that
already holds a stage is refused (pass ``--resume``, or choose a new folder); a folder holding only a
tokenizer is fine.

At the end: a summary of each stage's wall time and headline number (CLIP text->image R@1, prior
cosine, decoder consistency, upsampler PSNR, eval faithfulness or class accuracy), also written to
``OUT/train_all.json`` (after every stage, so an interrupted run leaves a partial record).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dalle2.errors import Dalle2Error, InvalidConfigError
from dalle2.stages.common import printer, stage_options

__all__ = ["STAGES", "TrainAllError", "budget_steps", "stage_done", "train_all"]

# the upsampler trains on real images only, so it goes before the decoder: under --minutes the decoder, whose
# training time buys the most (docs/results.md, "Quality against training time"), gets all that is left
STAGES = ("clip", "prior", "upsampler", "decoder")
SUMMARY_FILE = "train_all.json"


class TrainAllError(Dalle2Error):
    """``dalle2 train all`` cannot start (or continue); the message says what to do."""


def stage_done(out: Path, stage: str) -> bool:
    """A stage is finished when its folder holds the exported weights and the report written after them."""
    return (out / stage / "model.safetensors").is_file() and (out / stage / "report.json").is_file()


def _started(out: Path, stage: str) -> bool:
    return (out / stage).exists() or (out / "training" / stage).exists()


def _has_checkpoint(out: Path, stage: str) -> bool:
    from dalle2.training.checkpoint import latest_checkpoint

    return latest_checkpoint(out / "training" / stage / "checkpoints") is not None


def scaled_max_steps(stage: str, preset: str, config: str | None, sets: list[str], scale: float) -> int:
    """The stage's resolved ``train.max_steps`` (preset < YAML < --set), times ``scale``, at least 1."""
    from dalle2.config import resolve_stage

    base = resolve_stage(stage, preset, config, sets)[0].train.max_steps
    return max(1, int(round(base * scale)))


#: share of the decoder's time kept back beyond what the throughput probe measured (timing noise)
BUDGET_RESERVE = 0.02


def budget_steps(seconds_left: float, cost: dict[str, float]) -> int:
    """The decoder steps that fit in ``seconds_left``, from the costs
    :func:`~dalle2.stages.image_stage.decoder_throughput` measured: each step, a checkpoint with its preview
    every ``checkpoint_every`` steps, and the setup and report once; :data:`BUDGET_RESERVE` of the time kept
    back. 0 when not even one step fits."""
    per_step = cost["seconds_per_step"] + cost["checkpoint_seconds"] / max(1, int(cost["checkpoint_every"]))
    if not (math.isfinite(seconds_left) and math.isfinite(per_step)) or per_step <= 0:
        raise TrainAllError(f"cannot size the decoder: {seconds_left} s left at {per_step} s per step")
    usable = (seconds_left - cost["fixed_seconds"]) * (1 - BUDGET_RESERVE)
    return max(0, int(usable // per_step))


def validate_sections(preset: str, config: str | None, sets: list[str], data: str | None) -> dict[str, Any]:
    """Resolve every stage's configuration now, so that a typo in the decoder's section fails before the
    CLIP has trained for an hour (network sizes that depend on the CLIP are checked by the stage itself).
    Returns ``{stage: (Config, section, stage keys)}``."""
    from dalle2.config import resolve_stage

    return {stage: resolve_stage(stage, preset, config, sets, {"data": data}) for stage in STAGES}


# -- headline numbers ----------------------------------------------------------------------------------


def headline(stage: str, report: dict[str, Any]) -> dict[str, Any]:
    """The one number a stage's report is judged by, with its reference point."""
    try:
        if stage == "clip":
            r = report["retrieval"]
            return {"metric": "text->image R@1", "value": r["text_to_image_r1"], "chance": r["chance_r1"]}
        if stage == "prior":
            c = report["cosine"]
            return {"metric": "cos(prior z_i, true z_i)", "value": c["prior"], "text_baseline": c["text_baseline"]}
        if stage == "decoder":
            c = report["consistency"]
            return {
                "metric": "cos(CLIP(decoded), z_i)",
                "value": c["decoded_vs_source"],
                "unrelated_pairs": c["unrelated_pairs"],
            }
        if stage == "upsampler":
            q = report["quality"]
            return {"metric": "PSNR dB", "value": q["psnr_upsampler"], "bicubic": q["psnr_bicubic"]}
        if stage == "eval":
            if "faithfulness" in report:
                f = report["faithfulness"]
                return {
                    "metric": "faithfulness (train prompts)",
                    "value": f.get("train", {}).get("overall"),
                    "heldout": f.get("heldout", {}).get("overall"),
                }
            if "class_accuracy" in report:
                c = report["class_accuracy"]
                return {"metric": "class accuracy", "value": c["accuracy"], "real": c["real_accuracy"]}
    except (KeyError, TypeError):
        pass
    return {"metric": "n/a", "value": None}


def _format_headline(h: dict[str, Any]) -> str:
    if h.get("value") is None:
        return h.get("metric", "")

    def num(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    extra = ", ".join(f"{k.replace('_', ' ')} {num(v)}" for k, v in h.items() if k not in ("metric", "value"))
    return f"{h['metric']} {num(h['value'])}" + (f" ({extra})" if extra else "")


# -- eval ----------------------------------------------------------------------------------------------


def run_eval(out: Path, data: str, log: Callable[[str], None], progress: bool = True) -> dict[str, Any] | None:
    """``dalle2 eval OUT --data DATA --quick --out OUT/eval``; None (with a message) when the dataset has no
    evaluator networks."""
    from dalle2.eval import evaluate as E
    from dalle2.eval.networks import EvaluatorError

    try:
        E.evaluators_available(data)
    except (E.EvalError, EvaluatorError) as error:
        log(f"eval: skipped ({error})")
        return None
    log(f"eval: dalle2 eval {out} --data {data} --quick --out {out / 'eval'}")
    report = E.evaluate_model(out, data, out / "eval", quick=True, progress=progress)
    log(E.markdown(report))
    return report


# -- the command ---------------------------------------------------------------------------------------


def _stage_functions() -> dict[str, Callable[..., dict[str, Any]]]:
    from dalle2.stages.clip_stage import train_clip
    from dalle2.stages.image_stage import train_decoder, train_upsampler
    from dalle2.stages.prior_stage import train_prior

    return {"clip": train_clip, "prior": train_prior, "decoder": train_decoder, "upsampler": train_upsampler}


def _write_summary(out: Path, summary: dict[str, Any]) -> Path:
    from dalle2.folder_format import write_json_atomic

    return write_json_atomic(out / SUMMARY_FILE, summary)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"train all: {summary['out']} ({summary['preset']} preset, data {summary['data']})"]
    for s in summary["stages"]:
        took = f"{s['wall_seconds']:8.1f} s" if s["status"] in ("trained", "resumed", "done") else " " * 10
        lines.append(f"  {s['stage']:<10} {s['status']:<8} {took}  {_format_headline(s.get('headline', {}))}")
    lines.append(f"  {'total':<10} {'':<8} {summary['wall_seconds']:8.1f} s")
    return "\n".join(lines)


def _resume_advice(out: Path, stage: str, error: BaseException, finished: list[str]) -> str | None:
    """What ``--resume`` would do after ``stage`` failed: continue from its checkpoint, only keep the finished
    stages (no checkpoint of this one yet), or nothing worth saying (a bad config or dataset, nothing done)."""
    from dalle2.data.base import DatasetError
    from dalle2.text_input import TextError

    if isinstance(error, InvalidConfigError | DatasetError | TextError):  # the input must change first
        return None
    if _has_checkpoint(out, stage):
        return (
            f"train all: the {stage} stage stopped; rerun with --resume to continue from its last checkpoint "
            "(finished stages are kept)"
        )
    done = [name for name in finished if name not in ("tokenizer", stage)]
    if done:
        return (
            f"train all: the {stage} stage stopped before its first checkpoint; rerun with --resume to keep the "
            f"finished stages ({', '.join(done)}); the {stage} stage starts over"
        )
    return None


def _read_summary(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _main_process_decides(left: float, cost: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Under several processes (``accelerate launch``), the main process's time left and measured costs, so
    that every process trains the same number of steps; unchanged in a single process."""
    from accelerate.state import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return left, cost
    import torch
    from accelerate.utils import broadcast

    keys = sorted(cost)
    values = broadcast(torch.tensor([left, *(float(cost[k]) for k in keys)], dtype=torch.float64, device=state.device))
    return float(values[0]), {k: float(v) for k, v in zip(keys, values[1:].tolist(), strict=True)}


def _fill_budget(
    opts: dict[str, Any],
    summary: dict[str, Any],
    previous: dict[str, Any],
    continuing: bool,
    start: float,
    batch: int,
    log: Callable[[str], None],
) -> int:
    """``--minutes``: the decoder's ``train.max_steps`` that ends the training stages within the budget, from
    the decoder's throughput measured here (:func:`~dalle2.stages.image_stage.decoder_throughput`); its time is
    also capped at what is left. A resumed decoder keeps the schedule its run was sized to (``train_all.json``).
    Records the sizing in ``summary["budget"]``."""
    from dalle2.stages.image_stage import decoder_throughput

    record = summary["budget"]
    earlier = previous.get("budget") or {}
    if continuing and earlier.get("decoder_steps"):
        record.update({k: v for k, v in earlier.items() if k != "minutes"}, resumed=True)
        log(f"== decoder: --minutes: resuming the schedule its run was sized to ({earlier['decoder_steps']} steps)")
        return int(earlier["decoder_steps"])
    if continuing:
        raise TrainAllError(
            "--minutes: the decoder's checkpoint was not sized by a time budget (no record in "
            f"{SUMMARY_FILE}); resume it without --minutes"
        )
    minutes = record["minutes"]
    log(f"== decoder: measuring its training speed to fill the {minutes:g}-minute budget")
    cost = decoder_throughput(opts, progress=False)
    left = minutes * 60 - (time.monotonic() - start)
    left, cost = _main_process_decides(left, cost)
    steps = budget_steps(left, cost)
    record.update(
        decoder_cost={k: v for k, v in cost.items() if k != "seconds"},
        probe_seconds=cost["seconds"],
        minutes_left=round(left / 60, 2),
        decoder_steps=steps,
    )
    rate = cost["images_per_second"]
    if steps < 1:
        raise TrainAllError(
            f"--minutes {minutes:g}: the stages before the decoder used {(minutes * 60 - left) / 60:.1f} min, which "
            f"leaves no time for a decoder step ({rate:.1f} images/s); give more minutes, or shrink the other "
            "stages (--steps-scale)"
        )
    cap = opts.get("max_minutes")
    opts["max_minutes"] = round(min(float(cap), left / 60) if cap else left / 60, 2)
    log(
        f"== decoder: {steps:,} steps of {batch} fill the {left / 60:.1f} min left at {rate:.1f} images/s, with a "
        f"checkpoint and preview every {cost['checkpoint_every']} steps, setup and report "
        f"(measured in {cost['seconds']:.0f} s)"
    )
    return steps


def train_all(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run every stage (see the module docstring); returns the summary (also ``OUT/train_all.json``).

    Keys: ``out`` (required), ``data``, ``preset`` ("cpu"), ``config``, ``overrides`` (``--set`` list),
    ``resume``, ``minutes`` (a budget for all the training), ``max_minutes`` (per stage), ``steps_scale`` (1.0),
    ``skip_eval``, ``log_with``,
    ``progress``, ``quiet``.
    """
    from dalle2.config import load_config

    opts = stage_options(args, kwargs)
    if not opts.get("out"):
        raise TrainAllError("train all needs the pipeline folder to write (--out DIR)")
    out = Path(opts["out"])
    log = printer(bool(opts.get("quiet")))
    preset = opts.get("preset") or "cpu"
    sets = list(opts.get("overrides") or opts.get("set") or [])
    resume = bool(opts.get("resume"))
    scale = float(opts.get("steps_scale") if opts.get("steps_scale") is not None else 1.0)
    if not (math.isfinite(scale) and scale > 0):
        raise TrainAllError(f"--steps-scale must be a number > 0, got {scale}")
    budget = opts.get("minutes")
    if budget is not None and not (math.isfinite(float(budget)) and float(budget) > 0):
        raise TrainAllError(f"--minutes must be a number > 0, got {budget}")
    load_config(preset)  # an unknown preset fails here, before anything is written

    started = [s for s in STAGES if _started(out, s)]
    if started and not resume:
        raise TrainAllError(
            f"{out} already holds {', '.join(started)}; pass --resume to continue it (finished stages are "
            "skipped, unfinished ones resume from their checkpoints), or choose a new --out folder"
        )

    base = {
        "out": str(out),
        "preset": preset,
        "config": opts.get("config"),
        "overrides": sets,
        "data": opts.get("data"),
        "max_minutes": opts.get("max_minutes"),
        "log_with": opts.get("log_with", ("tensorboard",)),
        "progress": bool(opts.get("progress", True)),
        "quiet": bool(opts.get("quiet")),
        "resume": resume,
    }
    # resolve every stage's configuration and step count up front: a bad --config / --set fails at once
    resolved = validate_sections(preset, opts.get("config"), sets, opts.get("data"))
    max_steps: dict[str, int | None] = {s: None for s in STAGES}
    if scale != 1.0:
        for stage in STAGES:
            max_steps[stage] = scaled_max_steps(stage, preset, opts.get("config"), sets, scale)

    previous = _read_summary(out) if resume and budget is not None else {}  # only --minutes reads it
    summary: dict[str, Any] = {
        "out": str(out),
        "preset": preset,
        "data": resolved["clip"][0].data.dataset,
        "steps_scale": scale,
        "stages": [],
        "wall_seconds": 0.0,
    }
    if budget is not None:
        summary["budget"] = {"minutes": float(budget)}
    functions = _stage_functions()
    start = time.monotonic()
    dataset = summary["data"]

    def record(entry: dict[str, Any]) -> None:
        summary["stages"].append(entry)
        summary["wall_seconds"] = round(time.monotonic() - start, 1)
        _write_summary(out, summary)

    tokenizer = out / "tokenizer" / "tokenizer.json"
    tokenizer_entry = {
        "stage": "tokenizer",
        "status": "reused" if tokenizer.is_file() else "trained",
        "wall_seconds": 0.0,  # part of the clip stage's time
        "headline": {"metric": f"{tokenizer}" + ("" if tokenizer.is_file() else " (trained by the clip stage)")},
    }
    for stage in STAGES:
        if resume and stage_done(out, stage):
            report = json.loads((out / stage / "report.json").read_text())
            log(f"== {stage}: already trained ({out / stage}), skipped")
            entry = {"stage": stage, "status": "skipped", "wall_seconds": 0.0, "headline": headline(stage, report)}
            if report.get("train", {}).get("step") is not None:
                entry["steps"] = report["train"]["step"]
            dataset = report.get("dataset", dataset)
            if stage == "clip":
                summary["stages"].append(tokenizer_entry)
            record(entry)
            continue
        continuing = resume and _has_checkpoint(out, stage)
        stage_opts = dict(base)
        if stage == "decoder" and budget is not None:
            max_steps[stage] = _fill_budget(
                stage_opts, summary, previous, continuing, start, resolved["decoder"][0].train.batch_size, log
            )
        what = "resuming from its last checkpoint" if continuing else "training"
        steps = f", max_steps {max_steps[stage]}" if max_steps[stage] is not None else ""
        log(f"== {stage}: {what}{steps}")
        stage_start = time.monotonic()
        try:
            report = functions[stage](stage_opts, max_steps=max_steps[stage])
        except (Exception, KeyboardInterrupt) as error:
            summary["failed"] = {"stage": stage, "error": f"{type(error).__name__}: {error}"}
            summary["wall_seconds"] = round(time.monotonic() - start, 1)
            _write_summary(out, summary)
            advice = _resume_advice(out, stage, error, [e["stage"] for e in summary["stages"]])
            if advice:
                print(advice, file=sys.stderr, flush=True)
            raise
        entry = {
            "stage": stage,
            "status": "resumed" if continuing else "trained",
            "wall_seconds": round(time.monotonic() - stage_start, 1),
            "headline": headline(stage, report),
            "steps": report.get("train", {}).get("step"),
            "stop_reason": report.get("train", {}).get("stop_reason"),
        }
        dataset = report.get("dataset", dataset)
        if stage == "clip":
            summary["stages"].append(tokenizer_entry)
        record(entry)
    summary["data"] = dataset

    eval_file = out / "eval" / "eval.json"
    if opts.get("skip_eval"):
        log("== eval: skipped (--skip-eval)")
        record({"stage": "eval", "status": "skipped", "wall_seconds": 0.0, "headline": {"metric": "--skip-eval"}})
    elif resume and eval_file.is_file():
        log(f"== eval: already done ({eval_file}), skipped")
        report = json.loads(eval_file.read_text())
        record({"stage": "eval", "status": "skipped", "wall_seconds": 0.0, "headline": headline("eval", report)})
    else:
        log("== eval")
        eval_start = time.monotonic()
        report = run_eval(out, dataset, log, progress=bool(opts.get("progress", True)))
        if report is None:
            h = {"metric": f"no evaluator networks for {dataset!r}"}
            record({"stage": "eval", "status": "skipped", "wall_seconds": 0.0, "headline": h})
        else:
            wall = round(time.monotonic() - eval_start, 1)
            record({"stage": "eval", "status": "done", "wall_seconds": wall, "headline": headline("eval", report)})
    summary["wall_seconds"] = round(time.monotonic() - start, 1)
    path = _write_summary(out, summary)
    log(format_summary(summary))
    log(f"wrote {path}")
    return summary
