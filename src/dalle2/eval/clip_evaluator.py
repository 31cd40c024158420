"""The evaluation CLIP behind CLIP score (specs/evaluation.md section 4).

A small :class:`~dalle2.eval.networks.EvalCLIP` (CNN image tower, Transformer text tower) plus its own
BPE tokenizer, trained with the symmetric contrastive loss on a dataset's (image, caption) pairs and
shipped as ``dalle2/assets/evaluators/clip-<dataset>-v1/`` (``config.json``, ``model.safetensors``,
``tokenizer.json``). It is trained separately from every generator's CLIP (own seed, own tokenizer,
different architecture), so a generator cannot score itself.

- :func:`train_eval_clip` trains and saves one (``dalle2 train evaluators --which clip-shapes``) and
  records held-out retrieval recall and matched/shuffled CLIP score in its ``config.json``.
- :class:`ClipScorer` loads one and scores images against prompts: per image
  ``100 * max(cos(E_image, E_text), 0)`` (Hessel et al. 2021, CLIPScore with w = 100).
- :func:`prepare_images` turns PIL images, uint8 tensors or float tensors in [-1, 1] of any size into
  the tower's input, a float tensor ``(N, 3, 64, 64)`` in [-1, 1] (bicubic, antialiased).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dalle2.data.base import resize_center_crop
from dalle2.eval.metrics import clip_score
from dalle2.eval.networks import (
    ConvNetConfig,
    EvalCLIP,
    EvalCLIPConfig,
    EvaluatorError,
    load_evaluator,
    save_evaluator,
    shipped_dir,
)
from dalle2.eval.train_evaluators import stack_images, to_float
from dalle2.text import Tokenizer

__all__ = [
    "DEFAULT_CLIP_CONFIG",
    "ClipScorer",
    "evaluate_retrieval",
    "prepare_images",
    "train_eval_clip",
]

RESOLUTION = 64
#: The shipped model's schedule: 320 x 256 pairs (about 2.7 passes over the 30 000-pair pool), about
#: 5.5 minutes on 2 shared CPU cores with ``threads=1``.
DEFAULT_STEPS = 320
DEFAULT_BATCH_SIZE = 256
VOCAB_SIZE = 1000
MAX_LENGTH = 32

#: Architecture of the shipped evaluation CLIPs. The image tower is thin at full resolution: training
#: time on a CPU is dominated by memory-bound BatchNorm/ReLU over the 64x64 activations, so the first
#: stage has 8 channels and five stages bring 64x64 down to 2x2 (measured: about 4x faster per step
#: than ``widths=(32, 64, 128, 128)`` at equal batch size).
DEFAULT_CLIP_CONFIG = EvalCLIPConfig(
    vocab_size=VOCAB_SIZE,
    max_length=MAX_LENGTH,
    width=128,
    layers=2,
    heads=4,
    embed_dim=128,
    image=ConvNetConfig(
        in_channels=3, resolution=RESOLUTION, widths=(8, 16, 32, 64, 128), feature_dim=128, heads={}, dropout=0.0
    ),
)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def _center_crop_square(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == w:
        return x
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def prepare_images(images: Any, resolution: int = RESOLUTION) -> torch.Tensor:
    """Images -> float32 tensor ``(N, 3, resolution, resolution)`` in [-1, 1] for the image tower.

    Accepts a PIL image or a list of them (any mode and size: converted to RGB, non-square ones
    centre-cropped), a uint8 tensor/array ``(N, C, H, W)`` or ``(C, H, W)`` in [0, 255], or a float
    tensor/array of the same shapes in [-1, 1] (clamped). ``C`` is 3 or 1 (grayscale is replicated).
    Images of another size are resized with antialiased bicubic filtering.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        if all(isinstance(im, Image.Image) for im in images):
            arrays = []
            for im in images:
                im = im.convert("RGB")
                if im.size != (resolution, resolution):
                    im = resize_center_crop(im, resolution)
                arrays.append(np.asarray(im, dtype=np.uint8))
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, R, R) uint8
            return to_float(x).contiguous()
        if all(isinstance(im, torch.Tensor) for im in images):
            images = torch.stack(list(images))
        else:
            raise ValueError("a list of images must hold only PIL images or only tensors")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be PIL images, a tensor or an array, got {type(images).__name__}")
    x = images.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image tensors must be (N, 3, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = to_float(x)
    elif x.is_floating_point():
        x = x.float().clamp(-1.0, 1.0)
    else:
        raise ValueError(f"image tensors must be uint8 in [0, 255] or float in [-1, 1], got {x.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = _center_crop_square(x)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(-1.0, 1.0)
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing all-padding columns (exactly equivalent: padding is masked out everywhere)."""
    length = max(1, int(mask.sum(1).max()))
    return ids[:, :length], mask[:, :length]


class ClipScorer:
    """A frozen evaluation CLIP with its tokenizer: ``score(images, prompts)`` -> CLIP score per image."""

    def __init__(
        self, model: EvalCLIP, tokenizer: Tokenizer, info: dict[str, Any] | None = None, batch_size: int = 256
    ):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise EvaluatorError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {model.config.vocab_size}"
            )
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.tokenizer = tokenizer
        self.info = info or {}
        self.batch_size = batch_size
        self.resolution: int = model.config.image.resolution
        self.name: str = self.info.get("name", "clip")

    @classmethod
    def load(cls, name_or_path: str | Path = "clip-shapes-v1", batch_size: int = 256) -> ClipScorer:
        """Load by shipped name (``clip-shapes-v1``) or from a folder written by :func:`train_eval_clip`."""
        model, meta = load_evaluator(name_or_path)
        if not isinstance(model, EvalCLIP):
            raise EvaluatorError(f"evaluator {name_or_path!r} is a {type(model).__name__}, not an EvalCLIP")
        folder = Path(name_or_path)
        if not folder.is_dir():
            folder = shipped_dir() / str(name_or_path)
        return cls(model, Tokenizer.load(folder), meta, batch_size=batch_size)

    @torch.no_grad()
    def embed_images(self, images: Any) -> torch.Tensor:
        """Images (see :func:`prepare_images`) -> L2-normalised embeddings ``(N, embed_dim)`` float32."""
        x = prepare_images(images, self.resolution)
        out = [
            self.model.encode_image(x[i : i + self.batch_size].contiguous(memory_format=torch.channels_last))
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised embeddings ``(N, embed_dim)`` float32."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        ids, mask = self.tokenizer.encode(prompts)
        out = []
        for i in range(0, len(ids), self.batch_size):
            out.append(self.model.encode_text(*_trim(ids[i : i + self.batch_size], mask[i : i + self.batch_size])))
        return torch.cat(out)

    def score(self, images: Any, prompts: str | Sequence[str]) -> np.ndarray:
        """Per-image CLIP score ``100 * max(cos(image, prompt), 0)`` as float64 ``(N,)``.

        ``prompts`` has one prompt per image, or is a single string used for every image.
        """
        zi = self.embed_images(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(zi)
        if len(prompts) != len(zi):
            raise ValueError(f"got {len(zi)} images but {len(prompts)} prompts")
        zt = self.embed_texts(prompts)
        cos = (zi.double() * zt.double()).sum(1)
        return (100.0 * cos.clamp(min=0)).numpy()

    def __repr__(self) -> str:
        return f"ClipScorer({self.name!r}, resolution={self.resolution})"


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _pool(dataset: str, split: str, n: int, seed: int, resolution: int, desc: str) -> tuple[torch.Tensor, list[str]]:
    """``n`` (image, caption) pairs of a split as uint8 ``(n, 3, R, R)`` plus captions."""
    name = dataset.partition(":")[0]
    if name == "shapes":
        from dalle2.data.shapes import ShapesDataset, render

        ds = ShapesDataset(split=split, resolution=resolution, seed=seed, length=n)
        images = torch.empty((n, 3, resolution, resolution), dtype=torch.uint8)
        captions = []
        for i in tqdm(range(n), desc=desc, unit="img", leave=False):  # render directly: no float round trip
            scene, caption = ds.scene(i)
            images[i] = torch.from_numpy(np.array(render(scene, resolution))).permute(2, 0, 1)
            captions.append(caption)
        return images, captions
    from dalle2.data import open_dataset

    ds = open_dataset(dataset, split=split, resolution=resolution, seed=seed)
    if len(ds) < n:
        raise EvaluatorError(f"{dataset} {split} has {len(ds)} samples, fewer than the {n} asked for")
    images, _, captions = stack_images(ds, limit=n, desc=desc)
    return images, captions


@torch.no_grad()
def evaluate_retrieval(
    model: EvalCLIP,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    captions: Sequence[str],
    group: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out metrics on paired (image, caption) rows.

    Recall@k: within consecutive groups of ``group`` pairs, the fraction of captions whose own image
    ranks in the top k of the group's images (``t2i``) and vice versa (``i2t``); chance is k/group.
    CLIP score: mean ``100 * max(cos, 0)`` of matched pairs and of the same captions shuffled.
    """
    scorer = ClipScorer(model, tokenizer)
    zi, zt = scorer.embed_images(images), scorer.embed_texts(list(captions))
    n = (len(zi) // group) * group
    if n == 0:
        raise EvaluatorError(f"need at least {group} pairs for retrieval among {group}, got {len(zi)}")
    hits = {f"{d}_recall@{k}": 0 for d in ("t2i", "i2t") for k in (1, 5)}
    for start in range(0, n, group):
        sim = zi[start : start + group] @ zt[start : start + group].T  # (images, texts)
        own = sim.diagonal()
        # rank = number of candidates scoring strictly higher than the true partner
        rank_t2i = (sim > own[None, :]).sum(0)  # per text: images above its own image
        rank_i2t = (sim > own[:, None]).sum(1)  # per image: texts above its own text
        for k in (1, 5):
            hits[f"t2i_recall@{k}"] += int((rank_t2i < k).sum())
            hits[f"i2t_recall@{k}"] += int((rank_i2t < k).sum())
    metrics: dict[str, float] = {k: round(v / n, 4) for k, v in hits.items()}
    perm = torch.randperm(len(zt), generator=torch.Generator().manual_seed(seed))
    metrics["clip_score_matched"] = round(clip_score(zi, zt), 3)
    metrics["clip_score_shuffled"] = round(clip_score(zi, zt[perm]), 3)
    metrics["pairs"] = len(zi)
    metrics["candidates"] = group
    return metrics


def _param_groups(model: EvalCLIP, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_eval_clip(
    dataset: str = "shapes",
    out: str | Path = "evaluators",
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 1234,
    resolution: int = RESOLUTION,
    *,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    pool_size: int = 30_000,
    test_pairs: int = 1000,
    config: EvalCLIPConfig | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the evaluation CLIP ``clip-<dataset>-v1`` and save it (with ``tokenizer.json``) under ``out``.

    A BPE tokenizer (vocab 1000, length 32) is trained on the pool's captions; then ``steps`` AdamW
    steps (one-cycle LR, channels_last, float32) of the symmetric contrastive loss over random
    batches from a pool of ``pool_size`` training pairs rendered once and kept as uint8. At the end
    the model is measured on ``test_pairs`` pairs of the test split (see :func:`evaluate_retrieval`).
    ``config`` overrides the architecture (tests use tiny ones). ``threads`` sets torch's intra-op
    threads for the call (restored afterwards): on a CPU shared with other jobs, ``threads=1`` was
    measured 7x faster per step than 2 threads on 2 cores, which stall at every op's barrier.
    Returns the ``info`` written to ``config.json``.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(
            dataset, out, steps, batch_size, seed, resolution, lr, weight_decay, pool_size, test_pairs, config, progress
        )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    dataset: str,
    out: str | Path,
    steps: int,
    batch_size: int,
    seed: int,
    resolution: int,
    lr: float,
    weight_decay: float,
    pool_size: int,
    test_pairs: int,
    config: EvalCLIPConfig | None,
    progress: bool,
) -> dict[str, Any]:
    if steps < 1 or batch_size < 2:
        raise EvaluatorError(f"need steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    start_all = time.time()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    name = dataset.partition(":")[0]
    images, captions = _pool(dataset, "train", pool_size, seed, resolution, desc="train pairs")
    tokenizer = Tokenizer.train(captions, vocab_size=VOCAB_SIZE, max_length=MAX_LENGTH)
    ids, mask = tokenizer.encode(captions)  # (P, L)

    config = copy.deepcopy(config or DEFAULT_CLIP_CONFIG)
    config.vocab_size = max(config.vocab_size, tokenizer.vocab_size)
    config.max_length = tokenizer.max_length
    config.image.resolution = resolution
    model = EvalCLIP(config).to(memory_format=torch.channels_last)  # channels_last: ~5x faster convs on CPU
    # fused: one kernel per tensor (measured 10x faster than the default per-op loop on this CPU)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    batch_size = min(batch_size, len(images))
    per_epoch = len(images) // batch_size
    order = torch.randperm(len(images), generator=generator)
    model.train()
    start = time.time()
    bar = tqdm(range(steps), desc=f"clip-{name}", disable=not progress)
    loss_ema = None
    for step in bar:
        j = step % per_epoch
        if j == 0 and step > 0:
            order = torch.randperm(len(images), generator=generator)
        idx = order[j * batch_size : (j + 1) * batch_size]
        x = to_float(images[idx]).contiguous(memory_format=torch.channels_last)
        loss = model.loss(x, *_trim(ids[idx], mask[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"contrastive loss became {value} at step {step}")
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss_ema:.3f}", T=f"{model.logit_scale.exp().item():.1f}")
    bar.close()
    train_seconds = time.time() - start
    model.eval()

    test_images, test_captions = _pool(dataset, "test", test_pairs, 0, resolution, desc="test pairs")
    metrics = evaluate_retrieval(model, tokenizer, test_images, test_captions, group=100, seed=seed)
    command = f"dalle2 train evaluators --which clip-{name} --seed {seed}"
    if steps != DEFAULT_STEPS:
        command += f" --steps {steps}"
    if batch_size != DEFAULT_BATCH_SIZE:
        command += f" --batch-size {batch_size}"
    info = {
        "name": f"clip-{name}-v1",
        "version": 1,
        "purpose": "evaluation CLIP for CLIP score: 100 * max(cos(E_image, E_text), 0) (Hessel et al. 2021)",
        "dataset": dataset,
        "seed": seed,
        "resolution": resolution,
        "train_pairs": len(images),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "threads": torch.get_num_threads(),
        "final_loss": round(float(loss_ema), 4) if loss_ema is not None else None,
        "tokenizer": {"file": "tokenizer.json", "vocab_size": tokenizer.vocab_size, "max_length": tokenizer.max_length},
        "test_split": {"split": "test", "seed": 0, "pairs": len(test_images)},
        "test_metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start_all, 1),
        "trained_with": command,
    }
    folder = save_evaluator(model, Path(out) / f"clip-{name}-v1", info)
    tokenizer.save(folder)
    return info
