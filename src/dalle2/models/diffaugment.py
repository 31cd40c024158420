"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every image the discriminator
sees, real and generated alike, so that D cannot memorise a small training set and G still gets gradients
through the augmentation.

Policy ``color,translation,cutout`` as the reference implementation, for images in [-1, 1]: random
brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the channel mean) and contrast (x U(0.5, 1.5)
around the image mean); a random shift by up to 1/8 of the side with zero padding; one random square of
half the side set to zero. Every image of the batch gets its own draw, from the global torch RNG (so a
resumed run repeats them exactly).
"""

from __future__ import annotations

import torch

from dalle2.errors import InvalidConfigError

__all__ = ["POLICY", "diff_augment"]

POLICY = ("color", "translation", "cutout")


def _color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    ys = (torch.arange(h, device=x.device)[None, :, None] + dy).clamp(-1, h)  # -1 and h: the zero padding
    xs = (torch.arange(w, device=x.device)[None, None, :] + dx).clamp(-1, w)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    batch = torch.arange(b, device=x.device)[:, None, None]
    # (B, H+2, W+2, C) gathered at (B, H, W) indices -> (B, H, W, C) -> (B, C, H, W)
    return padded.permute(0, 2, 3, 1)[batch, ys + 1, xs + 1].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    rel_y = torch.arange(h, device=x.device)[None, :, None] - oy + ch // 2  # the square: 0 <= rel < side
    rel_x = torch.arange(w, device=x.device)[None, None, :] - ox + cw // 2
    inside = (rel_y >= 0) & (rel_y < ch) & (rel_x >= 0) & (rel_x < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, policy: tuple[str, ...] = POLICY) -> torch.Tensor:
    """Augment a batch (B, C, H, W) with the named transforms, in order; differentiable in ``x``."""
    for name in policy:
        if name == "color":
            x = _color(x)
        elif name == "translation":
            x = _translation(x)
        elif name == "cutout":
            x = _cutout(x)
        else:
            raise InvalidConfigError(f"unknown DiffAugment transform {name!r}; known: {', '.join(POLICY)}")
    return x
