"""``dalle2 eval``: sample a model (or read another program's images) on a benchmark, score, report.

Flow: benchmark prompts -> images -> faithfulness (shapes scorer) or class accuracy (classifier)
-> FD / KID / precision-recall in the dataset's evaluator feature space, beside the real-vs-real
floor at the same N -> CLIP score -> ``eval.json``, ``eval.md`` and sample grids (failures first).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dalle2 import __version__
from dalle2.errors import Dalle2Error
from dalle2.eval import metrics
from dalle2.eval import prompts as P
from dalle2.eval.networks import EvaluatorError, load_evaluator, shipped_dir
from dalle2.grid import captioned_grid, save_image_atomic

CLASS_DATASETS = ("fashion-mnist", "mnist")
# The feature space of FD / KID / precision-recall per benchmark: shapes uses the evaluation CLIP's image tower
# (its embedding separates colour, shape, position and count: recall@1 0.9 among 100 held-out images).
FEATURES = {"shapes": "clip-shapes-v1", "fashion-mnist": "fashion-mnist-v1", "mnist": "mnist-v1"}
CLIP_EVALUATORS = {"shapes": "clip-shapes-v1"}
REFERENCE_SEED, FLOOR_SEED = 10_000, 20_000
FOLDER_REPORT, FOLDER_QUICK = 5000, 500  # folder:PATH: captions evaluated (at most half the folder)
GRID_SIZE = 48
MIN_IMAGES = 4  # precision / recall: each set needs its 3 nearest neighbours


#: the sampling options each pipeline kind takes in ``evaluate_model(sample_kwargs=...)``
SAMPLE_OPTIONS: dict[str, set[str]] = {"unclip": {"steps", "sampler", "guidance"}, "gan": {"truncation"}}


class EvalError(Dalle2Error):
    """Evaluation inputs are missing or inconsistent."""


# ------------------------------------------------------------------------------------------ images
def images_to_tensor(images: list[Image.Image], resolution: int, grayscale: bool = False) -> torch.Tensor:
    """PIL images -> (N, 3, R, R) float in [-1, 1]; 28-pixel MNIST-style images are padded, others resized."""
    out = []
    for image in images:
        image = image.convert("L").convert("RGB") if grayscale else image.convert("RGB")
        if image.size == (28, 28) and resolution == 32:
            canvas = Image.new("RGB", (32, 32))
            canvas.paste(image, (2, 2))
            image = canvas
        elif image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(out).div(127.5).sub(1.0)


class FeatureNet:
    """A frozen evaluator ConvNet used for features (FD space) and, where it has one, its class head."""

    def __init__(self, name: str):
        model, self.meta = load_evaluator(name)
        self.name = name
        self.model = model.image_tower if self.meta["architecture"] == "EvalCLIP" else model
        self.resolution = int(self.model.config.resolution)
        self.grayscale = self.meta.get("dataset") in CLASS_DATASETS

    @torch.no_grad()
    def run(self, images: list[Image.Image], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = images_to_tensor(images[i : i + batch_size], self.resolution, self.grayscale)
            x = x.contiguous(memory_format=torch.channels_last)
            f = self.model.embed(x)
            feats.append(f.double().numpy())
            if "class" in self.model.heads:
                logits.append(self.model.heads["class"](f).numpy())
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)


# ---------------------------------------------------------------------------------- benchmark sets
def benchmark(
    data: str, quick: bool, images_per_prompt: int | None = None, features: str | None = None, clip: str | None = None
) -> list[dict[str, Any]]:
    """One record per image to make: the prompt, its requirement, the file name and the image seed.

    ``features`` / ``clip`` choose evaluator networks (a shipped name or a folder); ``folder:PATH`` data has no
    built-in ones, so it needs ``features``.
    """
    name = data.partition(":")[0]
    if name == "folder":
        return _folder_benchmark(data, quick, features, clip)
    if name == "shapes":
        specs, k = P.shapes_prompts(quick=quick), images_per_prompt or (P.QUICK_IMAGES if quick else P.REPORT_IMAGES)
    elif name in CLASS_DATASETS:
        specs, k = P.class_prompts(name, quick=quick), images_per_prompt or 1
    else:
        raise EvalError(f"no benchmark prompts for {data!r}; use shapes, fashion-mnist or mnist")
    extra = {key: value for key, value in (("features", features), ("clip", clip)) if value}
    return [
        {**spec, "dataset": name, "image": j, "file_name": f"{spec['id']}-{j}.png", **extra}
        for spec in specs
        for j in range(k)
    ]


def _folder_benchmark(data: str, quick: bool, features: str | None, clip: str | None) -> list[dict[str, Any]]:
    """A folder's own captions as prompts: half its images are the reference, the other half the floor set."""
    if not features:
        raise EvalError(
            "folder datasets have no built-in evaluator: pass --features EVALUATOR (a shipped name such as "
            "clip-shapes-v1, or a folder written by `dalle2 train evaluators`)"
        )
    from dalle2.data import open_dataset

    path = Path(data.partition(":")[2]).resolve()
    dataset = open_dataset(f"folder:{path}", resolution=32)
    n = min(FOLDER_QUICK if quick else FOLDER_REPORT, len(dataset) // 2)
    if n < 2:
        raise EvalError(f"{path}: need at least 4 captioned images to evaluate against (found {len(dataset)})")
    order = np.random.default_rng(0).permutation(len(dataset))
    extra = {"features": features, **({"clip": clip} if clip else {})}
    return [
        {
            "task": "caption",
            "split": "folder",
            "prompt": dataset.captions[int(order[k])],
            "index": int(order[k]),
            "floor_index": int(order[n + k]),
            "id": f"folder-{k:05d}",
            "dataset": f"folder:{path}",
            "image": 0,
            "file_name": f"folder-{k:05d}-0.png",
            **extra,
        }
        for k in range(n)
    ]


def real_images(records: list[dict[str, Any]], resolution: int, seed: int) -> list[Image.Image]:
    """Real images for the same prompts: shapes renders, or dataset images of the prompted class.

    With ``REFERENCE_SEED`` this is the reference set; with ``FLOOR_SEED`` (shapes) or the train split
    (class datasets) it is the independent real set that gives the real-vs-real floor.
    """
    name = records[0]["dataset"]
    if name == "shapes":
        return [P.render_real(r, resolution, np.random.default_rng([seed, i])) for i, r in enumerate(records)]
    from dalle2.data import open_dataset
    from dalle2.data.base import tensor_to_pil

    if name.startswith("folder:"):
        dataset = open_dataset(name, resolution=resolution)
        key = "index" if seed == REFERENCE_SEED else "floor_index"
        return [tensor_to_pil(dataset[r[key]]["image"]) for r in records]

    split = "test" if seed == REFERENCE_SEED else "train"
    dataset = open_dataset(name, split=split, resolution=resolution)
    by_class = defaultdict(list)
    for index, label in enumerate(np.asarray(dataset.labels)):
        by_class[int(label)].append(index)
    rng = np.random.default_rng(seed)
    order = {label: rng.permutation(indices) for label, indices in by_class.items()}  # without replacement
    taken: dict[int, int] = defaultdict(int)
    chosen = []
    for r in records:
        pool = order[r["label"]]
        chosen.append(int(pool[taken[r["label"]] % len(pool)]))
        taken[r["label"]] += 1
    return [tensor_to_pil(dataset[i]["image"]) for i in chosen]


# --------------------------------------------------------------------------------------- scoring
def _fidelity(
    feature_net: FeatureNet, generated: list[Image.Image], reference: list[Image.Image], floor: list[Image.Image]
) -> dict[str, Any]:
    gen, _ = feature_net.run(generated)
    ref, _ = feature_net.run(reference)
    flo, _ = feature_net.run(floor)
    n = len(gen)
    m = min(1000, n, len(ref))
    # With subsets as large as both sets every subset is the whole of both: one MMD, no spread to report.
    subsets = 1 if m == n == len(ref) else 100
    kid_mean, kid_std = metrics.kid(ref, gen, num_subsets=subsets, subset_size=m, seed=0)
    kid_floor, _ = metrics.kid(ref, flo, num_subsets=subsets, subset_size=m, seed=0)
    precision, recall = metrics.precision_recall(ref, gen, k=3)
    return {
        "feature_space": f"FD_{feature_net.name}",
        "n_generated": n,
        "n_reference": len(ref),
        "fd": metrics.fd(ref, gen),
        "fd_floor": metrics.fd(ref, flo),
        "kid": kid_mean,
        "kid_std": kid_std if subsets > 1 else None,
        "kid_floor": kid_floor,
        "kid_subset_size": m,
        "precision": precision,
        "recall": recall,
    }


def _faithfulness(records: list[dict[str, Any]], images: list[Image.Image]) -> tuple[dict[str, Any], list[bool]]:
    from dalle2.eval.scorer import ShapesScorer

    scorer = ShapesScorer.load()
    analyses = scorer.analyze_many(images)
    passed = [scorer.check(r, a) for r, a in zip(records, analyses, strict=True)]
    table: dict[str, Any] = {"scorer": scorer.version}
    for split in P.SPLITS:
        scores = {}
        for task in P.TASKS:
            hits = [p for r, p in zip(records, passed, strict=True) if r["task"] == task and r["split"] == split]
            if hits:
                scores[task] = float(np.mean(hits))
        if scores:
            scores["overall"] = float(np.mean(list(scores.values())))
            table[split] = scores
    table["n_per_task"] = len([r for r in records if r["task"] == P.TASKS[0] and r["split"] == P.SPLITS[0]])
    return table, passed


def _class_accuracy(
    feature_net: FeatureNet, records: list[dict[str, Any]], generated: list[Image.Image], reference: list[Image.Image]
) -> tuple[dict[str, Any], list[bool]]:
    _, logits = feature_net.run(generated)
    _, real_logits = feature_net.run(reference)
    labels = np.array([r["label"] for r in records])
    hit = logits.argmax(1) == labels
    real_hit = real_logits.argmax(1) == labels
    classes = feature_net.meta.get("classes", [])
    per_class = {classes[c] if c < len(classes) else str(c): float(hit[labels == c].mean()) for c in np.unique(labels)}
    return {
        "classifier": feature_net.name,
        "accuracy": float(hit.mean()),
        "real_accuracy": float(real_hit.mean()),
        "per_class": per_class,
    }, hit.tolist()


def _clip_score(
    name: str, records: list[dict[str, Any]], generated: list[Image.Image], reference: list[Image.Image]
) -> dict[str, Any]:
    evaluator = records[0].get("clip") or CLIP_EVALUATORS.get(name)
    if evaluator is None or not ((shipped_dir() / evaluator).is_dir() or Path(evaluator).is_dir()):
        return {"skipped": f"no evaluation CLIP for {name!r} (choose one with --clip)"}
    from dalle2.eval.clip_evaluator import ClipScorer

    scorer = ClipScorer.load(evaluator)
    prompts = [r["prompt"] for r in records]
    return {
        "evaluator": evaluator,
        "definition": "mean of 100 * max(cos(image, text), 0)",
        "generated": float(np.mean(scorer.score(generated, prompts))),
        "real": float(np.mean(scorer.score(reference, prompts))),
    }


def score(
    records: list[dict[str, Any]], images: list[Image.Image], sampling: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[bool]]:
    """Every metric for ``images`` made for ``records``; returns the report and a pass flag per image."""
    if len(records) != len(images):
        raise EvalError(f"{len(records)} prompts but {len(images)} images")
    if not records:
        raise EvalError("nothing to evaluate")
    if len(records) < MIN_IMAGES:  # checked here: the metrics raise a plain ValueError, which the CLI treats as a bug
        raise EvalError(
            f"need at least {MIN_IMAGES} images to evaluate (precision and recall use 3 nearest neighbours), "
            f"got {len(records)}"
        )
    name = records[0]["dataset"].partition(":")[0]
    resolution = images[0].width
    if any(im.size != (resolution, resolution) for im in images):
        raise EvalError("all images must be square and of one size")
    reference = real_images(records, resolution, REFERENCE_SEED)
    floor = real_images(records, resolution, FLOOR_SEED)
    feature_net = FeatureNet(records[0].get("features") or FEATURES[name])
    report: dict[str, Any] = {
        "dalle2_version": __version__,
        "dataset": records[0]["dataset"],
        "resolution": resolution,
        "prompt_set": {"version": P.PROMPT_SET_VERSION, "records": len(records)},
        "sampling": sampling or {"note": "images supplied by the user; sampling speed unknown"},
    }
    passed = [True] * len(images)  # folders: no per-image check, only distribution metrics and CLIP score
    if name == "shapes":
        report["faithfulness"], passed = _faithfulness(records, images)
    elif name in CLASS_DATASETS:
        report["class_accuracy"], passed = _class_accuracy(feature_net, records, images, reference)
    report["fidelity"] = _fidelity(feature_net, images, reference, floor)
    report["clip_score"] = _clip_score(name, records, images, reference)
    return report, passed


# --------------------------------------------------------------------------------------- reports
def markdown(report: dict[str, Any]) -> str:
    lines = [f"# dalle2 eval: {report['dataset']} at {report['resolution']}x{report['resolution']}", ""]
    sampling = report["sampling"]
    if "images_per_second" in sampling:
        lines += [
            f"Sampling: {sampling['images']} images in {sampling['seconds']:.1f} s = "
            f"**{sampling['images_per_second']:.2f} images/s** ({json.dumps(sampling.get('settings', {}))})",
            "",
        ]
    if "faithfulness" in report:
        f = report["faithfulness"]
        tasks = [*P.TASKS, "overall"]
        lines += [
            f"Faithfulness (scorer {f['scorer']}, {f['n_per_task']} images per task):",
            "",
            "| split | " + " | ".join(tasks) + " |",
            "|---" * (len(tasks) + 1) + "|",
        ]
        for split in P.SPLITS:
            if split in f:
                lines.append(f"| {split} | " + " | ".join(f"{f[split].get(t, float('nan')):.3f}" for t in tasks) + " |")
        lines.append("")
    if "class_accuracy" in report:
        c = report["class_accuracy"]
        lines += [
            f"Class accuracy ({c['classifier']}): generated **{c['accuracy']:.3f}**, "
            f"real test images {c['real_accuracy']:.3f}",
            "",
        ]
    d = report["fidelity"]
    # Older reports, and those whose one KID subset is the whole of both sets, have no spread.
    kid_spread = f" ± {d['kid_std']:.2g}" if d.get("kid_std") is not None else ""
    lines += [
        f"Fidelity in {d['feature_space']} (N = {d['n_generated']} generated vs {d['n_reference']} real):",
        "",
        "| FD | FD real-vs-real floor | KID | KID floor | precision | recall |",
        "|---|---|---|---|---|---|",
        f"| {d['fd']:.4g} | {d['fd_floor']:.4g} | {d['kid']:.3g}{kid_spread} | {d['kid_floor']:.3g} "
        f"| {d['precision']:.3f} | {d['recall']:.3f} |",
        "",
    ]
    cs = report["clip_score"]
    if "generated" in cs:
        lines += [
            f"CLIP score ({cs['evaluator']}, {cs['definition']}): "
            f"generated {cs['generated']:.2f}, real {cs['real']:.2f}",
            "",
        ]
    return "\n".join(lines)


def write_report(
    report: dict[str, Any],
    records: list[dict[str, Any]],
    images: list[Image.Image],
    passed: list[bool],
    out: str | Path,
) -> Path:
    """``eval.json``, ``eval.md`` and grids (failures first) per split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in sorted({r["split"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["split"] == split]
        idx.sort(key=lambda i: passed[i])  # failures first (stable: benchmark order within each group)
        idx = idx[:GRID_SIZE]
        grid = captioned_grid(
            [images[i] for i in idx],
            [records[i]["prompt"] for i in idx],
            ncols=8,
            marks=["" if passed[i] else "FAIL" for i in idx],
        )
        save_image_atomic(grid, out / f"samples_{split}.png")
    report["grids"] = sorted(p.name for p in out.glob("samples_*.png"))
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "eval.json")
    (out / "eval.md").write_text(markdown(report) + "\n")
    return out


# ----------------------------------------------------------------------------------- entry points
def evaluate_model(
    model_dir: str | Path,
    data: str,
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    features: str | None = None,
    clip: str | None = None,
    sample_kwargs: dict[str, Any] | None = None,
    pipeline: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample a saved pipeline on the benchmark prompts and score it. ``sample_kwargs`` (``steps``,
    ``sampler``, ``guidance`` for unCLIP; ``truncation`` for a GAN; :data:`SAMPLE_OPTIONS`) go to every
    pipeline call; ``pipeline`` reuses an opened one; ``progress``: a bar over the images (when on a terminal)."""
    from dalle2.pipeline import load

    pipe = pipeline if pipeline is not None else load(model_dir)
    sample_kwargs = dict(sample_kwargs or {})
    kind = getattr(pipe, "kind", None)
    wrong = sorted(set(sample_kwargs) - SAMPLE_OPTIONS.get(kind, set()))
    if wrong:
        owners = {o: k for k, options in SAMPLE_OPTIONS.items() for o in options}
        said = (f"{o}: a sampling option of {owners.get(o, 'no')} models, not of {model_dir} ({kind})" for o in wrong)
        raise EvalError("; ".join(said))
    records = benchmark(data, quick, features=features, clip=clip)
    prompts = [r["prompt"] for r in records]
    images: list[Image.Image] = []
    start = time.perf_counter()
    with tqdm(total=len(prompts), desc="sample", unit="img", disable=None if progress else True) as bar:
        for i in range(0, len(prompts), batch_size):
            images += pipe(prompts[i : i + batch_size], n=1, seed=seed + i, **sample_kwargs)
            bar.update(len(prompts[i : i + batch_size]))
    seconds = time.perf_counter() - start
    sampling = {
        "images": len(images),
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "seed": seed,
        "batch_size": batch_size,
        "model": str(model_dir),
        "settings": {**pipe.settings(), **({"overrides": sample_kwargs} if sample_kwargs else {})},
    }
    report, passed = score(records, images, sampling)
    report["quick"] = quick
    write_report(report, records, images, passed, out)
    return report


def load_images(directory: str | Path, records: list[dict[str, Any]]) -> list[Image.Image]:
    """The images named by ``file_name`` in the prompts file; every missing or broken one is listed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EvalError(f"images folder not found: {directory}")
    images, problems = [], []
    for r in records:
        if "file_name" not in r:
            raise EvalError("every prompts line needs a 'file_name' naming its image in --images")
        path = directory / r["file_name"]
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.convert("RGB"))
        except FileNotFoundError:
            problems.append(f"{r['file_name']}: missing")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f"{r['file_name']}: unreadable ({error})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise EvalError(f"{len(problems)} of {len(records)} images could not be read: {shown}")
    return images


def evaluate_images(images_dir: str | Path, prompts_file: str | Path, out: str | Path) -> dict[str, Any]:
    """Score images made by any program for a prompts file written by ``dalle2 eval-prompts``."""
    records = P.read_jsonl(prompts_file)
    datasets = {r.get("dataset") for r in records}
    if len(datasets) != 1 or None in datasets:
        raise EvalError(f"{prompts_file}: every line needs the same 'dataset' (write it with `dalle2 eval-prompts`)")
    images = load_images(images_dir, records)
    report, passed = score(records, images)
    write_report(report, records, images, passed, out)
    return report


def evaluators_available(data: str, features: str | None = None) -> None:
    """Fail early, before any sampling, when the benchmark's evaluator networks are missing."""
    name = data.partition(":")[0]
    if features:
        load_evaluator(features)
        return
    if name == "folder":
        benchmark(data, quick=True)  # raises the explanation (folders need --features)
    if name not in FEATURES:
        raise EvalError(
            f"no evaluator networks for {data!r}; evaluation supports shapes, fashion-mnist, mnist and folder:PATH"
        )
    if not (shipped_dir() / FEATURES[name]).is_dir():
        raise EvaluatorError(
            f"evaluator {FEATURES[name]} is not shipped; train it with `dalle2 train evaluators --which {name}`"
        )
