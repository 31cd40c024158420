"""A diffusion Transformer over image patches (DiT / U-ViT style) with unCLIP's decoder conditioning.

Why: on CPU, convolutions (above all their backward pass) run far below the matmul peak, and a
Transformer of the same parameter count trains several times faster per sample at 32x32
(``benchmarks/decoder_speed.py``). Measured on ``shapes``, though, it learns object layout far more slowly
per sample than the UNet, so the ``cpu`` preset's decoder is the UNet and this is ``decoder.arch=transformer``.
The conditioning is the paper's, as in :mod:`dalle2.models.unet`:

* timestep embedding + projected CLIP image embedding ``z_i`` -> per-block adaptive LayerNorm scale,
  shift and gate (DiT's adaLN-Zero);
* ``z_i`` also projected into ``num_image_tokens`` extra tokens, and the caption's token encodings
  projected to the model width; these context tokens join the patch tokens in one sequence (U-ViT's
  "everything is a token"), the caption's padding masked out of every attention;
* the caption's token encodings come from another model's text tower (the frozen CLIP's) or, with
  ``caption_layers > 0``, from this network's own small text Transformer over token ids, trained with the
  diffusion loss (GLIDE's, as the paper's decoder; the UNet's :class:`~dalle2.models.unet.CaptionEncoder`);
* ``drop_image`` zeroes ``z_i`` before both projections; ``drop_text`` masks all caption tokens.

Patches are unpatchified by a linear layer, then a 3x3 convolution smooths patch seams (U-ViT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle2.coerce import check_fields
from dalle2.errors import InvalidConfigError
from dalle2.models.unet import (
    CaptionEncoder,
    caption_condition,
    check_caption_encoder,
    image_condition,
    timestep_embedding,
)

__all__ = ["DiffusionTransformer", "TransformerConfig"]


@dataclass
class TransformerConfig:
    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int = 4
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 0  # CLIP image embedding size (0 = none)
    context_dim: int = 0  # caption token width (0 = none)
    num_image_tokens: int = 4
    caption_layers: int = 0  # > 0: encode token ids with an own caption Transformer of this depth
    caption_vocab: int = 0  # token ids the caption encoder embeds (the pipeline tokenizer's vocabulary)
    caption_length: int = 0  # the longest caption in tokens
    self_condition: bool = False  # also read an x0 estimate (Chen et al. 2022), as the UNet's

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise InvalidConfigError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if self.width % self.heads:
            raise InvalidConfigError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.depth < 1:
            raise InvalidConfigError("depth must be >= 1")
        check_caption_encoder(self.caption_layers, self.caption_vocab, self.caption_length, self.context_dim)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidConfigError(f"unknown transformer config keys: {sorted(unknown)}")
        return cls(**check_fields(cls, d, "net."))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm Transformer block with adaLN-Zero modulation from the conditioning embedding."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, emb: Tensor, mask: Tensor | None) -> Tensor:
        b, n, w = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(emb))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        # (B, N, 3W) -> (B, N, 3, heads, W/heads) -> 3 x (B, heads, N, W/heads)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + gate1 * self.proj(h.transpose(1, 2).reshape(b, n, w))  # (B, heads, N, W/heads) -> (B, N, W)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class DiffusionTransformer(nn.Module):
    """Same call as :class:`dalle2.models.unet.UNet`: ``forward(x_t, t, image_embed, text_tokens, text_mask,
    drop_image=None, drop_text=None, self_cond=None)`` -> raw prediction of x's shape."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        w, p = c.width, c.patch_size
        self.grid = c.image_size // p
        self.patch = nn.Linear(c.in_channels * (2 if c.self_condition else 1) * p * p, w)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, w) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.image_proj = nn.Linear(c.embed_dim, w) if c.embed_dim else None
        self.image_tokens = nn.Linear(c.embed_dim, c.num_image_tokens * w) if c.embed_dim else None
        self.caption = (
            CaptionEncoder(c.caption_vocab, c.caption_length, c.context_dim, c.caption_layers, c.context_dim // 8)
            if c.caption_layers
            else None
        )  # 8 heads: context_dim // 8 each (checked divisible above)
        self.text_proj = nn.Linear(c.context_dim, w) if c.context_dim else None
        self.context_type = nn.Parameter(torch.zeros(2, w))  # marks image-embedding vs caption tokens
        self.blocks = nn.ModuleList([Block(w, c.heads, c.mlp_ratio) for _ in range(c.depth)])
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(w, 2 * w)
        self.unpatch = nn.Linear(w, c.out_channels * p * p)
        self.smooth = nn.Conv2d(c.out_channels, c.out_channels, 3, padding=1)
        for layer in (self.ada_out, self.unpatch):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        image_embed: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        drop_image: Tensor | None = None,
        drop_text: Tensor | None = None,
        self_cond: Tensor | None = None,
        **unused: Any,
    ) -> Tensor:
        c = self.config
        b, ch, hh, ww = x.shape
        if hh != c.image_size or ww != c.image_size:
            raise ValueError(f"expected {c.image_size}x{c.image_size} input, got {hh}x{ww}")
        if c.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond.to(x)], 1)
            ch = x.shape[1]
        p, g = c.patch_size, self.grid
        # (B, C, g*p, g*p) -> (B, C, g, p, g, p) -> (B, g, g, C, p, p) -> (B, g*g, C*p*p): one token a patch
        tokens = x.reshape(b, ch, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, ch * p * p)
        h = self.patch(tokens) + self.pos
        emb = self.time_mlp(timestep_embedding(t.expand(b), c.width))
        context, masks = [], []
        if self.image_proj is not None:
            image_embed = image_condition(image_embed, drop_image, "decoder", c.embed_dim)
            emb = emb + self.image_proj(image_embed)
            # (B, K*W) -> (B, K, W): z_i as K extra context tokens (the paper's four)
            context.append(self.image_tokens(image_embed).reshape(b, c.num_image_tokens, -1) + self.context_type[0])
            masks.append(torch.ones(b, c.num_image_tokens, dtype=torch.bool, device=x.device))
        if self.text_proj is not None:
            text_tokens, mask = caption_condition(
                text_tokens, text_mask, drop_text, self.caption, "decoder", c.context_dim
            )
            context.append(self.text_proj(text_tokens) + self.context_type[1])
            masks.append(mask)
        n_ctx = sum(t_.shape[1] for t_ in context)
        attn_mask = None
        if context:
            h = torch.cat([*context, h], 1)
            own = torch.ones(b, g * g, dtype=torch.bool, device=x.device)
            attn_mask = torch.cat([*masks, own], 1)[:, None, None, :]
        for block in self.blocks:
            h = block(h, emb, attn_mask)
        h = h[:, n_ctx:]
        shift, scale = self.ada_out(F.silu(emb))[:, None].chunk(2, dim=-1)
        out = self.unpatch(self.norm_out(h) * (1 + scale) + shift)  # (B, g*g, C*p*p)
        # (B, g*g, C*p*p) -> (B, g, g, C, p, p) -> (B, C, g, p, g, p) -> (B, C, H, W): the inverse of the patching
        out = out.reshape(b, g, g, c.out_channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, hh, ww)
        return out + self.smooth(out)
