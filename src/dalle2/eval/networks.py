"""Evaluator networks: small, frozen, versioned models that define our feature spaces and scorers.

They are trained by project code (``dalle2 train evaluators``), saved as ``config.json`` +
``model.safetensors`` and shipped inside the package under ``dalle2/assets/evaluators/NAME/``, so
evaluation needs no training step and no download. A metric is named after the network that
defines it (``FD_clip-shapes-v1``), so nobody mistakes it for Inception FID.

Architectures differ on purpose from every generator's (a VGG-style CNN here; the generators use
ViT/UNet towers), so a generator cannot share blind spots with its judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2.errors import Dalle2Error
from dalle2.folder_format import (
    COMPONENT_FORMAT_VERSION,
    FolderError,
    load_weights,
    read_component_config,
    save_component,
)


class EvaluatorError(Dalle2Error, RuntimeError):
    """An evaluator network is missing or incompatible."""


@dataclass
class ConvNetConfig:
    in_channels: int = 3
    resolution: int = 32
    widths: tuple[int, ...] = (32, 64, 128)  # one stage (2 convs + pool) per width
    feature_dim: int = 128  # penultimate features (FD space)
    heads: dict[str, int] = field(default_factory=lambda: {"class": 10})  # head name -> outputs
    dropout: float = 0.2
    stem_stride: int = 1  # 2: a strided first convolution halves the input (4x cheaper at 64x64)
    pool: str = "avg"  # "avgmax": concatenate global average and max pooling (small objects survive pooling)


class ConvNet(nn.Module):
    """VGG-style CNN: stages of (conv-BN-ReLU) x 2 + max-pool, global average pool, feature MLP, heads."""

    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        if config.stem_stride > 1:
            width = config.widths[0]
            layers += [
                nn.Conv2d(c_in, width, 3, stride=config.stem_stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
            ]
            layers += [nn.ReLU(inplace=True)]
            c_in = width
        for width in config.widths:
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers)
        pooled = 2 * c_in if config.pool == "avgmax" else c_in
        self.features = nn.Sequential(
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(pooled, config.feature_dim), nn.ReLU()
        )
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, n) for name, n in config.heads.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) in [-1, 1] -> (B, feature_dim) penultimate features."""
        h = self.trunk(x)  # (B, C', R/2^k, R/2^k)
        pooled = h.mean(dim=(2, 3))  # (B, C')
        if self.config.pool == "avgmax":
            pooled = torch.cat([pooled, h.amax(dim=(2, 3))], dim=1)  # (B, 2C')
        return self.features(pooled)  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.embed(x)
        return {name: head(f) for name, head in self.heads.items()}


@dataclass
class EvalCLIPConfig:
    vocab_size: int = 1000
    max_length: int = 32
    width: int = 128
    layers: int = 2
    heads: int = 4
    embed_dim: int = 128
    image: ConvNetConfig = field(
        default_factory=lambda: ConvNetConfig(resolution=64, widths=(32, 64, 128, 128), heads={})
    )


class EvalCLIP(nn.Module):
    """A small CLIP for CLIP score: CNN image tower, Transformer text tower, symmetric InfoNCE (Radford et al. 2021)."""

    def __init__(self, config: EvalCLIPConfig):
        super().__init__()
        self.config = config
        self.image_tower = ConvNet(config.image)
        self.image_proj = nn.Linear(config.image.feature_dim, config.embed_dim, bias=False)
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, 4 * config.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.text_tower = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(config.width)
        self.text_proj = nn.Linear(config.width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as in CLIP

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, embed_dim), L2-normalised."""
        return F.normalize(self.image_proj(self.image_tower.embed(x)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> (B, embed_dim), L2-normalised (masked mean over tokens)."""
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, L, W)
        h = self.text_norm(self.text_tower(h, src_key_padding_mask=~mask))  # (B, L, W)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, W)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Symmetric contrastive loss with a learned temperature."""
        zi, zt = self.encode_image(images), self.encode_text(ids, mask)
        logits = self.logit_scale.clamp(max=4.6052).exp() * zi @ zt.T  # (B, B)
        target = torch.arange(len(images))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _config_to_json(config: Any) -> dict[str, Any]:
    return asdict(config)


def save_evaluator(model: nn.Module, directory: str | Path, info: dict[str, Any]) -> Path:
    """Write ``config.json`` (the component header with the architecture as its class, how it was trained,
    its measured accuracy, ``config``) and ``model.safetensors``, through :mod:`dalle2.folder_format`."""
    return save_component(directory, model, {**info, "config": _config_to_json(model.config)}, type(model).__name__)


def _build(meta: dict[str, Any]) -> nn.Module:
    cfg = dict(meta["config"])
    if meta["architecture"] == "ConvNet":
        return ConvNet(ConvNetConfig(**{**cfg, "widths": tuple(cfg["widths"])}))
    if meta["architecture"] == "EvalCLIP":
        image = cfg.pop("image")
        return EvalCLIP(EvalCLIPConfig(**cfg, image=ConvNetConfig(**{**image, "widths": tuple(image["widths"])})))
    raise EvaluatorError(f"unknown evaluator architecture {meta['architecture']!r}")


def shipped_dir() -> Path:
    """Where the package keeps its evaluator networks."""
    return Path(str(resources.files("dalle2") / "assets" / "evaluators"))


def load_evaluator(name_or_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a frozen evaluator (eval mode, no grad) by shipped name (``fashion-mnist-v1``) or folder."""
    path = Path(name_or_path)
    if not path.is_dir():
        path = shipped_dir() / str(name_or_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        available = sorted(p.name for p in shipped_dir().glob("*") if (p / "config.json").is_file())
        raise EvaluatorError(
            f"evaluator {name_or_path!r} not found (looked in {path}); shipped: {', '.join(available) or 'none'}; "
            "train one with `dalle2 train evaluators`"
        )
    try:
        cls_name, meta = read_component_config(path)
        meta = {"format_version": COMPONENT_FORMAT_VERSION, "architecture": cls_name, **meta}
        model = _build(meta)
        load_weights(model, path)
    except FolderError as error:
        raise EvaluatorError(f"{error}; retrain it with `dalle2 train evaluators`") from None
    model.eval().requires_grad_(False)
    return model, meta
