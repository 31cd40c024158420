"""``dalle2 train decoder`` and ``dalle2 train upsampler``: the image diffusion stages of an unCLIP folder.

Decoder: the frozen CLIP of ``OUT/clip`` encodes each training batch on the fly (image embedding z_i of
the image, token encodings of the caption; no grad), and an :class:`~dalle2.models.decoder.ImageDiffusion`
learns p(x | z_i, caption) at the base resolution. Report (``OUT/decoder/report.json``): on held-out
images, the CLIP image embedding of the decoded image against the z_i it was decoded from (cosine), beside
the cosine of unrelated pairs, i.e. how much of z_i the decoder puts into pixels.

Upsampler: trained on random crops (half the side, a quarter of the area, as the paper) of images at the
output resolution, conditioned on the crop downsampled by the resolution ratio; no CLIP. Report
(``OUT/upsampler/report.json``): PSNR of upsampled held-out images against bicubic upsampling.

Both: config = stage preset (:data:`dalle2.presets.STAGE_PRESETS`) < ``--config`` YAML < ``--set`` <
options; the stage's own section (``decoder`` / ``upsampler``) holds
:class:`~dalle2.models.decoder.DiffusionConfig` keys, ``net.*`` keys for the network, and ``ema_decay``;
checkpoints under ``OUT/training/<stage>``; ``--resume``; EMA weights written to ``OUT/<stage>/``; a
``<stage>`` entry merged into ``OUT/model_index.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from dalle2.errors import Dalle2Error
from dalle2.folder_format import INDEX_FILE, read_model_index, update_model_index, write_json_atomic
from dalle2.stages.common import (
    default_trackers,
    load_frozen_clip,
    open_train_split,
    printer,
    stage_options,
    train_summary,
)

__all__ = ["ImageStageError", "decoder_throughput", "train_decoder", "train_upsampler", "warm_start"]


class ImageStageError(Dalle2Error):
    """The decoder / upsampler stage cannot run; the message says what to do."""


# -- configuration -----------------------------------------------------------------------------------


def _resolve(stage: str, opts: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """-> (Config, DiffusionConfig dict without sizes, stage keys)."""
    from dalle2.config import STAGE_OPTIONS, resolve_stage

    sets = list(opts.get("overrides") or opts.get("set") or [])
    options = {key: opts.get(key) for key in STAGE_OPTIONS}
    return resolve_stage(stage, opts.get("preset") or "cpu", opts.get("config"), sets, options)


def _build(stage: str, model: dict[str, Any], sizes: dict[str, Any]) -> Any:
    from dalle2.models.decoder import DiffusionConfig, ImageDiffusion

    spec = copy.deepcopy(model)
    spec["net"] = {**spec.get("net", {}), **sizes.pop("net", {})}
    try:
        return ImageDiffusion(DiffusionConfig.from_dict({**spec, **sizes, "role": stage}))
    except (TypeError, Dalle2Error) as error:
        raise ImageStageError(f"invalid {stage} section: {error}") from None


# -- decoder -----------------------------------------------------------------------------------------


@torch.no_grad()
def _clip_condition(clip: Any, decoder: Any, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """The decoder's conditions: CLIP's z_i, and the caption as CLIP's token encodings or, for a decoder with
    its own caption encoder, as token ids."""
    tokens, mask = decoder.caption_inputs(clip, captions)
    return {"image_embed": clip.encode_image(images), "text_tokens": tokens, "text_mask": mask}


@torch.no_grad()
def evaluate_decoder(decoder: Any, clip: Any, images: torch.Tensor, captions: list[str], seed: int = 0) -> dict:
    """Cosine of CLIP(decoded image) with the z_i it was decoded from, against unrelated pairs."""
    images = images.to(next(decoder.parameters()).device)  # the models may sit on the accelerator
    cond = _clip_condition(clip, decoder, images, captions)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g).to(images)
    decoded = decoder.sample(noise, generator=g, **cond)
    z = cond["image_embed"]
    z_dec = clip.encode_image(decoded)
    return {
        "decoded_vs_source": round(F.cosine_similarity(z_dec, z).mean().item(), 4),
        "unrelated_pairs": round(F.cosine_similarity(z_dec, z.roll(1, 0)).mean().item(), 4),
        "real_image_pixels_mse": round(F.mse_loss(decoded, images).item(), 4),
        "samples": int(images.shape[0]),
        "sample_steps": decoder.config.sample_steps,
        "guidance_scale": decoder.config.guidance_scale,
    }


@dataclass
class _Run:
    """What the decoder and upsampler stages share after building their network: train it, save the EMA
    weights, evaluate them, write ``report.json`` and the ``model_index.json`` entry."""

    stage: str
    model: Any
    config: Any
    keys: dict[str, Any]
    out: Path
    opts: dict[str, Any]
    init_from: dict | None
    n_params: int
    log: Any

    def train_and_save(
        self, loss_fn: Any, dataset: Any, sample_fn: Any, clip: Any, report_key: str, evaluate: Any
    ) -> dict[str, Any]:
        """Train, save and report; ``evaluate(ema)`` fills ``report[report_key]``. Returns the report."""
        start = time.monotonic()
        info = _train(
            self.stage, self.model, loss_fn, dataset, self.config, self.keys, self.out, self.opts, sample_fn, clip
        )
        ema = info.pop("ema_model")
        self.log(
            f"trained {info['step']} steps in {info['wall_seconds']:.0f} s "
            f"({info['stop_reason']}, final loss {info['final_loss']})"
        )
        folder = self.out / self.stage
        if info.pop("is_main"):
            ema.save_pretrained(folder)
        report = {
            "dataset": self.config.data.dataset,
            report_key: evaluate(ema.eval()),
            "parameters": self.n_params,
            "train": info,
            **_lineage(self.init_from, info),
            "wall_seconds": round(time.monotonic() - start, 1),
        }
        write_json_atomic(folder / "report.json", report)
        _index(self.out, self.stage, ema, self.config)
        return report


@dataclass
class _DecoderParts:
    """What the decoder stage trains with, built from the options as :func:`train_decoder` builds it."""

    config: Any
    keys: dict[str, Any]
    clip: Any
    decoder: Any
    dataset: Any
    test_images: torch.Tensor  # the held-out images of the report (``eval_samples``)
    test_captions: list[str]
    resolution: int

    def loss_fn(self, m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        cond = _clip_condition(self.clip, self.decoder, images, batch["caption"])
        return self.decoder.loss(m, images, **cond)

    def sample_fn(self, ema: Any, step: int) -> list[Any]:
        """The training previews: the first 8 held-out images above their decodings."""
        images = self.test_images[:8].to(next(ema.parameters()).device)
        cond = _clip_condition(self.clip, ema, images, self.test_captions[:8])
        g = torch.Generator().manual_seed(0)
        decoded = ema.sample(torch.randn(images.shape, generator=g).to(images), generator=g, **cond)
        return _pils(torch.cat([images, decoded]))

    def evaluate(self, ema: Any) -> dict[str, Any]:
        return evaluate_decoder(ema, self.clip, self.test_images, self.test_captions)


def _decoder_parts(opts: dict[str, Any]) -> _DecoderParts:
    if not opts.get("out"):
        raise ImageStageError("the decoder stage needs the pipeline folder (--out DIR) holding a trained CLIP")
    out = Path(opts["out"])
    config, model_spec, keys = _resolve("decoder", opts)
    clip = load_frozen_clip(out, "decoder", ImageStageError)
    from dalle2.data import open_dataset

    resolution = clip.image_size if clip.source == "trained" else config.data.resolution
    dataset = open_train_split(config, resolution)
    test = open_dataset(config.data.dataset, split="test", resolution=resolution, seed=0, length=keys["eval_samples"])
    test_images = torch.stack([test[i]["image"] for i in range(len(test))])
    test_captions = [test[i]["caption"] for i in range(len(test))]
    width = _text_width(clip)
    sizes = {"net": {"image_size": resolution, "embed_dim": clip.config["embed_dim"], "context_dim": width}}
    if model_spec.get("net", {}).get("caption_layers"):  # its own caption encoder reads the CLIP tokenizer's ids
        sizes["net"].update(caption_vocab=clip.tokenizer.vocab_size, caption_length=clip.tokenizer.max_length)
    torch.manual_seed(config.train.seed)
    decoder = _build("decoder", model_spec, sizes)
    return _DecoderParts(config, keys, clip, decoder, dataset, test_images, test_captions, resolution)


def train_decoder(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the decoder stage (keys as :func:`dalle2.stages.prior_stage.train_prior`). Returns the report."""
    opts = stage_options(args, kwargs)
    log = printer(bool(opts.get("quiet")))
    parts = _decoder_parts(opts)
    out, config, keys, decoder = Path(opts["out"]), parts.config, parts.keys, parts.decoder
    init_from = warm_start(
        "decoder", decoder, opts.get("init_from"), out, bool(opts.get("resume")), log, bool(opts.get("init_grow"))
    )
    log(config.to_yaml() + yaml.safe_dump({"decoder": {**decoder.config.to_dict(), **keys}}, sort_keys=False).rstrip())
    n_params = sum(p.numel() for p in decoder.parameters())
    log(f"decoder: {decoder.config.arch}, {n_params / 1e6:.2f}M parameters, {parts.resolution}x{parts.resolution}")
    run = _Run("decoder", decoder, config, keys, out, opts, init_from, n_params, log)
    report = run.train_and_save(
        parts.loss_fn, parts.dataset, parts.sample_fn, parts.clip, "consistency", parts.evaluate
    )
    folder = out / "decoder"
    c = report["consistency"]
    log(
        f"decoder on {c['samples']} held-out images: cos(CLIP(decoded), z_i) {c['decoded_vs_source']:.3f}, "
        f"unrelated pairs {c['unrelated_pairs']:.3f}"
    )
    log(f"wrote {folder} and {out / 'model_index.json'}")
    return report


def decoder_throughput(
    args: argparse.Namespace | dict[str, Any] | None = None, *, steps: int = 30, untimed: int = 10, **kwargs: Any
) -> dict[str, float]:
    """The decoder stage's time costs on this machine, measured as :func:`train_decoder` would train (the
    same network, data, CLIP encoding, precision, threads and training loop) on a throwaway model in a
    temporary folder: the stage's setup, ``untimed + steps`` optimizer steps of which the first ``untimed``
    (allocation, warm-up) are not timed, one checkpoint with its preview, and the held-out report. Nothing in
    ``--out`` changes, and the real run's random streams do not depend on it (the stage seeds its own). Used
    by ``dalle2 train all --minutes`` to size the decoder's schedule.

    Returns ``images_per_second`` and ``seconds_per_step`` (the training steps alone),
    ``checkpoint_seconds`` (a checkpoint and its preview, which come every ``checkpoint_every`` steps),
    ``fixed_seconds`` (setup and the report: once per run) and ``seconds`` (the probe's whole time)."""
    import dataclasses
    import tempfile

    from dalle2.training.trainer import Trainer

    if steps < 1 or untimed < 1:
        raise ImageStageError(f"decoder_throughput needs steps >= 1 and untimed >= 1, got {steps} and {untimed}")
    opts = stage_options(args, kwargs)
    begin = time.monotonic()
    parts = _decoder_parts(opts)
    total = untimed + steps
    train = dataclasses.replace(
        parts.config.train, max_steps=total, schedule_steps=None, max_minutes=None, checkpoint_every=total
    )
    marks: dict[int, float] = {}

    def mark(step: int, logged: dict[str, float]) -> None:
        marks[step] = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="dalle2-throughput-") as tmp:
        trainer = Trainer(
            parts.decoder,
            parts.loss_fn,
            parts.dataset,
            train,
            Path(tmp),
            ema_decay=parts.keys["ema_decay"],
            log_with=None,
            stage_name="decoder-throughput",
            sample_fn=parts.sample_fn,
            num_workers=parts.config.data.num_workers,
            progress=False,
            log_every=math.gcd(untimed, total),  # a mark at step untimed and at the last step
            on_log=mark,
        )
        parts.clip.to(trainer.accelerator.device)
        ready = time.monotonic()
        trainer.train()  # the last step is logged, then writes the one checkpoint and preview
        trained = time.monotonic()
        with torch.no_grad():
            parts.evaluate(trainer.ema_model.eval())
    reported = time.monotonic()
    per_step = (marks[total] - marks[untimed]) / steps
    return {
        "images_per_second": round(train.batch_size * trainer.accelerator.num_processes / per_step, 2),
        "seconds_per_step": round(per_step, 4),
        "checkpoint_seconds": round(trained - marks[total], 3),
        "checkpoint_every": parts.config.train.checkpoint_every,
        "fixed_seconds": round((ready - begin) + (reported - trained), 3),
        "seconds": round(reported - begin, 1),
    }


def _text_width(clip: Any) -> int:
    _, hidden, _ = clip.encode_prompts(["a"])
    return int(hidden.shape[-1])


# -- upsampler ---------------------------------------------------------------------------------------


def _crop_pairs(images: torch.Tensor, factor: int, crop: int, generator: torch.Generator | None = None):
    """Random aligned crops of high-res images and their area-downsampled low-res counterparts."""
    b, _, h, _ = images.shape
    if crop >= h:
        hi = images
    else:
        cells = (h - crop) // factor + 1
        ys = torch.randint(0, cells, (b,), generator=generator) * factor
        xs = torch.randint(0, cells, (b,), generator=generator) * factor
        pairs = zip(images, ys.tolist(), xs.tolist(), strict=True)
        hi = torch.stack([img[:, y : y + crop, x : x + crop] for img, y, x in pairs])
    return hi, F.avg_pool2d(hi, factor)


@torch.no_grad()
def evaluate_upsampler(upsampler: Any, images: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    factor = upsampler.image_size // upsampler.config.low_res_size
    images = images.to(next(upsampler.parameters()).device)  # the model may sit on the accelerator
    low = F.avg_pool2d(images, factor)
    g = torch.Generator().manual_seed(seed)
    up = upsampler.sample(torch.randn(images.shape, generator=g).to(images), low_res=low, generator=g)
    bicubic = F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        mse = F.mse_loss((a + 1) / 2, (b + 1) / 2).item()
        return round(10 * math.log10(1 / max(mse, 1e-10)), 2)

    return {
        "psnr_upsampler": psnr(up, images),
        "psnr_bicubic": psnr(bicubic, images),
        "samples": int(images.shape[0]),
        "sample_steps": upsampler.config.sample_steps,
    }


def train_upsampler(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the upsampler stage (keys as :func:`train_decoder`; needs no CLIP). Returns the report."""
    opts = stage_options(args, kwargs)
    if not opts.get("out"):
        raise ImageStageError("the upsampler stage needs the pipeline folder (--out DIR)")
    log = printer(bool(opts.get("quiet")))
    out = Path(opts["out"])
    config, model_spec, keys = _resolve("upsampler", opts)
    low, high = config.data.resolution, config.data.output_resolution
    if high == low:
        raise ImageStageError(f"data.output_resolution ({high}) equals data.resolution: nothing to upsample")
    if high % low:
        raise ImageStageError(f"data.output_resolution ({high}) must be a multiple of data.resolution ({low})")
    from dalle2.data import open_dataset

    dataset = open_train_split(config, high)
    test = open_dataset(config.data.dataset, split="test", resolution=high, seed=0, length=keys["eval_samples"])
    factor = high // low
    crop = max(high // 2, factor * 8)
    sizes = {"net": {"image_size": high, "low_res_channels": 3, "noise_level_embedding": True}, "low_res_size": low}
    torch.manual_seed(config.train.seed)
    upsampler = _build("upsampler", model_spec, sizes)
    init_from = warm_start(
        "upsampler", upsampler, opts.get("init_from"), out, bool(opts.get("resume")), log, bool(opts.get("init_grow"))
    )
    resolved = yaml.safe_dump({"upsampler": {**upsampler.config.to_dict(), **keys}}, sort_keys=False)
    log(config.to_yaml() + resolved.rstrip())
    n_params = sum(p.numel() for p in upsampler.parameters())
    log(f"upsampler: {low} -> {high}, {n_params / 1e6:.2f}M parameters, trained on {crop}x{crop} crops")
    preview = torch.stack([test[i]["image"] for i in range(min(8, len(test)))])

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        hi, lo = _crop_pairs(batch["image"], factor, crop)
        return upsampler.loss(m, hi, low_res=lo)

    def sample_fn(ema: Any, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        images = preview.to(next(ema.parameters()).device)
        noise = torch.randn(images.shape, generator=g).to(images)
        up = ema.sample(noise, low_res=F.avg_pool2d(images, factor), generator=g)
        return _pils(torch.cat([images, up]))

    images = torch.stack([test[i]["image"] for i in range(len(test))])
    run = _Run("upsampler", upsampler, config, keys, out, opts, init_from, n_params, log)
    report = run.train_and_save(
        loss_fn, dataset, sample_fn, None, "quality", lambda ema: evaluate_upsampler(ema, images)
    )
    folder = out / "upsampler"
    q = report["quality"]
    log(f"upsampler on {q['samples']} held-out images: PSNR {q['psnr_upsampler']} dB (bicubic {q['psnr_bicubic']} dB)")
    log(f"wrote {folder} and {out / 'model_index.json'}")
    return report


# -- warm start --------------------------------------------------------------------------------------


def warm_start(
    stage: str, model: Any, source: str | Path | None, out: Path, resume: bool, log: Any, grow: bool = False
) -> dict | None:
    """Load ``model``'s weights from the ``stage`` of pipeline folder ``source`` (``--init-from``).

    Weights only: the run gets a new optimizer and learning-rate schedule, and counts its own steps from 0.
    The network must be the one saved there (same arch and ``net`` keys); training-only keys (loss
    weighting, drop rates) may differ. With ``grow`` (``--init-grow``) the ``net`` keys may differ where the
    network only gains weights: every saved tensor must find a place of the same name and shape here; the
    new ones keep their initialisation (the UNet's attention blocks start as the identity, so a decoder
    given attention at another level starts as the saved one) and are counted in the record (``grown``).

    What the run started from is recorded in ``OUT/training/<stage>/init_from.json`` (so a ``--resume`` of
    it still says so) and returned for the report: the source folder's name (never a machine path), the
    weights' SHA-256, and the steps and training minutes that led to them. Returns None for a run that starts
    from random weights. A checkpoint in ``OUT/training/<stage>`` wins under ``--resume`` (it holds newer
    weights than the source).
    """
    import hashlib

    from dalle2.models.decoder import ImageDiffusion

    if grow and source is None:
        raise ImageStageError("--init-grow needs --init-from DIR (the folder whose weights the network grows from)")
    run_dir = out / "training" / stage
    record_path = run_dir / "init_from.json"
    has_checkpoint = any((run_dir / "checkpoints").glob("step_*"))
    if has_checkpoint:
        if source is not None and resume:
            log(f"{stage}: --init-from ignored: resuming the checkpoint in {run_dir / 'checkpoints'}")
        # a resumed run keeps the record of where it started; a refused one (no --resume) changes nothing
        return json.loads(record_path.read_text()) if resume and record_path.is_file() else None
    if source is None:
        return None
    folder = Path(source)
    component = folder / stage if (folder / stage / "config.json").is_file() else folder
    if not (component / "config.json").is_file():
        raise ImageStageError(f"--init-from {folder}: no {stage} there (expected {folder / stage / 'config.json'})")
    try:
        saved = ImageDiffusion.from_pretrained(component)
    except Dalle2Error as error:
        raise ImageStageError(f"--init-from: {error}") from None
    if saved.config.role != stage:
        raise ImageStageError(f"--init-from {component}: that folder holds the {saved.config.role}, not the {stage}")
    mine, theirs = model.config.to_dict(), saved.config.to_dict()
    differ = [f"arch ({theirs['arch']} there, {mine['arch']} here)"] if mine["arch"] != theirs["arch"] else []
    for key in sorted(set(mine["net"]) | set(theirs["net"])):
        if mine["net"].get(key) != theirs["net"].get(key):
            differ.append(f"net.{key} ({theirs['net'].get(key)!r} there, {mine['net'].get(key)!r} here)")
    grown = None
    if differ and not (grow and mine["arch"] == theirs["arch"]):
        raise ImageStageError(
            f"--init-from {component}: another network than this run's: {'; '.join(differ)}; "
            f"set the same {stage}.net keys (or drop --init-from"
            + (")" if mine["arch"] != theirs["arch"] else "; --init-grow loads it into a larger network)")
        )
    if differ:
        grown = _grow_into(model, saved, component, differ)
        log(
            f"{stage}: the network grew: {grown['new_tensors']} new tensors "
            f"({grown['new_parameters']} parameters) keep their initialisation"
        )
    else:
        model.load_state_dict(saved.state_dict())  # copies into the model's own dtype (float16 exports -> float32)
    steps, minutes, runs = 0, 0.0, []
    report_path = component / "report.json"
    if report_path.is_file():
        try:
            previous = json.loads(report_path.read_text())
        except json.JSONDecodeError:
            previous = {}
        lineage = previous.get("lineage") or {}
        train = previous.get("train") or {}
        steps = int(lineage.get("steps", train.get("step", 0)) or 0)
        minutes = float(lineage.get("training_minutes", _minutes(train)))
        # the runs that made those weights; a folder from before runs were recorded counts as one
        runs = lineage.get("runs") or ([_segment(train)] if train else [])
    digest = hashlib.sha256((component / "model.safetensors").read_bytes()).hexdigest()
    record = {
        "source": component.resolve().parent.name,  # the pipeline folder's name, never a path
        "sha256": digest,
        "steps": steps,
        "training_minutes": round(minutes, 1),
        "runs": runs,
    }
    if grown is not None:
        record["grown"] = grown
    write_json_atomic(record_path, record)
    log(
        f"{stage}: warm start from {record['source']} ({steps} steps, {record['training_minutes']} min of "
        "training before this run); new optimizer and schedule"
    )
    return record


def _grow_into(model: Any, saved: Any, component: Path, differ: list[str]) -> dict[str, Any]:
    """Load every tensor of ``saved`` into the larger ``model`` (same names and shapes), leaving the new ones
    as initialised; raise ImageStageError if a saved tensor has no such place. Returns the record's
    ``grown`` entry: the differing ``net`` keys and how many tensors and parameters are new."""
    theirs, mine = saved.state_dict(), model.state_dict()
    misfit = [k for k, v in theirs.items() if k not in mine or mine[k].shape != v.shape]
    if misfit:
        raise ImageStageError(
            f"--init-from {component} --init-grow: {len(misfit)} saved tensors have no place of the same shape "
            f"in this network (first: {misfit[0]}); growing keeps every saved weight, so only added blocks "
            "(e.g. attention at another level) can differ"
        )
    model.load_state_dict(theirs, strict=False)  # copies into the model's own dtype (float16 exports -> float32)
    new = [k for k in mine if k not in theirs]
    params = dict(model.named_parameters())  # the state's buffers (e.g. norm statistics) are not parameters
    return {
        "net": differ,
        "new_tensors": len(new),
        "new_parameters": sum(params[k].numel() for k in new if k in params),
    }


def _minutes(train: dict[str, Any]) -> float:
    """Training minutes of a report's ``train`` block (every resumed run summed where recorded)."""
    return float(train.get("total_wall_seconds") or train.get("wall_seconds") or 0.0) / 60


def _segment(train: dict[str, Any]) -> dict[str, Any]:
    """One run of a lineage from its report's ``train`` block: steps, images seen (where the batch is known),
    minutes and what it ran on (where recorded)."""
    segment: dict[str, Any] = {"steps": int(train.get("step", 0) or 0), "training_minutes": round(_minutes(train), 1)}
    if train.get("samples_per_step"):
        segment["samples"] = segment["steps"] * int(train["samples_per_step"])
    if train.get("device"):
        segment["device"] = train["device"]
    return segment


def _lineage(init_from: dict | None, info: dict[str, Any]) -> dict[str, Any]:
    """Report keys of a warm-started run: where it started and the totals of every run that led here, each
    run listed (steps, images, minutes, device), so that CPU and GPU minutes are never summed unsaid."""
    if init_from is None:
        return {}
    init_record = {k: v for k, v in init_from.items() if k != "runs"}
    return {
        "init_from": init_record,
        "lineage": {
            "steps": init_from["steps"] + int(info["step"]),
            "training_minutes": round(init_from["training_minutes"] + _minutes(info), 1),
            "runs": [*init_from.get("runs", []), _segment(info)],
        },
    }


# -- shared ------------------------------------------------------------------------------------------


def _pils(images: torch.Tensor) -> list[Any]:
    from dalle2.data.base import tensor_to_pil

    return [tensor_to_pil(x) for x in images]


def _index(out: Path, stage: str, model: Any, config: Any) -> None:
    """Merge the ``stage`` entry into ``OUT/model_index.json``; ``resolutions``: the image sizes of all components."""
    entry = {"folder": stage, "arch": model.config.arch, "image_size": model.image_size}
    current = read_model_index(out) if (out / INDEX_FILE).is_file() else {}
    components = {**(current.get("components") or {}), stage: entry}
    sizes = sorted({c.get("image_size") for c in components.values() if c.get("image_size")})
    update_model_index(out, stage, entry, kind="unclip", defaults={"dataset": config.data.dataset}, resolutions=sizes)


def _train(stage, model, loss_fn, dataset, config, keys, out, opts, sample_fn, clip) -> dict[str, Any]:
    from dalle2.training.trainer import Trainer

    trainer = Trainer(
        model,
        loss_fn,
        dataset,
        config.train,
        out / "training" / stage,
        ema_decay=keys["ema_decay"],
        log_with=default_trackers(opts),
        stage_name=stage,
        sample_fn=sample_fn,
        num_workers=config.data.num_workers,
        run_config={**config.to_dict(), stage: {**model.config.to_dict(), **keys}},
        progress=bool(opts.get("progress", True)) and not opts.get("quiet"),
    )
    if clip is not None:
        clip.to(trainer.accelerator.device)
    result = trainer.train(resume=bool(opts.get("resume")))
    return {
        **train_summary(result),
        "ema_model": trainer.ema_model,
        "is_main": trainer.accelerator.is_main_process,
    }
