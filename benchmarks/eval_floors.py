"""Real-vs-real floors of `dalle2 eval` at the reporting sizes, and the scorer on real images.

    python benchmarks/eval_floors.py [--quick]

For each benchmark (shapes at 64x64 and 32x32, fashion-mnist at 32x32) it writes the benchmark's
prompts with real images for them (`dalle2 eval-prompts --render-real`), then scores those images
with `dalle2 eval --images`: faithfulness of real images, and FD / KID / precision / recall of a
third independent real set against the reference beside the real-vs-real floor, at the same N.
Writes benchmarks/results/eval_floors.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "dalle2", *argv], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the --quick sizes instead of the reporting sizes")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the table from the saved JSON")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    out = args.out
    if args.markdown_only:
        name = "eval_floors_quick" if args.quick else "eval_floors"
        write_markdown(json.loads((out / f"{name}.json").read_text()), args.quick, out)
        return
    quick = ["--quick"] if args.quick else []
    rows = []
    for data, resolution in (("shapes", 64), ("shapes", 32), ("fashion-mnist", 32)):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            start = time.perf_counter()
            run(
                "eval-prompts",
                "--data",
                data,
                *quick,
                "-o",
                str(tmp / "p.jsonl"),
                "--render-real",
                str(tmp / "img"),
                "--resolution",
                str(resolution),
            )
            run("eval", "--images", str(tmp / "img"), "--prompts", str(tmp / "p.jsonl"), "--out", str(tmp / "out"))
            report = json.loads((tmp / "out" / "eval.json").read_text())
            seconds = time.perf_counter() - start
        fid = report["fidelity"]
        row = {
            "data": data,
            "resolution": resolution,
            "n": fid["n_generated"],
            "feature_space": fid["feature_space"],
            "fd_real_vs_reference": fid["fd"],
            "fd_floor": fid["fd_floor"],
            "kid_real": fid["kid"],
            "kid_floor": fid["kid_floor"],
            "precision": fid["precision"],
            "recall": fid["recall"],
            "seconds": round(seconds, 1),
        }
        if "faithfulness" in report:
            row["faithfulness_seen"] = report["faithfulness"]["train"]["overall"]
            row["faithfulness_heldout"] = report["faithfulness"]["heldout"]["overall"]
            row["min_task"] = min(v for s in ("train", "heldout") for k, v in report["faithfulness"][s].items())
        if "class_accuracy" in report:
            row["class_accuracy_real"] = report["class_accuracy"]["accuracy"]
        if "generated" in report.get("clip_score", {}):
            row["clip_score_real"] = report["clip_score"]["generated"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    name = "eval_floors_quick" if args.quick else "eval_floors"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.quick, out)


def write_markdown(rows: list[dict], quick: bool, out: Path = RESULTS) -> None:
    """The table the README quotes, from the rows of the JSON file."""
    name = "eval_floors_quick" if quick else "eval_floors"
    command = "python benchmarks/eval_floors.py" + (" --quick" if quick else "")
    lines = [
        f"# Real-vs-real floors ({'quick' if quick else 'reporting'} sizes)",
        "",
        f"Command: `{command}`",
        "",
        "| data | res | N | feature space | FD real | FD floor | KID real | KID floor | precision | recall "
        "| faithfulness seen / held-out (min task) | class acc. | CLIP score |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        faith = (
            f"{r['faithfulness_seen']:.3f} / {r['faithfulness_heldout']:.3f} ({r['min_task']:.3f})"
            if "faithfulness_seen" in r
            else "-"
        )
        cells = [
            r["data"],
            r["resolution"],
            r["n"],
            r["feature_space"],
            f"{r['fd_real_vs_reference']:.4g}",
            f"{r['fd_floor']:.4g}",
            f"{r['kid_real']:.2e}",
            f"{r['kid_floor']:.2e}",
            f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            faith,
            f"{r['class_accuracy_real']:.3f}" if "class_accuracy_real" in r else "-",
            f"{r['clip_score_real']:.1f}" if "clip_score_real" in r else "-",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
