"""Quality against training time: faithfulness (or class accuracy) and FD after each saved checkpoint.

    python benchmarks/quality_vs_time.py shapes:unclip=runs/shapes shapes:gan=runs/gan-shapes \\
        fashion-mnist:gan=runs/gan-fashion [--points 4] [--threads 2]

Each ``DATA:LABEL=DIR`` is a pipeline folder trained with ``train.keep_checkpoints=0`` (every checkpoint
kept), so its training history is on disk. The curve follows one stage: the GAN itself for a GAN folder,
the decoder for an unCLIP folder (CLIP, prior and upsampler stay the finished ones). For each of
``--points`` checkpoints spread over the run (the last one always included), a copy of the folder gets that
checkpoint's EMA weights in place of the stage's shipped weights and is scored by ``dalle2 eval --quick``
on ``DATA``.

Training minutes of a point: the stage's wall-clock time at that checkpoint (its ``state.json``; resumed
runs counted in full) plus the finished training time of every other component the folder trained
(their ``report.json``; a copied ``--clip-from`` CLIP counts zero, as in ``gan_vs_unclip.py``).

Writes ``OUT/quality_vs_time.{json,md,png}`` (default OUT: ``benchmarks/results``) and each point's eval
folder under ``--evals`` (default ``runs/quality_vs_time``). ``--reuse`` takes the scores already there
(when written after the checkpoint) instead of sampling again, e.g. after adding a model to the command.
The plot needs matplotlib (``pip install 'dalle2[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_vs_unclip import parse_models, training_minutes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def curve_stage(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    return "gan" if index.get("kind") == "gan" else "decoder"


def checkpoints(folder: Path, stage: str, points: int) -> list[Path]:
    """``points`` checkpoints of ``stage`` spread evenly over the run, always with the last one."""
    found = sorted((folder / "training" / stage / "checkpoints").glob("step_*"))
    found = [p for p in found if (p / "ema.safetensors").is_file() and (p / "state.json").is_file()]
    if not found:
        raise SystemExit(f"{folder}: no {stage} checkpoints under training/{stage}/checkpoints")
    if len(found) <= points:
        return found
    picks = {round(i * (len(found) - 1) / (points - 1)) for i in range(points)} if points > 1 else {len(found) - 1}
    return [found[i] for i in sorted(picks)]


def stage_seconds(checkpoint: Path, final_seconds: float | None, final_step: int | None) -> float:
    state = json.loads((checkpoint / "state.json").read_text())
    if "wall_seconds_total" in state:
        return float(state["wall_seconds_total"])
    if final_seconds is None or not final_step:  # checkpoints written before the total was recorded
        raise SystemExit(f"{checkpoint}: state.json records no wall_seconds_total and the stage report no time")
    return final_seconds * int(state["step"]) / final_step


def variant(folder: Path, stage: str, checkpoint: Path, dest: Path) -> Path:
    """A copy of the pipeline folder whose ``stage`` weights are the checkpoint's EMA weights."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name == "training":
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)
    shutil.copy2(checkpoint / "ema.safetensors", dest / stage / "model.safetensors")
    return dest


def quality(report: dict[str, Any]) -> dict[str, Any]:
    fid = report["fidelity"]
    out = {"fd": fid["fd"], "fd_floor": fid["fd_floor"], "precision": fid["precision"], "recall": fid["recall"]}
    if "faithfulness" in report:
        out["faithfulness_train"] = report["faithfulness"]["train"]["overall"]
        out["faithfulness_heldout"] = report["faithfulness"]["heldout"]["overall"]
    if "class_accuracy" in report:
        out["class_accuracy"] = report["class_accuracy"]["accuracy"]
    return out


def markdown(rows: list[dict[str, Any]], command: str, threads: int) -> str:
    lines = [
        "# Quality against training time",
        "",
        f"`{command}` (`dalle2 eval --quick` size, {threads} torch thread(s); minutes: all training of the "
        "pipeline up to that checkpoint)",
        "",
        "| data | model | stage step | training minutes | faithfulness (train / held-out) or class accuracy "
        "| FD (floor) | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "faithfulness_train" in r:
            q = f"{r['faithfulness_train']:.3f} / {r['faithfulness_heldout']:.3f}"
        else:
            q = f"{r.get('class_accuracy', float('nan')):.3f}"
        lines.append(
            f"| {r['data']} | {r['model']} | {r['stage']} {r['step']} | {r['minutes']:.1f} | {q} "
            f"| {r['fd']:.2f} ({r['fd_floor']:.2f}) | {r['precision']:.3f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.2 * len(datasets), 6.4), squeeze=False)
    for col, data in enumerate(datasets):
        mine = [r for r in rows if r["data"] == data]
        for label in dict.fromkeys(r["model"] for r in mine):
            pts = [r for r in mine if r["model"] == label]
            minutes = [r["minutes"] for r in pts]
            if "faithfulness_train" in pts[0]:
                axes[0][col].plot(minutes, [r["faithfulness_train"] for r in pts], "o-", label=f"{label} (train)")
                axes[0][col].plot(minutes, [r["faithfulness_heldout"] for r in pts], "s--", label=f"{label} (held-out)")
                axes[0][col].set_ylabel("faithfulness")
            else:
                axes[0][col].plot(minutes, [r["class_accuracy"] for r in pts], "o-", label=label)
                axes[0][col].set_ylabel("class accuracy")
            axes[1][col].plot(minutes, [r["fd"] for r in pts], "o-", label=label)
            axes[1][col].axhline(pts[0]["fd_floor"], color="gray", lw=0.8, ls=":")
        axes[0][col].set_title(data)
        axes[0][col].set_ylim(0, 1)
        axes[1][col].set_yscale("log")
        axes[1][col].set_ylabel("FD (dotted: real-vs-real floor)")
        axes[1][col].set_xlabel("training minutes (2 CPU cores)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="DATA:LABEL=DIR")
    parser.add_argument("--points", type=int, default=4, help="checkpoints per curve (default: 4)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--evals", default="runs/quality_vs_time")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a point's scores from EVALS when an earlier run wrote them after its checkpoint",
    )
    args = parser.parse_args()
    if args.points < 1:
        parser.error("--points must be >= 1")
    specs = parse_models(parser, args.models)

    import torch

    from dalle2.eval.evaluate import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data, label, folder in specs:
        stage = curve_stage(folder)
        report = json.loads((folder / stage / "report.json").read_text())
        train = report.get("train") or {}
        final_seconds = train.get("total_wall_seconds", train.get("wall_seconds"))
        others = max(0.0, (training_minutes(folder) or 0.0) - float(final_seconds or 0.0) / 60)
        for checkpoint in checkpoints(folder, stage, args.points):
            start = time.monotonic()
            step = int(checkpoint.name.split("_")[1])
            work = Path(args.evals) / f"{data}-{label}" / f"step_{step:08d}"
            saved = work / "eval" / "eval.json"
            if args.reuse and saved.is_file() and saved.stat().st_mtime > (checkpoint / "state.json").stat().st_mtime:
                result = json.loads(saved.read_text())  # scored by an earlier run of this script
            else:
                pipe_dir = variant(folder, stage, checkpoint, work / "pipeline")
                result = evaluate_model(pipe_dir, data, work / "eval", quick=True)
                shutil.rmtree(pipe_dir)  # weights are reproducible from the checkpoint; keep only the scores
            minutes = others + stage_seconds(checkpoint, final_seconds, train.get("step")) / 60
            rows.append({"data": data, "model": label, "stage": stage, "step": step, "minutes": round(minutes, 2),
                         **quality(result)})  # fmt: skip
            print(f"{data} {label} {stage} step {step}: {minutes:.1f} min, scored in "
                  f"{time.monotonic() - start:.0f} s", flush=True)  # fmt: skip
    command = " ".join(["python benchmarks/quality_vs_time.py", *args.models, f"--points {args.points}"])
    threads = torch.get_num_threads()
    (out / "quality_vs_time.json").write_text(
        json.dumps({"command": command, "threads": threads, "rows": rows}, indent=2) + "\n"
    )
    text = markdown(rows, command, threads)
    (out / "quality_vs_time.md").write_text(text)
    try:
        plot(rows, out / "quality_vs_time.png")
    except ImportError:
        print("matplotlib is not installed (pip install 'dalle2[bench]'): no plot written", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
