"""``dalle2 train clip``: train (or import) the CLIP of an unCLIP pipeline folder, then report.

Steps: resolve the config (preset < ``--config`` YAML < ``--set`` < dedicated options; the ``clip``
section is :class:`~dalle2.models.clip.ClipConfig`), train ``OUT/tokenizer`` if it is missing, train
CLIP with the shared :class:`~dalle2.training.trainer.Trainer` (EMA, checkpoints under
``OUT/training/clip``, ``--resume``), write ``OUT/clip/`` (EMA weights) and merge a ``clip`` entry into
``OUT/model_index.json``. With ``--clip PATH`` a pretrained transformers CLIP is imported frozen instead
of trained. The report (printed and written to ``OUT/clip/report.json``):

* retrieval on held-out (test split) pairs: text->image and image->text recall@1 and @5, each query
  ranked among the other members of its chunk of 100 (chance: 1% and 5%);
* on ``shapes``, zero-shot accuracy (:func:`dalle2.stages.zero_shot.zero_shot_report`): colour, shape and
  position on single-object test images, count on count scenes, relation and colour binding on relation
  scenes, each against prompts that differ only in that attribute, with its chance level;
* the training minutes (``train_minutes``).

A trained CLIP reads the dataset at its image tower's resolution, ``clip.image_size`` (0, the default:
``data.resolution``); e.g. ``--set clip.image_size=64`` trains and evaluates it on the 64x64 render.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dalle2.folder_format import update_model_index, write_json_atomic
from dalle2.models.clip import ClipConfig, ClipError, ClipModel, negative_kinds
from dalle2.stages.common import (
    default_trackers,
    open_train_split,
    printer,
    resolve_options,
    stage_options,
    train_summary,
)

__all__ = ["evaluate_clip", "train_clip"]

TOKENIZER_CAPTIONS = 20_000  # captions used to train the BPE tokenizer when OUT/tokenizer is missing
CHUNK = 100  # retrieval candidates per query
#: the zero-shot report's attributes as printed: (key prefix, label, key of the number of images)
ZERO_SHOT_ATTRIBUTES = (
    ("color", "colour", "images"),
    ("shape", "shape", "images"),
    ("count", "count", "count_images"),
    ("position", "position", "position_images"),
    ("relation", "relation", "relation_images"),
    ("binding", "binding", "binding_images"),
)


def _captions(dataset: Any, limit: int):
    n = min(limit, len(dataset))
    scene = getattr(dataset, "scene", None)
    for i in range(n):
        yield scene(i)[1] if callable(scene) else dataset[i]["caption"]


def _tokenizer(out: Path, config: Any, dataset: Any, log) -> Any:
    from dalle2.text import Tokenizer

    folder = out / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(folder)
        log(f"using {folder / 'tokenizer.json'} (vocabulary {tokenizer.vocab_size}, max length {tokenizer.max_length})")
        return tokenizer
    limit = 500 if config.preset == "tiny" else TOKENIZER_CAPTIONS
    tokenizer = Tokenizer.train(
        _captions(dataset, limit), vocab_size=config.text.vocab_size, max_length=config.text.max_length
    )
    path = tokenizer.save(folder)
    config.save(folder / "config.yaml")
    log(f"trained {path} (vocabulary {tokenizer.vocab_size}, max length {tokenizer.max_length})")
    return tokenizer


# -- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def _embed(model: ClipModel, images: torch.Tensor, captions: list[str], batch: int = 100):
    device = model.logit_scale.device
    img, txt = [], []
    for i in range(0, len(captions), batch):
        img.append(model.encode_image(images[i : i + batch].to(device)).cpu())
        txt.append(model.encode_prompts(captions[i : i + batch])[0].cpu())
    return torch.cat(img), torch.cat(txt)


def _recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, chunk: int = CHUNK) -> dict[str, float]:
    hits = {"text_to_image_r1": 0, "text_to_image_r5": 0, "image_to_text_r1": 0, "image_to_text_r5": 0}
    n = 0
    for start in range(0, image_embeds.shape[0], chunk):
        im, tx = image_embeds[start : start + chunk], text_embeds[start : start + chunk]
        if im.shape[0] < 2:
            break
        sim = tx @ im.t()  # (texts, images)
        target = torch.arange(im.shape[0])
        for name, s in (("text_to_image", sim), ("image_to_text", sim.t())):
            rank = (s > s[target, target].unsqueeze(1)).sum(1)  # how many candidates beat the true pair
            hits[f"{name}_r1"] += int((rank < 1).sum())
            hits[f"{name}_r5"] += int((rank < 5).sum())
        n += im.shape[0]
    return {k: v / max(n, 1) for k, v in hits.items()} | {"queries": n, "chunk": min(chunk, n)}


@torch.no_grad()
def evaluate_clip(model: ClipModel, dataset_spec: str, resolution: int, samples: int, seed: int = 0) -> dict[str, Any]:
    """Zero-shot retrieval on ``samples`` test pairs (+ attribute accuracy on shapes); see the module docstring."""
    from dalle2.data import open_dataset

    model.eval()
    dataset = open_dataset(dataset_spec, split="test", resolution=resolution, seed=seed, length=samples)
    items = [dataset[i] for i in range(min(samples, len(dataset)))]
    images = torch.stack([s["image"] for s in items])
    captions = [s["caption"] for s in items]
    image_embeds, text_embeds = _embed(model, images, captions)
    report: dict[str, Any] = {"dataset": dataset_spec, "split": "test", "samples": len(items)}
    report["retrieval"] = _recall(image_embeds, text_embeds)
    chunk = report["retrieval"]["chunk"]
    report["retrieval"]["chance_r1"] = 1 / max(chunk, 1)
    report["retrieval"]["chance_r5"] = min(1.0, 5 / max(chunk, 1))
    if dataset_spec.partition(":")[0] == "shapes":
        from dalle2.stages.zero_shot import zero_shot_report

        report["zero_shot"] = zero_shot_report(
            image_embeds, [s["meta"] for s in items], lambda prompts: model.encode_prompts(prompts)[0]
        )
    return report


def _format(report: dict[str, Any]) -> str:
    r = report["retrieval"]
    lines = [
        f"CLIP zero-shot on {report['samples']} held-out {report['dataset']} pairs (chunks of {r['chunk']}):",
        f"  text->image  R@1 {r['text_to_image_r1']:.3f}  R@5 {r['text_to_image_r5']:.3f}",
        f"  image->text  R@1 {r['image_to_text_r1']:.3f}  R@5 {r['image_to_text_r5']:.3f}"
        f"   (chance R@1 {r['chance_r1']:.3f}, R@5 {r['chance_r5']:.3f})",
    ]
    z = report.get("zero_shot") or {}
    shown = [(name, label, images) for name, label, images in ZERO_SHOT_ATTRIBUTES if f"{name}_accuracy" in z]
    if shown:
        lines.append("  zero-shot accuracy (chance):")
    for name, label, images in shown:
        lines.append(f"    {label:9s} {z[f'{name}_accuracy']:.3f}  ({z[f'{name}_chance']:.3f}) on {z[images]} images")
    minutes = report.get("train_minutes")
    summary = [
        f"R@1 text->image {r['text_to_image_r1']:.3f}",
        f"image->text {r['image_to_text_r1']:.3f}",
        *(f"{label} {z[f'{name}_accuracy']:.3f}" for name, label, _ in shown),
        f"{minutes:.2f} training minutes" if minutes is not None else _untrained(report),
    ]
    lines.append("CLIP summary: " + ", ".join(summary))
    return "\n".join(lines)


def _untrained(report: dict[str, Any]) -> str:
    return "pretrained, not trained" if "pretrained_from" in report.get("train", {}) else "training minutes unknown"


# -- the stage ---------------------------------------------------------------------------------------


def train_clip(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the stage; ``args`` is the argparse namespace or a dict (keyword arguments also work).

    Keys: ``out`` (required), ``data`` (default: the config's), ``preset`` ("cpu"), ``config`` (YAML),
    ``overrides`` (list of ``section.key=value``), ``resume``, ``max_steps``, ``max_minutes``, ``clip``
    (pretrained CLIP folder), ``text_encoder`` ("clip" | "minilm"), ``log_with`` (tracker names or None),
    ``progress`` (bool), ``quiet`` (bool). Returns the report (also in ``OUT/clip/report.json``).
    """
    opts = stage_options(args, kwargs)
    if not opts.get("out"):
        raise ClipError("the CLIP stage needs an output pipeline folder (--out DIR)")
    log = printer(bool(opts.get("quiet")))

    out = Path(opts["out"])
    config, section, _ = resolve_options("clip", opts)
    clip_config = ClipConfig(**section)
    log(config.to_yaml() + yaml.safe_dump({"clip": clip_config.__dict__}, sort_keys=False).rstrip())

    from dalle2.data import open_dataset

    pretrained = opts.get("clip")
    start = time.monotonic()
    # a trained CLIP reads the dataset at its tower's resolution; a pretrained one resizes images itself
    resolution = config.data.resolution if pretrained else (clip_config.image_size or config.data.resolution)
    if pretrained:  # the paper's setting: a frozen pretrained CLIP, nothing to train
        model = ClipModel.from_pretrained(pretrained)
        log(f"imported the pretrained CLIP at {pretrained} (frozen)")
        open_dataset(config.data.dataset, split="test", resolution=resolution, length=2)  # check data
        train_info: dict[str, Any] = {"pretrained_from": str(pretrained)}
    else:
        dataset = open_train_split(config, resolution)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = _tokenizer(out, config, dataset, log)
        torch.manual_seed(config.train.seed)  # the initial weights (the Trainer seeds training itself)
        model = ClipModel.from_config(clip_config, image_size=resolution, tokenizer=tokenizer)
        vision_params = sum(p.numel() for p in model.vision.parameters())
        log(f"image tower: {model.vision_arch}, {vision_params / 1e6:.2f}M parameters, {resolution}x{resolution}")
        train_info = _train(model, dataset, config, clip_config, out, opts)
        log(
            f"trained {train_info['step']} steps in {train_info['wall_seconds']:.0f} s "
            f"({train_info['stop_reason']}, final loss {train_info['final_loss']})"
        )
        model = train_info.pop("ema_model")
    clip_dir = out / "clip"
    if pretrained:
        model.save(clip_dir)
    model.eval()
    report = evaluate_clip(model, config.data.dataset, resolution, clip_config.eval_samples, seed=0)
    report["train"] = {k: v for k, v in train_info.items() if k != "checkpoint"}
    if "total_wall_seconds" in train_info:  # all runs of a resumed training together
        report["train_minutes"] = round(train_info["total_wall_seconds"] / 60, 3)
    report["wall_seconds"] = round(time.monotonic() - start, 1)
    write_json_atomic(clip_dir / "report.json", report)
    update_model_index(
        out,
        "clip",
        {
            "folder": "clip",
            "source": model.source,
            "text_encoder": model.text_encoder,
            "embed_dim": model.config["embed_dim"],
            "vision_arch": model.vision_arch,
            "image_size": model.image_size,
        },
        kind="unclip",
        defaults={"resolutions": [config.data.resolution], "dataset": config.data.dataset},
    )
    if not pretrained:
        update_model_index(out, "tokenizer", {"folder": "tokenizer"}, kind="unclip")
    log(f"wrote {clip_dir} and {out / 'model_index.json'}")
    log(_format(report))  # ends with the one-line summary
    return report


def _train(model: ClipModel, dataset: Any, config: Any, clip_config: ClipConfig, out: Path, opts: dict[str, Any]):
    from dalle2.training.trainer import Trainer

    negatives = getattr(dataset, "hard_negatives", None) if clip_config.hard_negatives else None
    kinds = negative_kinds(clip_config)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        captions = list(batch["caption"])
        images = batch["image"]
        if negatives is None:
            ids, mask = model.tokenizer.encode(captions)
            return m(images, ids.to(images.device), mask.to(images.device))
        ids, mask = model.tokenizer.encode(captions + [twin for c in captions for twin in negatives(c, kinds)])
        ids, mask, n = ids.to(images.device), mask.to(images.device), len(captions)
        return m(images, ids[:n], mask[:n], ids[n:], mask[n:])

    log_with = default_trackers(opts)
    trainer = Trainer(
        model,
        loss_fn,
        dataset,
        config.train,
        out / "training" / "clip",
        ema_decay=clip_config.ema_decay,
        log_with=log_with,
        stage_name="clip",
        num_workers=config.data.num_workers,
        run_config={**config.to_dict(), "clip": clip_config.__dict__},
        progress=bool(opts.get("progress", True)) and not opts.get("quiet"),
    )
    result = trainer.train(resume=bool(opts.get("resume")))
    trainer.save_ema(out / "clip", model.config)
    ema = trainer.ema_model
    ema.tokenizer = model.tokenizer
    return {**train_summary(result), "ema_model": ema}
