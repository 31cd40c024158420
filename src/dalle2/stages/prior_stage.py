"""``dalle2 train prior``: train the diffusion prior of an unCLIP pipeline folder, then report.

Steps: resolve the config (preset < ``--config`` YAML < ``--set`` < dedicated options; the ``prior``
section holds :class:`~dalle2.models.prior.PriorConfig` fields plus the stage keys of
:data:`dalle2.presets.STAGE_PRESETS`), load the frozen CLIP of ``OUT/clip`` (trained by ``dalle2 train clip``),
encode a pool of training pairs once (text embedding z_t, token hidden states + mask, image embedding
z_i; batched, no grad), compute :class:`~dalle2.models.prior.EmbeddingStats` from the pool's z_i, train
the :class:`~dalle2.models.prior.DiffusionPrior` on the pool with the shared
:class:`~dalle2.training.trainer.Trainer` (EMA, checkpoints under ``OUT/training/prior``, ``--resume``),
write ``OUT/prior/`` (EMA weights: config.json, model.safetensors, embedding_stats.safetensors) and merge
a ``prior`` entry into ``OUT/model_index.json``.

The prior's ``embed_dim``, ``text_width`` and ``max_text_len`` always come from the CLIP (its joint
embedding size, its text tower width and its tokenizer length), whatever the preset says.

The report (printed and written to ``OUT/prior/report.json``), on held-out (test split) pairs: mean
cosine similarity of the prior's sampled z_i to the true z_i, against the text-embedding baseline
(z_t used directly; same CLIP space) and the unrelated-caption control (prior output for caption A vs
true z_i of caption B).

The pool is re-encoded on ``--resume`` (deterministic: same CLIP, same data seed), not cached.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from dalle2.errors import Dalle2Error
from dalle2.folder_format import update_model_index, write_json_atomic
from dalle2.models.prior import DiffusionPrior, EmbeddingStats, PriorConfig, prior_report
from dalle2.stages.common import (
    default_trackers,
    load_frozen_clip,
    printer,
    resolve_options,
    stage_options,
    train_summary,
)

__all__ = ["PriorStageError", "encode_pairs", "train_prior"]

ENCODE_BATCH = 256


class PriorStageError(Dalle2Error):
    """The prior stage cannot run (missing CLIP, bad preset or key); the message says what to do."""


# -- configuration -----------------------------------------------------------------------------------


def _prior_config(section: dict[str, Any], clip_dims: dict[str, int]) -> PriorConfig:
    try:
        return PriorConfig.from_dict({**section, **clip_dims})
    except (TypeError, Dalle2Error) as error:
        raise PriorStageError(f"invalid prior section: {error}") from None


# -- the CLIP pool -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_pairs(clip: Any, dataset: Any, count: int, batch: int = ENCODE_BATCH, log=None) -> dict[str, torch.Tensor]:
    """The first ``count`` samples of ``dataset`` through the frozen CLIP -> dict of tensors:
    ``image_embed`` (N, D), ``text_embed`` (N, D), ``text_tokens`` (N, L, W) float16, ``text_mask`` (N, L)."""
    n = min(count, len(dataset))
    parts: dict[str, list[torch.Tensor]] = {"image_embed": [], "text_embed": [], "text_tokens": [], "text_mask": []}
    device = clip.logit_scale.device
    start = time.monotonic()
    for i in range(0, n, batch):
        items = [dataset[j] for j in range(i, min(n, i + batch))]
        images = torch.stack([s["image"] for s in items]).to(device)
        emb, hidden, mask = clip.encode_prompts([s["caption"] for s in items])
        parts["image_embed"].append(clip.encode_image(images).float().cpu())
        parts["text_embed"].append(emb.float().cpu())
        parts["text_tokens"].append(hidden.to(torch.float16).cpu())
        parts["text_mask"].append(mask.bool().cpu())
        if log is not None and (i // batch) % 20 == 19:
            log(f"  encoded {i + len(items)}/{n} pairs ({time.monotonic() - start:.0f} s)")
    return {k: torch.cat(v) for k, v in parts.items()}


class _Pool(Dataset):
    """Encoded pairs as a map-style dataset of dicts (token encodings back to float32)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = tensors

    def __len__(self) -> int:
        return self.t["image_embed"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image_embed": self.t["image_embed"][i],
            "text_embed": self.t["text_embed"][i],
            "text_tokens": self.t["text_tokens"][i].float(),
            "text_mask": self.t["text_mask"][i],
        }


def _collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in batch]) for k in batch[0]}


# -- report ------------------------------------------------------------------------------------------


def _format(report: dict[str, Any]) -> str:
    c = report["cosine"]
    return "\n".join(
        [
            f"prior on {report['samples']} held-out {report['dataset']} pairs "
            f"({report['sampler']}, {report['sample_steps']} steps, {report['num_candidates']} candidates, "
            f"guidance {report['guidance_scale']}):",
            f"  cos(prior z_i, true z_i)           {c['prior']:.3f}",
            f"  cos(z_t, true z_i)  text baseline  {c['text_baseline']:.3f}",
            f"  cos(prior z_i(A), true z_i(B))     {c['unrelated_caption']:.3f}  (unrelated-caption control)",
            f"  cos(pool mean z_i, true z_i)       {c['mean_image_embedding']:.3f}  (text-blind control)",
        ]
    )


def evaluate_prior(prior: DiffusionPrior, pairs: dict[str, torch.Tensor], seed: int = 0) -> dict[str, Any]:
    """Cosine similarities on encoded held-out pairs (see :func:`dalle2.models.prior.prior_report`)."""
    prior.eval()
    device = next(prior.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    result = prior_report(
        prior,
        pairs["image_embed"].to(device),
        pairs["text_embed"].to(device),
        pairs["text_tokens"].float().to(device),
        pairs["text_mask"].to(device),
        generator=generator,
    )
    result.pop("n", None)
    # a prior that ignored the text and answered the pool's mean image embedding would score this
    mean = prior.stats.mean.to(device).expand_as(pairs["image_embed"])
    result["mean_image_embedding"] = (
        torch.nn.functional.cosine_similarity(mean.float(), pairs["image_embed"].to(device).float(), dim=-1)
        .mean()
        .item()
    )
    return {k: round(float(v), 4) for k, v in result.items()}


# -- the stage ---------------------------------------------------------------------------------------


def train_prior(args: argparse.Namespace | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the stage; ``args`` is the argparse namespace or a dict (keyword arguments also work).

    Keys: ``out`` (required; must hold ``clip/``), ``data`` (default: the config's), ``preset`` ("cpu"),
    ``config`` (YAML), ``overrides`` (list of ``section.key=value``), ``resume``, ``max_steps``,
    ``max_minutes``, ``log_with`` (tracker names or None), ``progress`` (bool), ``quiet`` (bool).
    Returns the report (also in ``OUT/prior/report.json``).
    """
    opts = stage_options(args, kwargs)
    if not opts.get("out"):
        raise PriorStageError("the prior stage needs the pipeline folder (--out DIR) holding a trained CLIP")
    log = printer(bool(opts.get("quiet")))

    out = Path(opts["out"])
    config, model_section, stage = resolve_options("prior", opts)  # the section: every PriorConfig field
    clip = load_frozen_clip(out, "prior", PriorStageError)

    from dalle2.data import open_dataset

    resolution = clip.image_size if clip.source == "trained" else config.data.resolution
    dataset = open_dataset(
        config.data.dataset, split="train", resolution=resolution, seed=config.data.seed, length=stage["pool_size"]
    )
    test = open_dataset(config.data.dataset, split="test", resolution=resolution, seed=0, length=stage["eval_samples"])
    start = time.monotonic()
    pool = encode_pairs(clip, dataset, stage["pool_size"], log=log)
    n, length, width = pool["text_tokens"].shape
    log(f"encoded a pool of {n} {config.data.dataset} pairs with the frozen CLIP in {time.monotonic() - start:.0f} s")
    clip_dims = {"embed_dim": pool["image_embed"].shape[1], "text_width": width, "max_text_len": length}
    prior_config = _prior_config(model_section, clip_dims)
    stage_info = {**stage, "pool_size": n}
    log(config.to_yaml() + yaml.safe_dump({"prior": {**asdict(prior_config), **stage_info}}, sort_keys=False).rstrip())
    stats = EmbeddingStats.from_embeddings(pool["image_embed"])
    torch.manual_seed(config.train.seed)  # the prior's initial weights (the Trainer seeds training itself)
    prior = DiffusionPrior(prior_config, stats)

    train_info = _train(prior, _Pool(pool), config, prior_config, stage_info, out, opts)
    ema: DiffusionPrior = train_info.pop("ema_model")
    log(
        f"trained {train_info['step']} steps in {train_info['wall_seconds']:.0f} s "
        f"({train_info['stop_reason']}, final loss {train_info['final_loss']})"
    )
    ema.set_stats(stats)
    ema.eval()
    prior_dir = out / "prior"
    if train_info.pop("is_main"):
        ema.save_pretrained(prior_dir)
    held_out = encode_pairs(clip, test, stage["eval_samples"])
    report: dict[str, Any] = {
        "dataset": config.data.dataset,
        "split": "test",
        "samples": int(held_out["image_embed"].shape[0]),
        "sampler": prior_config.sampler,
        "sample_steps": prior_config.sample_steps,
        "num_candidates": prior_config.num_candidates,
        "guidance_scale": prior_config.guidance_scale,
        "cosine": evaluate_prior(ema, held_out, seed=0),
        "pool_size": n,
        "train": {k: v for k, v in train_info.items() if k != "checkpoint"},
        "wall_seconds": round(time.monotonic() - start, 1),
    }
    prior_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(prior_dir / "report.json", report)
    update_model_index(
        out,
        "prior",
        {"folder": "prior", "embed_dim": prior_config.embed_dim, "sampler": prior_config.sampler},
        kind="unclip",
        defaults={"dataset": config.data.dataset},
    )
    log(_format(report))
    log(f"wrote {prior_dir} and {out / 'model_index.json'}")
    return report


def _train(
    prior: DiffusionPrior,
    pool: Dataset,
    config: Any,
    prior_config: PriorConfig,
    stage: dict[str, Any],
    out: Path,
    opts: dict[str, Any],
) -> dict[str, Any]:
    from dalle2.training.trainer import Trainer

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # through m (the prepared model's forward, as the Trainer needs); noise from the RNG the Trainer saves
        b = batch
        return prior.loss(b["image_embed"], b["text_embed"], b["text_tokens"], b["text_mask"], model=m).mean()

    log_with = default_trackers(opts)
    trainer = Trainer(
        prior,
        loss_fn,
        pool,
        config.train,
        out / "training" / "prior",
        collate_fn=_collate,
        ema_decay=stage["ema_decay"],
        log_with=log_with,
        stage_name="prior",
        run_config={**config.to_dict(), "prior": {**asdict(prior_config), **stage}},
        progress=bool(opts.get("progress", True)) and not opts.get("quiet"),
    )
    result = trainer.train(resume=bool(opts.get("resume")))
    return {
        **train_summary(result),
        "ema_model": trainer.ema_model,
        "is_main": trainer.accelerator.is_main_process,
    }
