"""``dalle2 train gan``: train a text-conditional GAN into its own pipeline folder (kind ``gan``).

Steps: resolve the config (GAN preset < ``--config`` YAML < ``--set`` < options; the ``gan`` section
holds network, objective, optimiser and stage keys, see :data:`dalle2.presets.GAN_DEFAULTS`), make sure ``OUT/clip``
exists (copied with ``OUT/tokenizer`` from ``--clip-from``, else trained by the CLIP stage), then train
G and D with the shared trainer in two phases per batch (D step, then G step; Adam or SGD each, constant
LR; checkpoints of G, D, both optimizers and the EMA of G under ``OUT/training/gan``, ``--resume``),
watched by :class:`~dalle2.stages.gan_monitor.CollapseMonitor`, with preview grids every
``gan.sample_every`` steps (``OUT/training/gan/samples``: one row per fixed prompt, a real image first,
then the same fixed noise in every row).

Writes ``OUT/gan/`` (the EMA generator: config.json + model.safetensors), ``OUT/gan/report.json`` and
``OUT/model_index.json`` (kind ``gan``: components clip, tokenizer, gan). The report, on held-out test
captions: the frozen CLIP's cosine between generated images and their caption against unrelated
captions (real images alongside, as the ceiling), the diversity ratio of the mode-collapse check,
sampling speed, and the collapse warnings of the run.

Presets (in :data:`dalle2.presets.STAGE_PRESETS`): ``tiny`` (tests), ``cpu`` (DF-GAN recipe sized for one
CPU core), ``gpu`` and ``article`` (the founding article's dense-G / conv-D BCE recipe at 28x28, with the
text fed to both networks).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from dalle2.errors import Dalle2Error
from dalle2.folder_format import (
    INDEX_FILE,
    FolderError,
    copy_folder_atomic,
    read_model_index,
    write_json_atomic,
    write_model_index,
)
from dalle2.models.gan import GanConfig, sentence_embeddings
from dalle2.models.gan_objective import ObjectiveConfig
from dalle2.presets import GAN_DEFAULTS
from dalle2.stages.common import default_trackers, printer, resolve_options, stage_options, train_summary

__all__ = ["GAN_DEFAULTS", "GanStageError", "evaluate_gan", "train_gan"]

GRAYSCALE_DATA = ("mnist", "fashion-mnist")
PREVIEW_PROMPTS, PREVIEW_NOISE = 8, 7  # sample grid: 8 rows of a real image + 7 fixed-noise samples
MONITOR_NOISE = 8

#: the gan.* keys of the networks: GanConfig's fields less the sizes the stage fills in from data and CLIP
NETWORK_KEYS = tuple(f.name for f in fields(GanConfig) if f.name not in ("image_size", "channels", "embed_dim"))
OBJECTIVE_KEYS = tuple(sorted(ObjectiveConfig.keys()))  # the gan.* keys of the objective


class GanStageError(Dalle2Error):
    """The GAN stage cannot run; the message says what to do."""


# -- configuration -----------------------------------------------------------------------------------


def resolve(opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """-> (Config, gan keys); every key checked, the networks and objective built once to validate them."""
    config, keys, _ = resolve_options("gan", opts)
    _check(keys, config)
    return config, keys


def _check(keys: dict[str, Any], config: Any) -> None:
    from dalle2.config import ConfigError

    checks = [
        (keys["optimizer"] in ("adam", "sgd"), f"gan.optimizer must be adam or sgd, got {keys['optimizer']!r}"),
        (keys["channels"] in (0, 1, 3), f"gan.channels must be 0 (auto), 1 or 3, got {keys['channels']}"),
        (keys["d_lr_scale"] > 0, "gan.d_lr_scale must be > 0"),
        (0 <= keys["beta1"] < 1 and 0 <= keys["beta2"] < 1, "gan.beta1 and gan.beta2 must be in [0, 1)"),
        (0 <= keys["momentum"] < 1, "gan.momentum must be in [0, 1)"),
        (keys["max_grad_norm"] >= 0, "gan.max_grad_norm must be >= 0 (0 = no clipping)"),
        (0 <= keys["ema_decay"] < 1, "gan.ema_decay must be in [0, 1) (0 = no averaging)"),
        (keys["eval_samples"] >= 2, "gan.eval_samples must be >= 2"),
        (keys["sample_every"] >= 1 and keys["monitor_every"] >= 1, "gan.sample_every and monitor_every: >= 1"),
        (keys["collapse_patience"] >= 1, "gan.collapse_patience must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        network_config(keys, config, embed_dim=1)
        ObjectiveConfig(**{k: keys[k] for k in OBJECTIVE_KEYS})
    except Dalle2Error as error:  # GanConfigError, the objective's InvalidConfigError
        raise ConfigError(f"invalid gan section: {error}") from None


def image_channels(keys: dict[str, Any], dataset: str) -> int:
    if keys["channels"]:
        return int(keys["channels"])
    return 1 if dataset.partition(":")[0] in GRAYSCALE_DATA else 3


def network_config(keys: dict[str, Any], config: Any, embed_dim: int) -> Any:
    return GanConfig(
        **{k: keys[k] for k in NETWORK_KEYS},
        image_size=config.data.resolution,
        channels=image_channels(keys, config.data.dataset),
        embed_dim=embed_dim,
    )


# -- data --------------------------------------------------------------------------------------------


def open_images(spec: str, split: str, resolution: int, seed: int, length: int | None = None) -> tuple[Any, int]:
    """The dataset, and how many border pixels to crop from its images: MNIST-style IDX images at 28x28
    are opened at 32 (the 28x28 original plus a 2-pixel border) and cropped, so they are the raw pixels."""
    from dalle2.data import open_dataset

    if resolution == 28 and spec.partition(":")[0] in GRAYSCALE_DATA:
        return open_dataset(spec, split=split, resolution=32, seed=seed, length=length), 2
    return open_dataset(spec, split=split, resolution=resolution, seed=seed, length=length), 0


def prepare_images(images: torch.Tensor, crop: int, channels: int) -> torch.Tensor:
    """Dataset images (B, 3, H, W) -> what the GAN models: border cropped, one channel for grayscale data."""
    if crop:
        images = images[:, :, crop:-crop, crop:-crop]
    return images[:, :1] if channels == 1 else images


# -- the pipeline folder -----------------------------------------------------------------------------


def _check_folder(out: Path) -> None:
    """Refuse to turn an unCLIP pipeline (with more than its CLIP) into a GAN folder."""
    if not (out / INDEX_FILE).is_file():
        return
    try:
        index = read_model_index(out)
    except FolderError as error:
        raise GanStageError(f"{error}; fix or remove it") from None
    others = sorted(set(index.get("components", {})) - {"clip", "tokenizer", "gan"})
    if index.get("kind") not in ("gan", "unclip") or others:
        raise GanStageError(
            f"{out} holds a {index.get('kind')!r} pipeline ({', '.join(others) or 'no GAN'}); train the GAN into "
            f"its own folder and share this one's CLIP with --clip-from {out}"
        )


def write_index(out: Path, entry: dict[str, Any], clip: Any, dataset: str, resolution: int) -> Path:
    """``OUT/model_index.json`` of kind ``gan``, with the components clip, tokenizer (if any) and gan."""
    embed_dim = clip.config.get("embed_dim")
    components: dict[str, Any] = {
        "clip": {"folder": "clip", "source": clip.source, "text_encoder": clip.text_encoder, "embed_dim": embed_dim}
    }
    if (out / "tokenizer").is_dir():
        components["tokenizer"] = {"folder": "tokenizer"}
    index = {
        "kind": "gan",
        "dataset": dataset,
        "resolutions": [resolution],
        "components": {**components, "gan": entry},
    }
    return write_model_index(out, index)


def ensure_clip(out: Path, opts: dict[str, Any], config: Any, log: Callable[[str], None]) -> Any:
    """OUT/clip: kept if present, else copied from ``--clip-from``, else trained by the CLIP stage."""
    from dalle2.models.clip import ClipModel

    have = (out / "clip" / "config.json").is_file() and (out / "clip" / "model.safetensors").is_file()
    source = opts.get("clip_from")
    if not have and source:
        src = Path(source).expanduser()
        if not (src / "clip" / "config.json").is_file() or not (src / "clip" / "model.safetensors").is_file():
            raise GanStageError(
                f"--clip-from {src}: no trained CLIP there ({src / 'clip'} needs config.json and model.safetensors)"
            )
        out.mkdir(parents=True, exist_ok=True)
        for part in ("tokenizer", "clip"):  # the CLIP last: its presence marks a complete copy
            if (src / part).is_dir():
                copy_folder_atomic(src / part, out / part, ignore=shutil.ignore_patterns("report.json"))
        log(f"copied the CLIP (and tokenizer) of {src} into {out}")
    elif not have:
        from dalle2.stages.clip_stage import train_clip

        clip_preset = {"tiny": "tiny", "gpu": "gpu"}.get(config.preset, "cpu")
        log(f"{out / 'clip'} is missing: training a CLIP first (preset {clip_preset}; or pass --clip-from DIR)")
        train_clip(
            out=str(out),
            data=config.data.dataset,
            preset=clip_preset,
            resume=bool(opts.get("resume")),
            log_with=opts.get("log_with", ("tensorboard",)),
            progress=opts.get("progress", True),
            quiet=opts.get("quiet", False),
        )
    elif source:
        log(f"{out / 'clip'} exists: using it (--clip-from {source} not needed)")
    return ClipModel.load(out / "clip").requires_grad_(False).eval()


# -- evaluation --------------------------------------------------------------------------------------


def _clip_images(clip: Any, images: torch.Tensor) -> torch.Tensor:
    """GAN images -> the CLIP image tower's input: 3 channels, its resolution (a pretrained CLIP resizes itself)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    size = clip.image_size
    if clip.source != "pretrained" and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


@torch.no_grad()
def evaluate_gan(generator: Any, clip: Any, images: torch.Tensor, captions: list[str], seed: int = 0) -> dict:
    """CLIP agreement of generated (and real) images with their captions vs unrelated captions; speed."""
    device = next(generator.parameters()).device
    s = sentence_embeddings(clip, captions).to(device)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(captions), generator.z_dim, generator=g).to(device)
    start = time.perf_counter()
    fake = generator(z, s)
    seconds = time.perf_counter() - start
    e_fake = clip.encode_image(_clip_images(clip, fake))
    e_real = clip.encode_image(_clip_images(clip, images.to(device)))
    wrong = s.roll(1, 0)
    return {
        "clip_cosine_generated": round(F.cosine_similarity(e_fake, s).mean().item(), 4),
        "clip_cosine_generated_unrelated": round(F.cosine_similarity(e_fake, wrong).mean().item(), 4),
        "clip_cosine_real": round(F.cosine_similarity(e_real, s).mean().item(), 4),
        "clip_cosine_real_unrelated": round(F.cosine_similarity(e_real, wrong).mean().item(), 4),
        "samples": len(captions),
        "sampling_images_per_second": round(len(captions) / max(seconds, 1e-9), 1),
    }


# -- the stage ---------------------------------------------------------------------------------------


def train_gan(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the GAN stage. Keys: ``out`` (required), ``data``, ``preset`` (tiny | cpu | gpu | article),
    ``config``, ``overrides``, ``clip_from``, ``resume``, ``max_steps``, ``max_minutes``, ``log_with``,
    ``progress``, ``quiet``. Returns the report (also in ``OUT/gan/report.json``)."""
    opts = stage_options(args, kwargs)
    if not opts.get("out"):
        raise GanStageError("the GAN stage needs an output pipeline folder (--out DIR)")
    log = printer(bool(opts.get("quiet")))
    out = Path(opts["out"])
    config, keys = resolve(opts)
    if opts.get("clip_from") and not Path(opts["clip_from"]).expanduser().is_dir():
        raise GanStageError(f"--clip-from {opts['clip_from']}: folder not found")
    _check_folder(out)
    resolution = config.data.resolution
    dataset, crop = open_images(config.data.dataset, "train", resolution, config.data.seed, config.data.train_length)
    test, _ = open_images(config.data.dataset, "test", resolution, 0, keys["eval_samples"])
    if len(test) < 2:
        raise GanStageError(f"{config.data.dataset}: the test split has {len(test)} samples; the report needs 2+")
    clip = ensure_clip(out, opts, config, log)
    embed_dim = int(clip.encode_prompts(["a"])[0].shape[-1])
    net = network_config(keys, config, embed_dim)
    log(config.to_yaml() + yaml.safe_dump({"gan": keys}, sort_keys=False, default_flow_style=None).rstrip())

    from dalle2.models.gan import Discriminator, Generator
    from dalle2.models.gan_objective import GanObjective

    torch.manual_seed(config.train.seed)
    generator, discriminator = Generator(net), Discriminator(net)
    objective = GanObjective(generator, discriminator, ObjectiveConfig(**{k: keys[k] for k in OBJECTIVE_KEYS}))
    sizes = {n: sum(p.numel() for p in m.parameters()) for n, m in (("g", generator), ("d", discriminator))}
    log(
        f"gan: {net.arch}, G {sizes['g'] / 1e6:.2f}M and D {sizes['d'] / 1e6:.2f}M parameters, "
        f"{resolution}x{resolution}x{net.channels}, CLIP embedding {embed_dim}"
    )
    items = [test[i] for i in range(len(test))]
    test_images = prepare_images(torch.stack([s["image"] for s in items]), crop, net.channels)
    test_captions = [s["caption"] for s in items]

    start = time.monotonic()
    info, trainer, monitor = _train(objective, clip, dataset, config, keys, out, opts, crop, test_images, test_captions)
    log(
        f"trained {info['step']} steps in {info['wall_seconds']:.0f} s ({info['stop_reason']}, "
        f"{info['samples_per_second']} samples/s, final losses {info['final_losses']})"
    )
    ema = trainer.ema_model.eval()
    folder = out / "gan"
    if trainer.accelerator.is_main_process:
        ema.save_pretrained(folder)
    report = {
        "dataset": config.data.dataset,
        "preset": config.preset,
        "arch": net.arch,
        "resolution": resolution,
        "channels": net.channels,
        "conditioning": evaluate_gan(ema, clip, test_images, test_captions),
        "diversity_ratio": round(monitor.diversity_ratio(), 4),
        "warnings": monitor.warnings,
        "parameters": {"generator": sizes["g"], "discriminator": sizes["d"]},
        "train": info,
        "wall_seconds": round(time.monotonic() - start, 1),
    }
    if trainer.accelerator.is_main_process:
        write_json_atomic(folder / "report.json", report)
        entry = {"folder": "gan", "arch": net.arch, "image_size": resolution, "channels": net.channels}
        write_index(out, entry, clip, config.data.dataset, resolution)
    c = report["conditioning"]
    log(
        f"gan on {c['samples']} held-out captions: CLIP cosine with the caption {c['clip_cosine_generated']:.3f} "
        f"(unrelated captions {c['clip_cosine_generated_unrelated']:.3f}; real images {c['clip_cosine_real']:.3f}), "
        f"diversity ratio {report['diversity_ratio']:.3f}, {c['sampling_images_per_second']:.0f} images/s"
    )
    log(f"wrote {folder} and {out / 'model_index.json'}")
    return report


def _train(objective, clip, dataset, config, keys, out, opts, crop, test_images, test_captions):
    from dalle2.data.base import tensor_to_pil
    from dalle2.stages.gan_monitor import CollapseMonitor
    from dalle2.training.phases import Phase
    from dalle2.training.trainer import Trainer

    channels = objective.generator.config.channels
    held: dict[str, Any] = {}  # the batch the discriminator phase embedded, for the generator phase

    def embed(batch: dict[str, Any]) -> torch.Tensor:
        if held.get("batch") is not batch:
            held.update(batch=batch, embeds=sentence_embeddings(clip, batch["caption"]))
        return held["embeds"]

    def d_loss(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = prepare_images(batch["image"], crop, channels)
        return model("discriminator", images, embed(batch).to(images.device))

    def g_loss(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model("generator", embeds=embed(batch).to(batch["image"].device))

    n = min(PREVIEW_PROMPTS, len(test_captions))
    preview = sentence_embeddings(clip, test_captions[:n]).cpu()
    g = torch.Generator().manual_seed(1234)
    z_dim = objective.generator.z_dim
    preview_noise = torch.randn(PREVIEW_NOISE, z_dim, generator=g)
    monitor_noise = torch.randn(MONITOR_NOISE, z_dim, generator=g)

    def sample_fn(ema: torch.nn.Module, step: int) -> list[Any]:
        device = next(ema.parameters()).device
        s = preview.to(device).repeat_interleave(PREVIEW_NOISE, 0)
        fake = ema(preview_noise.to(device).repeat(n, 1), s).view(n, PREVIEW_NOISE, *test_images.shape[1:])
        tiles = [x for i in range(n) for x in (test_images[i], *fake[i])]
        return [tensor_to_pil(x) for x in tiles]

    lr, opt = config.train.learning_rate, "sgd" if keys["optimizer"] == "sgd" else "adamw"
    common = {"optimizer": opt, "betas": (keys["beta1"], keys["beta2"]), "momentum": keys["momentum"],
              "max_grad_norm": keys["max_grad_norm"] or None}  # fmt: skip
    phases = [
        Phase("discriminator", d_loss, "discriminator", learning_rate=lr * keys["d_lr_scale"], **common),
        Phase("generator", g_loss, "generator", learning_rate=lr, **common),
    ]
    trainer: Trainer | None = None
    monitor = CollapseMonitor(
        lambda: trainer.ema_model,  # type: ignore[union-attr]
        preview,
        monitor_noise,
        test_images,
        accuracy=keys["collapse_accuracy"],
        patience=keys["collapse_patience"],
        ratio=keys["mode_collapse_ratio"],
        every=keys["monitor_every"],
    )
    trainer = Trainer(
        objective,
        phases,
        dataset,
        config.train,
        out / "training" / "gan",
        ema_decay=keys["ema_decay"],
        ema_of="generator",
        log_with=default_trackers(opts),
        stage_name="gan",
        sample_fn=sample_fn,
        sample_every=keys["sample_every"],
        warmup_steps=0,
        min_lr_ratio=1.0,  # constant learning rates, as GANs are usually trained
        num_workers=config.data.num_workers,
        run_config={**config.to_dict(), "gan": keys},
        progress=bool(opts.get("progress", True)) and not opts.get("quiet"),
        on_log=monitor,
    )
    clip.to(trainer.accelerator.device)
    result = trainer.train(resume=bool(opts.get("resume")))
    info = {k: v for k, v in train_summary(result).items() if k != "final_loss"}
    info["final_losses"] = {k: round(v, 4) for k, v in (result.final_losses or {}).items()}
    return info, trainer, monitor
