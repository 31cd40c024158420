"""A compact diffusion UNet for the decoder and the upsampler (GLIDE / unCLIP conditioning).

Why project-written: the conditioning below is the paper's (z_i added to the timestep embedding *and* turned
into extra context tokens, each droppable for guidance), which diffusers' blocks do not have in one model.
It is the upsampler's network (convolution-only, as the paper's) and the ``cpu`` preset's decoder (with
attention at 8x8). :mod:`dalle2.models.transformer` runs faster per sample on CPU but learned layout more
slowly (``benchmarks/decoder_speed.py`` times this UNet, that Transformer and diffusers'
``UNet2DConditionModel``).

Conditioning, as in unCLIP's decoder (Ramesh et al. 2022, section 2.1):

* the timestep embedding, plus the CLIP image embedding ``z_i`` projected and added to it; this sum sets
  a per-channel scale and shift after the second group norm of every residual block (adaptive group norm);
* ``z_i`` also projected into ``num_image_tokens`` extra context tokens, concatenated with the caption's
  token encodings; attention blocks attend over [their own pixels, context tokens] (GLIDE's design);
* the caption's token encodings come from another model's text tower (the frozen CLIP's, by default) or,
  with ``caption_layers > 0``, from this network's own small text Transformer over token ids, trained with
  the diffusion loss, as GLIDE's and unCLIP's decoders do (:class:`CaptionEncoder`);
* classifier-free guidance: ``drop_image`` zeroes ``z_i`` *before* both projections (so every path it
  enters sees the null condition), ``drop_text`` masks the caption tokens out of attention.

The upsampler uses the same network with ``embed_dim = 0``, ``context_dim = 0``, no attention, and
``low_res_channels = 3``: the (noised, blurred) low-resolution image is resized to the output size and
concatenated with ``x_t``; its augmentation noise level is embedded like a second timestep.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle2.coerce import check_fields
from dalle2.errors import InvalidConfigError

__all__ = ["UNet", "UNetConfig", "caption_condition", "image_condition"]


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet` (saved as the component's config.json)."""

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    channels: list[int] = field(default_factory=lambda: [64, 128, 192])  # one entry per resolution level
    blocks_per_level: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention: list[bool] = field(default_factory=lambda: [False, True, True])  # per level (and the middle)
    head_dim: int = 32
    embed_dim: int = 0  # CLIP image embedding size; 0 = no image-embedding conditioning
    context_dim: int = 0  # caption token encoding width; 0 = no caption tokens
    num_image_tokens: int = 4  # extra context tokens made from z_i (paper: 4)
    #: GLIDE (whose decoder unCLIP extends) also adds the caption's final token encoding, projected, to the
    #: timestep embedding ("in place of a class embedding"): a global caption signal in every residual block.
    text_pool: bool = False
    low_res_channels: int = 0  # upsampler: channels of the low-resolution image concatenated to x_t
    noise_level_embedding: bool = False  # upsampler: embed the low-res augmentation level
    patch_size: int = 1  # >1: pixel-unshuffle the input by this factor first (and pixel-shuffle the output)
    #: the decoder's own caption encoder (GLIDE's text transformer, which unCLIP's decoder keeps and trains with
    #: the diffusion loss): > 0 layers read token ids (``text_tokens`` (B, L) integers) instead of another
    #: model's token encodings; its width is ``context_dim``. 0: ``text_tokens`` are given encodings.
    caption_layers: int = 0
    caption_vocab: int = 0  # token ids the caption encoder embeds (the pipeline tokenizer's vocabulary)
    caption_length: int = 0  # longest caption in tokens (learned positions)
    #: self-conditioning (Chen et al. 2022, "Analog Bits"): the network also reads an estimate of x0 (its own
    #: previous one; zeros when there is none), ``in_channels`` more input channels
    self_condition: bool = False
    #: a learned position embedding per pixel, added to the pixels' tokens in every attention block
    #: (zero-initialised, so a network grown with it starts as the one without). Convolutions with zero
    #: padding give positions only indirectly; a relation ("a red circle above a blue square") asks the
    #: attention at 8x8 to send each colour to a place, which these embeddings make explicit. Grown into the
    #: bundled decoder for 154k images it changed neither binding nor faithfulness (docs/results.md, "Position
    #: embeddings in the decoder's attention"), so no preset sets it.
    attention_positions: bool = False

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        self.attention = [bool(a) for a in self.attention]
        if not self.channels or any(c < 8 or c % 8 for c in self.channels):
            raise InvalidConfigError(f"channels must be multiples of 8 (one per level), got {self.channels}")
        if len(self.attention) != len(self.channels):
            raise InvalidConfigError(f"attention needs one flag per level ({len(self.channels)}), got {self.attention}")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise InvalidConfigError(
                f"patch_size must be >= 1 and divide image_size {self.image_size}, got {self.patch_size}"
            )
        if (self.image_size // self.patch_size) % 2 ** (len(self.channels) - 1):
            raise InvalidConfigError(
                f"image_size / patch_size ({self.image_size} / {self.patch_size}) must be divisible by 2^(levels-1)"
            )
        if self.blocks_per_level < 1 or self.head_dim < 8:
            raise InvalidConfigError("blocks_per_level must be >= 1 and head_dim >= 8")
        check_caption_encoder(self.caption_layers, self.caption_vocab, self.caption_length, self.context_dim)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidConfigError(f"unknown UNet config keys: {sorted(unknown)}")
        return cls(**check_fields(cls, d, "net."))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_caption_encoder(layers: int, vocab: int, length: int, context_dim: int) -> None:
    """Raise InvalidConfigError unless the caption-encoder keys of a network config fit together."""
    if layers < 0 or layers > 24:
        raise InvalidConfigError(f"caption_layers must be between 0 and 24, got {layers}")
    if layers and (vocab < 1 or length < 1 or not context_dim or context_dim % 8):
        raise InvalidConfigError(
            "a caption encoder (caption_layers > 0) needs caption_vocab, caption_length and a context_dim "
            f"divisible by 8; got {vocab}, {length}, {context_dim}"
        )


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in GLIDE / diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def image_condition(image_embed: Tensor | None, drop_image: Tensor | None, owner: str, embed_dim: int) -> Tensor:
    """The CLIP image embedding z_i (B, D) a network is conditioned on, zeroed in the rows ``drop_image``
    marks; zeroed before every projection, so every path it enters sees the null condition. ``owner`` and
    ``embed_dim`` name the network in the error when z_i is missing."""
    if image_embed is None:
        raise ValueError(f"this {owner} needs image_embed (B, {embed_dim})")
    if drop_image is None:
        return image_embed
    return image_embed * (~drop_image.bool()).to(image_embed.dtype)[:, None]


def caption_condition(
    text_tokens: Tensor | None,
    text_mask: Tensor | None,
    drop_text: Tensor | None,
    caption: CaptionEncoder | None,
    owner: str,
    context_dim: int,
) -> tuple[Tensor, Tensor]:
    """(caption token encodings (B, L, context_dim), mask (B, L) bool) a network is conditioned on.

    ``text_tokens`` are another model's encodings, or token ids (B, L) that ``caption`` (the network's own
    :class:`CaptionEncoder`) encodes; a missing ``text_mask`` means every token is real. The rows
    ``drop_text`` marks are masked out entirely (after encoding: the encoder still sees the caption)."""
    if text_tokens is None:
        raise ValueError(f"this {owner} needs text_tokens (B, L, {context_dim})")
    mask = (
        text_mask.bool()
        if text_mask is not None
        else torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
    )
    if caption is not None:  # token ids -> the network's own encodings
        text_tokens = caption(text_tokens, mask)
    if drop_text is not None:
        mask = mask & ~drop_text.bool()[:, None]
    return text_tokens, mask


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then adaptive group norm (scale/shift from the embedding)-SiLU-conv, plus skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head attention of each pixel over [all pixels, context tokens] (GLIDE's text attention)."""

    def __init__(self, channels: int, head_dim: int, context_dim: int, positions: int = 0) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = _norm(channels)
        # ``positions`` > 0: a learned embedding per pixel (H * W of them), zero at the start
        self.pos = nn.Parameter(torch.zeros(positions, channels)) if positions else None
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, C, HW) -> (B, HW, C)
        if self.pos is not None:
            if self.pos.shape[0] != h * w:
                raise ValueError(f"this attention block has positions for {self.pos.shape[0]} pixels, got {h}x{w}")
            tokens = tokens + self.pos.to(tokens.dtype)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self.context_kv(context).chunk(2, dim=-1)
            k, v = torch.cat([k, ck], 1), torch.cat([v, cv], 1)
            if context_mask is not None:
                own = torch.ones(b, h * w, dtype=torch.bool, device=x.device)
                mask = torch.cat([own, context_mask.bool()], 1)[:, None, None, :]  # (B, 1, 1, HW + T)

        def heads(t: Tensor) -> Tensor:
            # (B, L, C) -> (B, L, heads, C/heads) -> (B, heads, L, C/heads)
            return t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        out = self.out(out.transpose(1, 2).reshape(b, h * w, c))  # (B, heads, HW, C/heads) -> (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C) -> (B, C, H, W)


class CaptionEncoder(nn.Module):
    """Token ids (B, L) and mask -> token encodings (B, L, width): embeddings plus learned positions through
    pre-norm Transformer layers (GLIDE's text encoder, small). Padding is masked out of attention."""

    def __init__(self, vocab: int, length: int, width: int, layers: int, head_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(
            width, max(1, width // head_dim), 4 * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.is_floating_point():
            raise ValueError("this UNet encodes captions itself: text_tokens must be token ids (B, L), not encodings")
        length = ids.shape[1]
        if length > self.pos.shape[0]:
            raise ValueError(f"captions of {length} tokens; this caption encoder takes at most {self.pos.shape[0]}")
        padding = ~mask.bool()
        padding[:, 0] = False  # a fully masked row (no caption) would make attention NaN; masked out later anyway
        return self.norm(self.layers(self.embed(ids.long()) + self.pos[:length], src_key_padding_mask=padding))


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock], attns: list[AttentionBlock | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([a if a is not None else nn.Identity() for a in attns])
        self.has_attn = [a is not None for a in attns]


class UNet(nn.Module):
    """``forward(x_t, t, image_embed=None, text_tokens=None, text_mask=None, low_res=None, noise_level=None,
    drop_image=None, drop_text=None, self_cond=None)`` -> the raw prediction (eps / v / x0, per the owning model)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.channels
        emb_dim = 4 * ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.noise_mlp = (
            nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if c.noise_level_embedding
            else None
        )
        ctx = ch[-1]  # width of context tokens
        self.image_proj = nn.Linear(c.embed_dim, emb_dim) if c.embed_dim else None
        self.image_tokens = nn.Linear(c.embed_dim, c.num_image_tokens * ctx) if c.embed_dim else None
        self.caption = (
            CaptionEncoder(c.caption_vocab, c.caption_length, c.context_dim, c.caption_layers, c.head_dim)
            if c.caption_layers
            else None
        )
        self.text_proj = nn.Linear(c.context_dim, ctx) if c.context_dim else None
        self.text_pool_proj = nn.Linear(c.context_dim, emb_dim) if (c.context_dim and c.text_pool) else None
        self.context_norm = nn.LayerNorm(ctx) if (c.embed_dim or c.context_dim) else None
        context_dim = ctx if self.context_norm is not None else 0

        p2 = c.patch_size**2
        in_channels = c.in_channels * (2 if c.self_condition else 1) + c.low_res_channels
        self.conv_in = nn.Conv2d(in_channels * p2, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [ch[0]]
        cur = ch[0]
        side = c.image_size // c.patch_size

        def attention(level: int, width: int) -> AttentionBlock | None:
            if not c.attention[level]:
                return None
            positions = (side >> level) ** 2 if c.attention_positions else 0
            return AttentionBlock(width, c.head_dim, context_dim, positions)

        for i, width in enumerate(ch):
            blocks, attns = [], []
            for _ in range(c.blocks_per_level):
                blocks.append(ResBlock(cur, width, emb_dim))
                attns.append(attention(i, width))
                cur = width
                skips.append(cur)
            self.down.append(_Level(blocks, attns))
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid1 = ResBlock(cur, cur, emb_dim)
        self.mid_attn = attention(len(ch) - 1, cur)
        self.mid2 = ResBlock(cur, cur, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(ch))):
            blocks, attns = [], []
            for _ in range(c.blocks_per_level + 1):
                blocks.append(ResBlock(cur + skips.pop(), width, emb_dim))
                attns.append(attention(i, width))
                cur = width
            self.up.append(_Level(blocks, attns))
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, c.out_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # channels-last convolutions: measured 36 -> 50 training samples/s for the cpu decoder (2 threads)
        self.to(memory_format=torch.channels_last)

    # -- conditioning --------------------------------------------------------------------------------

    def _conditions(
        self,
        t: Tensor,
        image_embed: Tensor | None,
        text_tokens: Tensor | None,
        text_mask: Tensor | None,
        noise_level: Tensor | None,
        drop_image: Tensor | None,
        drop_text: Tensor | None,
        batch: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        c = self.config
        emb = self.time_mlp(timestep_embedding(t.expand(batch), c.channels[0]))
        if self.noise_mlp is not None:
            if noise_level is None:
                raise ValueError("this UNet needs noise_level (the low-resolution input's augmentation step)")
            emb = emb + self.noise_mlp(timestep_embedding(noise_level.expand(batch), c.channels[0]))
        parts, masks = [], []
        if self.image_proj is not None:
            image_embed = image_condition(image_embed, drop_image, "UNet", c.embed_dim)
            emb = emb + self.image_proj(image_embed)
            tokens = self.image_tokens(image_embed).reshape(batch, c.num_image_tokens, -1)  # (B, K*D) -> (B, K, D)
            parts.append(tokens)
            masks.append(torch.ones(batch, c.num_image_tokens, dtype=torch.bool, device=tokens.device))
        if self.text_proj is not None:
            text_tokens, mask = caption_condition(
                text_tokens, text_mask, drop_text, self.caption, "UNet", c.context_dim
            )
            if self.text_pool_proj is not None:  # the last real token of each caption (zero when dropped)
                last = mask.long().cumsum(1).argmax(1)  # index of the last True (0 if none)
                final = text_tokens[torch.arange(batch, device=text_tokens.device), last]
                final = final * mask.any(1, keepdim=True).to(final.dtype)
                emb = emb + self.text_pool_proj(final)
            parts.append(self.text_proj(text_tokens))
            masks.append(mask)
        if not parts:
            return emb, None, None
        context = self.context_norm(torch.cat(parts, 1))
        context_mask = torch.cat(masks, 1)
        return emb, context, context_mask

    # -- forward -------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        image_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        low_res: Tensor | None = None,
        noise_level: Tensor | None = None,
        drop_image: Tensor | None = None,
        drop_text: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        c = self.config
        b = x.shape[0]
        emb, context, context_mask = self._conditions(
            t, image_embed, text_tokens, text_mask, noise_level, drop_image, drop_text, b
        )
        if c.self_condition:  # the previous x0 estimate, or zeros (none yet / dropped in training)
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond.to(x)], 1)
        if c.low_res_channels:
            if low_res is None:
                raise ValueError("this UNet needs low_res (the low-resolution image to upsample)")
            if low_res.shape[-1] != x.shape[-1]:
                low_res = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, low_res.to(x.dtype)], 1)
        if c.patch_size > 1:  # space-to-depth: the levels run at 1/patch_size of the resolution, losslessly
            x = F.pixel_unshuffle(x, c.patch_size)
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn, has in zip(level.blocks, level.attns, level.has_attn, strict=True):
                h = block(h, emb)
                if has:
                    h = attn(h, context, context_mask)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h, context, context_mask)
        h = self.mid2(h, emb)
        for i, level in enumerate(self.up):
            for block, attn, has in zip(level.blocks, level.attns, level.has_attn, strict=True):
                h = block(torch.cat([h, skips.pop()], 1), emb)
                if has:
                    h = attn(h, context, context_mask)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        out = F.pixel_shuffle(out, c.patch_size) if c.patch_size > 1 else out
        return out.contiguous()
