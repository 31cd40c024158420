"""Text-conditional GAN networks: a generator G(z, s) and a discriminator D(x, s) -> logit.

``s`` is the frozen CLIP sentence embedding of the caption (L2-normalised, ``embed_dim`` wide); ``z`` is
Gaussian noise. Two architectures (``GanConfig.arch``):

* ``dfgan`` (default; DF-GAN, Tao et al. 2022, and its GALIP successor): G maps z by a linear layer to a
  4x4 feature map, then upsampling blocks whose features are modulated, before each convolution, by a
  per-channel scale and shift predicted from [s, z] (the DFBlock's "deep fusion"); a tanh image at
  ``image_size``. D: a 3x3 convolution, then residual strided blocks down to a 4x4 feature map, which is
  concatenated with s broadcast over it, convolved and reduced to one logit: the matching-aware head
  judges whether the image is real *and* fits the caption. Channels double at each halving of the
  resolution, from ``g_width`` / ``d_width`` at full resolution up to ``max_mult`` times that.
* ``article`` (the founding article's Keras recipe, done right): a dense G on [z, s], 128-256-512-1024
  units with LeakyReLU 0.2 (BatchNorm after the 256, 512 and 1024 layers; Keras' momentum 0.8 is
  PyTorch's 0.2, and Keras' epsilon 1e-3 is kept), then a tanh layer to the image; a D of four 3x3
  convolutions of stride 2 (32-64-128-256, LeakyReLU 0.2), flattened, concatenated with s and mapped
  to one logit (the article's sigmoid output is applied inside the BCE loss).

Spectral normalisation of every discriminator layer is optional (``spectral_norm``). The generator alone
is what a GAN pipeline folder ships: ``Generator.save_pretrained`` / ``Generator.from_pretrained``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2.errors import InvalidConfigError
from dalle2.folder_format import CONFIG_FILE, load_component_config, load_weights, save_component

__all__ = ["ARCHS", "Discriminator", "GanConfig", "GanConfigError", "Generator", "sentence_embeddings"]

ARCHS = ("dfgan", "article")
EMBED_SCALES = ("none", "unit")


class GanConfigError(InvalidConfigError):
    """A GAN network config is invalid; the message names the key."""


@dataclass
class GanConfig:
    """Network hyper-parameters (sizes from the data and the CLIP are filled in by the stage)."""

    arch: str = "dfgan"  # dfgan | article
    image_size: int = 32
    channels: int = 3  # image channels: 1 (grayscale data) or 3
    embed_dim: int = 128  # CLIP sentence embedding width
    z_dim: int = 100
    g_width: int = 32  # dfgan: generator channels at full resolution
    d_width: int = 32  # dfgan: discriminator channels at full resolution
    max_mult: int = 8  # dfgan: channels grow x2 per halving of the resolution, at most x max_mult
    dense_widths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])  # article G
    conv_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # article D
    spectral_norm: bool = False  # on every discriminator layer
    #: dfgan D: add the projection term <W s, mean-pooled features> to the logit (Miyato & Koyama 2018)
    projection: bool = False
    #: how the unit-norm sentence embedding s enters both networks: "none" as is (each component about
    #: 1/sqrt(embed_dim), ten times smaller than z's), "unit" times sqrt(embed_dim) (unit variance per
    #: component, like z), so the condition is not drowned by the noise at initialisation
    embed_scale: str = "none"
    #: dfgan D: append the minibatch standard deviation (Karras et al. 2018) over groups of this many images
    #: as one more 4x4 feature map, so D can see a batch with too little variety (0 = off)
    minibatch_std: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}"),
            (self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}"),
            (
                self.embed_scale in EMBED_SCALES,
                f"embed_scale must be one of {', '.join(EMBED_SCALES)}, got {self.embed_scale!r}",
            ),
            (self.embed_dim >= 1 and self.z_dim >= 1, "embed_dim and z_dim must be >= 1"),
            (self.minibatch_std >= 0, f"minibatch_std must be >= 0 (0 = off), got {self.minibatch_std}"),
            (self.g_width >= 1 and self.d_width >= 1 and self.max_mult >= 1, "widths and max_mult must be >= 1"),
            (all(w >= 1 for w in self.dense_widths) and len(self.dense_widths) >= 1, "dense_widths: >= 1 each"),
            (all(w >= 1 for w in self.conv_widths) and len(self.conv_widths) >= 1, "conv_widths: >= 1 each"),
        ]
        if self.arch != "dfgan":
            checks.append(
                (self.minibatch_std == 0, "minibatch_std is a dfgan discriminator layer; use 0 with arch article")
            )
        if self.arch == "dfgan":
            blocks = math.log2(self.image_size / 4) if self.image_size >= 8 else -1
            checks.append(
                (
                    blocks >= 1 and blocks == int(blocks),
                    f"the dfgan networks need image_size = 4 x a power of two (8, 16, 32, 64, ...), "
                    f"got {self.image_size}",
                )
            )
        else:
            checks.append(
                (8 <= self.image_size <= 128, f"the article networks need image_size 8..128, got {self.image_size}")
            )
        for ok, message in checks:
            if not ok:
                raise GanConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GanConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GanConfigError(f"unknown GAN network keys {', '.join(unknown)}; keys: {', '.join(sorted(known))}")
        return cls(**data)

    @property
    def embed_gain(self) -> float:
        """The factor the sentence embedding is multiplied by before it enters G and D."""
        return math.sqrt(self.embed_dim) if self.embed_scale == "unit" else 1.0

    def widths(self, base: int) -> dict[int, int]:
        """dfgan channels per resolution: ``base`` at full size, doubling per halving, capped at base * max_mult."""
        out, r = {}, self.image_size
        while r >= 4:
            out[r] = base * min(self.max_mult, self.image_size // r)
            r //= 2
        return out


@torch.no_grad()
def sentence_embeddings(clip: Any, captions: list[str]) -> torch.Tensor:
    """CLIP sentence embeddings (B, D) of captions. For a trained CLIP text tower (causal) the all-padding
    columns are dropped first: the same embeddings (to float rounding), 2-3x faster on short captions."""
    if clip.text_encoder != "clip" or clip.source != "trained":
        return clip.encode_prompts(captions)[0].float()
    ids, mask = clip.tokenize(captions)
    keep = int(mask.long().sum(1).max().clamp_min(1))
    return clip.encode_text(ids[:, :keep], mask[:, :keep])[0].float()


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if on else layer


# -- DF-GAN ------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """Per-channel scale and shift predicted from the condition; identity at initialisation (as DF-GAN)."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(cond_dim, channels)
        self.out = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.out(F.relu(self.hidden(cond))).chunk(2, dim=1)
        return gamma[:, :, None, None] * x + beta[:, :, None, None]


class Fusion(nn.Module):
    """DF-GAN's deep fusion: two affine modulations, each followed by LeakyReLU 0.2."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.a0, self.a1 = Affine(cond_dim, channels), Affine(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.a0(x, cond), 0.2)
        return F.leaky_relu(self.a1(x, cond), 0.2)


class UpBlock(nn.Module):
    """x2 nearest upsampling, [fusion, 3x3 conv] twice, plus a (1x1 when the width changes) shortcut."""

    def __init__(self, cond_dim: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.fuse1, self.conv1 = Fusion(cond_dim, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.fuse2, self.conv2 = Fusion(cond_dim, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(self.fuse1(x, cond))
        h = self.conv2(self.fuse2(h, cond))
        return self.shortcut(x) + h


class DownBlock(nn.Module):
    """DF-GAN's discriminator block: 4x4 stride-2 conv, 3x3 conv (LeakyReLU 0.2), added to the
    average-pooled (1x1-convolved) input, the residual scaled by a learned gain that starts at 0."""

    def __init__(self, c_in: int, c_out: int, spectral: bool) -> None:
        super().__init__()
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), spectral)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, padding=1), spectral)
        self.shortcut = _sn(nn.Conv2d(c_in, c_out, 1), spectral) if c_in != c_out else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2)
        return self.shortcut(F.avg_pool2d(x, 2)) + self.gamma * h  # pool, then 1x1: the same, 4x cheaper


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """(B, 1, H, W): the standard deviation over each group of ``group`` consecutive images, averaged over
    channels and pixels, broadcast back to every image of the group (StyleGAN's layer). The discriminator
    batch holds real, fake and mismatched pairs in consecutive blocks, so groups never mix kinds when the
    block size is a multiple of ``group``; a batch that is not gets groups of 1 (a zero map)."""
    b, _, height, width = h.shape
    g = group if b % group == 0 else 1
    # (B, C, H, W) -> (B/g, g, C, H, W): consecutive groups (StyleGAN strides them)
    grouped = h.float().reshape(b // g, g, *h.shape[1:])
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
    return std.repeat_interleave(g)[:, None, None, None].expand(b, 1, height, width).to(h.dtype)


class DFGenerator(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        widths = c.widths(c.g_width)
        sizes = sorted(widths)  # 4, 8, ..., image_size
        cond = c.z_dim + c.embed_dim
        self.c4 = widths[4]
        self.fc = nn.Linear(c.z_dim, self.c4 * 16)
        self.blocks = nn.ModuleList(UpBlock(cond, widths[a], widths[b]) for a, b in zip(sizes, sizes[1:], strict=False))
        self.to_image = nn.Conv2d(widths[c.image_size], c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([s, z], dim=1)
        x = self.fc(z).view(z.shape[0], self.c4, 4, 4)  # (B, C4*16) -> (B, C4, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        return torch.tanh(self.to_image(F.leaky_relu(x, 0.2)))


class DFDiscriminator(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        widths = c.widths(c.d_width)
        sizes = sorted(widths, reverse=True)  # image_size, ..., 4
        sn = c.spectral_norm
        self.from_image = _sn(nn.Conv2d(c.channels, widths[c.image_size], 3, padding=1), sn)
        self.blocks = nn.Sequential(
            *(DownBlock(widths[a], widths[b], sn) for a, b in zip(sizes, sizes[1:], strict=False))
        )
        c4 = widths[4]
        self.group = c.minibatch_std
        extra = 1 if self.group else 0
        self.joint = _sn(nn.Conv2d(c4 + extra + c.embed_dim, 2 * c.d_width, 3, padding=1), sn)
        self.logit = _sn(nn.Conv2d(2 * c.d_width, 1, 4), sn)
        self.project = _sn(nn.Linear(c.embed_dim, c4, bias=False), sn) if c.projection else None

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.from_image(x))
        features = [h, minibatch_std(h, self.group)] if self.group else [h]
        joint = torch.cat([*features, s[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])], dim=1)
        logit = self.logit(F.leaky_relu(self.joint(joint), 0.2)).flatten()  # (B, 1, 1, 1) -> (B,)
        if self.project is not None:  # the projection discriminator's inner product with the caption
            logit = logit + (self.project(s) * F.leaky_relu(h, 0.2).mean((2, 3))).sum(1)
        return logit


# -- the article's networks --------------------------------------------------------------------------


class DenseGenerator(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = c.z_dim + c.embed_dim
        for i, units in enumerate(c.dense_widths):
            layers.append(nn.Linear(width, units))
            if i > 0:  # as the Keras / PyTorch-GAN original: no BatchNorm after the first layer
                layers.append(nn.BatchNorm1d(units, momentum=0.2, eps=1e-3))  # Keras momentum 0.8
            layers.append(nn.LeakyReLU(0.2))
            width = units
        layers.append(nn.Linear(width, c.channels * c.image_size**2))
        self.net = nn.Sequential(*layers)
        self.shape = (c.channels, c.image_size, c.image_size)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # (B, C*H*W) -> (B, C, H, W)
        return torch.tanh(self.net(torch.cat([z, s], dim=1))).view(z.shape[0], *self.shape)


class ConvDiscriminator(nn.Module):
    def __init__(self, c: GanConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, size = c.channels, c.image_size
        for units in c.conv_widths:
            layers += [_sn(nn.Conv2d(width, units, 3, stride=2, padding=1), c.spectral_norm), nn.LeakyReLU(0.2)]
            width, size = units, (size + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.logit = _sn(nn.Linear(width * size * size + c.embed_dim, 1), c.spectral_norm)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.logit(torch.cat([self.convs(x).flatten(1), s], dim=1)).flatten()  # (B, C*h*w + D) -> (B,)


# -- public ------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """G(z, s) -> images (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.net = DFGenerator(config) if config.arch == "dfgan" else DenseGenerator(config)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(z, s * self.config.embed_gain)

    def save_pretrained(self, folder: str | Path) -> Path:
        """``folder/config.json`` + ``folder/model.safetensors``, each written atomically."""
        return save_component(folder, self, self.config.to_dict(), "Generator")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Generator:
        """Load a saved generator; any problem with the folder is a FolderError naming the file."""
        folder = Path(folder)
        data = load_component_config(folder, "Generator")
        try:
            model = cls(GanConfig.from_dict(data))
        except GanConfigError as error:
            raise GanConfigError(f"{folder / CONFIG_FILE}: {error}") from None
        load_weights(model, folder)
        return model.eval()


class Discriminator(nn.Module):
    """D(x, s) -> one logit per image: real and matching the caption (> 0) or not (< 0)."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.net = DFDiscriminator(config) if config.arch == "dfgan" else ConvDiscriminator(config)

    @property
    def embed_gain(self) -> float:
        return self.config.embed_gain

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(x, s * self.config.embed_gain)
