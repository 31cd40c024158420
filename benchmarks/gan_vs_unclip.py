"""GAN vs unCLIP: one table (faithfulness or class accuracy, FD, KID, precision, recall, images/s, training
minutes) and one grid per dataset with the same prompts from every model.

    python benchmarks/gan_vs_unclip.py shapes:unclip=runs/shapes shapes:gan=runs/gan-shapes \\
        fashion-mnist:gan=runs/gan-fashion [--full] [--threads 2]

Each ``DATA:LABEL=DIR`` is a saved pipeline folder (either kind) scored with ``dalle2 eval`` on the
``DATA`` benchmark (``--quick`` size unless ``--full``), its sampling timed by the same call. Training
minutes: the sum of the ``wall_seconds`` each component's training report records (CLIP, prior, decoder,
upsampler for unCLIP; CLIP and GAN for the GAN; a copied CLIP (``--clip-from``) is not counted again; resumed
runs count every run) unless ``--minutes DATA:LABEL=M`` gives it (for folders trained before the reports
recorded resumed runs' time). Writes
``OUT/gan_vs_unclip.{json,md}`` (default OUT: ``benchmarks/results``), ``GRIDS/gan-vs-unclip-<data>.png``
(default GRIDS: ``docs``) and each model's ``dalle2 eval`` folder under ``EVALS`` (default
``runs/gan_vs_unclip``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GRID_PROMPTS = {
    "shapes": [
        "a red circle",
        "a blue square",
        "a yellow star",
        "a green triangle",
        "a red circle above a blue square",
        "a white heart to the left of a purple cross",
        "three orange stars",
        "a pink heart on a gray background",
    ],
}
COMPONENTS = ("clip", "prior", "decoder", "upsampler", "gan")


def parse_models(parser: argparse.ArgumentParser, items: list[str]) -> list[tuple[str, str, Path]]:
    """``DATA:LABEL=DIR`` arguments -> (data, label, folder); each DIR must be a pipeline folder."""
    specs = []
    for spec in items:
        head, sep, folder = spec.partition("=")
        data, colon, label = head.partition(":")
        if not sep or not colon or not folder:
            parser.error(f"{spec!r}: expected DATA:LABEL=DIR, e.g. shapes:unclip=runs/shapes")
        if not (Path(folder) / "model_index.json").is_file():
            parser.error(f"{spec!r}: {folder} is not a pipeline folder (no model_index.json)")
        specs.append((data, label, Path(folder)))
    return specs


def training_minutes(folder: Path) -> float | None:
    """Sum of the training wall-clock seconds recorded in each component's report.json, in minutes."""
    total, found = 0.0, False
    for part in COMPONENTS:
        report = folder / part / "report.json"
        if report.is_file():
            r = json.loads(report.read_text())
            train = r.get("train") or {}
            seconds = train.get("total_wall_seconds", train.get("wall_seconds", r.get("wall_seconds")))
            if seconds is not None:
                total += float(seconds)
                found = True
    return round(total / 60, 1) if found else None


def row(data: str, label: str, folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    fid = report["fidelity"]
    out = {
        "data": data,
        "model": label,
        "folder": str(folder),
        "resolution": report["resolution"],
        "fd": fid["fd"],
        "fd_floor": fid["fd_floor"],
        "kid": fid["kid"],
        "precision": fid["precision"],
        "recall": fid["recall"],
        "images_per_second": report["sampling"]["images_per_second"],
        "training_minutes": training_minutes(folder),
        "images": report["sampling"]["images"],
    }
    if "faithfulness" in report:
        out["faithfulness_train"] = report["faithfulness"]["train"]["overall"]
        out["faithfulness_heldout"] = report["faithfulness"]["heldout"]["overall"]
    if "class_accuracy" in report:
        acc = report["class_accuracy"]
        out["class_accuracy"] = acc["accuracy"]
    return out


def markdown(rows: list[dict[str, Any]], command: str, full: bool, threads: int, grids: dict[str, list[str]]) -> str:
    lines = [
        "# GAN vs unCLIP",
        "",
        f"`{command}` ({'reporting' if full else 'quick'} benchmark size; images/s at each model's default settings "
        f"on this machine, end to end, batch 64, {threads} torch thread(s))",
        "",
        "| data | model | faithfulness (train / held-out) or class accuracy | FD (floor) | KID | precision | recall "
        "| images/s | training minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "faithfulness_train" in r:
            quality = f"{r['faithfulness_train']:.3f} / {r['faithfulness_heldout']:.3f}"
        elif "class_accuracy" in r:
            quality = f"{r['class_accuracy']:.3f}"
        else:
            quality = "-"
        minutes = "-" if r["training_minutes"] is None else f"{r['training_minutes']:.1f}"
        lines.append(
            f"| {r['data']} | {r['model']} | {quality} | {r['fd']:.2f} ({r['fd_floor']:.2f}) | {r['kid']:.3f} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['images_per_second']:.1f} | {minutes} |"
        )
    for data, prompts in grids.items():
        lines += ["", f"Grid `gan-vs-unclip-{data}.png`, one row per model, prompts left to right (seed 0):"]
        lines.append("; ".join(f"{i + 1}. {p}" for i, p in enumerate(prompts)))
    return "\n".join(lines) + "\n"


def grid(data: str, entries: list[tuple[str, Any]], path: Path) -> list[str]:
    """One row per model, one column per prompt, the same seed for every model."""
    from PIL import Image, ImageDraw

    if data in GRID_PROMPTS:
        prompts = GRID_PROMPTS[data]
    else:  # a class dataset: the canonical caption of each class
        from dalle2.data.idx import class_prompt, classes_for

        prompts = [class_prompt(data, label) for label in range(len(classes_for(data)))]
    rows = [(label, pipe(prompts, n=1, seed=0)) for label, pipe in entries]
    cell, label_w = 96, 110
    canvas = Image.new("RGB", (label_w + cell * len(prompts), cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * cell + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(images):
            canvas.paste(
                im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (label_w + c * cell, r * cell)
            )
    canvas.save(path)
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="DATA:LABEL=DIR")
    parser.add_argument("--full", action="store_true", help="the reporting-size benchmark (default: --quick size)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--minutes",
        action="append",
        default=[],
        metavar="DATA:LABEL=M",
        help="training minutes of a model, instead of the sum of its reports",
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--grids", default=str(RESULTS.parent.parent / "docs"))
    parser.add_argument("--evals", default="runs/gan_vs_unclip")
    args = parser.parse_args()

    import torch

    from dalle2.eval.evaluate import evaluate_model
    from dalle2.pipeline import load

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = parse_models(parser, args.models)

    minutes = {}
    for spec in args.minutes:
        key, sep, value = spec.partition("=")
        try:
            minutes[key] = float(value)
        except ValueError:
            parser.error(f"--minutes {spec!r}: expected DATA:LABEL=MINUTES")
    rows, pipes = [], {}
    for data, label, folder in specs:
        start = time.monotonic()
        pipe = load(folder)
        report = evaluate_model(folder, data, Path(args.evals) / f"{data}-{label}", quick=not args.full, pipeline=pipe)
        rows.append(row(data, label, folder, report))
        if f"{data}:{label}" in minutes:
            rows[-1]["training_minutes"] = minutes[f"{data}:{label}"]
        pipes.setdefault(data, []).append((label, pipe))
        print(f"{data} {label}: scored in {time.monotonic() - start:.0f} s", flush=True)
    grids = {}
    for data, entries in pipes.items():
        Path(args.grids).mkdir(parents=True, exist_ok=True)
        grids[data] = grid(data, entries, Path(args.grids) / f"gan-vs-unclip-{data}.png")
    extra = [f"--minutes {m}" for m in args.minutes] + (["--full"] if args.full else [])
    command = " ".join(["python benchmarks/gan_vs_unclip.py", *args.models, *extra])
    threads = torch.get_num_threads()
    record = {"command": command, "threads": threads, "rows": rows, "grid_prompts": grids}
    (out / "gan_vs_unclip.json").write_text(json.dumps(record, indent=2) + "\n")
    text = markdown(rows, command, args.full, threads, grids)
    (out / "gan_vs_unclip.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
