"""Guard rails of GAN training: detect discriminator collapse and mode collapse while training runs.

The trainer calls a :class:`CollapseMonitor` at every log (``on_log``). It adds scalars to the log
(TensorBoard: ``monitor/*``) and prints a warning line when a failure sets in (once per episode), also
kept in ``warnings`` for the stage report:

* discriminator collapse: D's accuracy (real logit > 0, fake logit < 0) averaged over a logging window
  is at least ``accuracy`` for ``patience`` windows in a row: D wins outright and the generator's
  gradient carries little information (the hinge loss of D is then near 0 and G's loss climbs);
* mode collapse: every ``every`` steps the EMA generator draws ``k`` images for each of a few fixed
  prompts from fixed noise; the mean pairwise L2 distance between images of the same prompt, divided
  by the mean pairwise distance between real images, falls under ``ratio``: the generator has stopped
  using its noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["CollapseMonitor", "mean_pairwise_distance"]

REAL_IMAGES = 256  # real images the reference distance is measured on


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance between the distinct pairs of a batch of images (B >= 2)."""
    flat = images.flatten(1).float()
    d = torch.cdist(flat, flat)
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


class CollapseMonitor:
    """``monitor(step, logged) -> extra scalars``; see the module docstring."""

    def __init__(
        self,
        generator: Callable[[], torch.nn.Module],
        embeds: torch.Tensor,
        noise: torch.Tensor,
        real_images: torch.Tensor,
        *,
        accuracy: float = 0.99,
        patience: int = 5,
        ratio: float = 0.05,
        every: int = 250,
        prefix: str = "gan",
    ) -> None:
        """``embeds`` (P, D): the fixed prompts; ``noise`` (K, z_dim): the fixed noise shared by every prompt."""
        self.generator, self.embeds, self.noise = generator, embeds, noise
        self.real_distance = max(mean_pairwise_distance(real_images[:REAL_IMAGES]), 1e-8)
        self.accuracy, self.patience, self.ratio, self.every = accuracy, patience, ratio, every
        self.prefix = prefix
        self.streak, self.last_check = 0, 0  # the first check after `every` steps: a new G is not diverse yet
        self.d_collapsed = self.mode_collapsed = False
        self.warnings: list[dict[str, Any]] = []

    def diversity_ratio(self) -> float:
        """Mean within-prompt pairwise distance of the EMA generator's images over that of real images."""
        g = self.generator()
        device = next(g.parameters()).device
        p, k = self.embeds.shape[0], self.noise.shape[0]
        s = self.embeds.to(device).repeat_interleave(k, 0)
        z = self.noise.to(device).repeat(p, 1)
        images = g(z, s).float().view(p, k, -1)
        within = sum(mean_pairwise_distance(images[i]) for i in range(p)) / p
        return within / self.real_distance

    def _warn(self, step: int, kind: str, message: str) -> None:
        self.warnings.append({"step": step, "kind": kind, "message": message})
        tqdm.write(f"{self.prefix}: WARNING at step {step}: {message}")

    def __call__(self, step: int, logged: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        accuracy = logged.get("discriminator/accuracy")
        if accuracy is not None:
            self.streak = self.streak + 1 if accuracy >= self.accuracy else 0
            collapsed = self.streak >= self.patience
            if collapsed and not self.d_collapsed:
                d, g = logged.get("loss/discriminator", float("nan")), logged.get("loss/generator", float("nan"))
                self._warn(
                    step,
                    "discriminator_collapse",
                    f"discriminator collapse: D accuracy >= {self.accuracy:.2f} for {self.streak} logs in a row "
                    f"(D loss {d:.4f}, G loss {g:.4f}); G learns little now. Try gan.diffaugment=true, a larger "
                    "gan.ma_gp, a lower gan.d_lr_scale, or resume from an earlier checkpoint",
                )
            self.d_collapsed = collapsed
            out["monitor/d_collapse"] = float(collapsed)
        if step - self.last_check >= self.every:
            self.last_check = step
            ratio = self.diversity_ratio()
            collapsed = ratio < self.ratio
            if collapsed and not self.mode_collapsed:
                self._warn(
                    step,
                    "mode_collapse",
                    f"mode collapse: images of one prompt differ {ratio:.3f}x as much as real images do "
                    f"(threshold {self.ratio}); the generator ignores its noise",
                )
            self.mode_collapsed = collapsed
            out["monitor/diversity_ratio"] = ratio
            out["monitor/mode_collapse"] = float(collapsed)
        return out
