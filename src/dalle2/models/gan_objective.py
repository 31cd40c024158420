"""What a text-conditional GAN optimises: the adversarial losses, the matching-aware gradient penalty,
mismatched pairs, weight regularisation, and :class:`GanObjective`, the module the trainer steps in two
phases per batch (discriminator first, then generator).

Discriminator phase (``model("discriminator", images, embeds)``): fakes G(z, s) are drawn without a
graph to G; D sees, in one batch, the real pairs (x, s), the fake pairs (G(z, s), s) and, with
``mismatch``, real images with a wrong caption (s rolled by one in the batch; pairs whose caption is the
same are left out) as a third kind of negative. Loss (hinge or BCE on the logit) = real + fake, or, with
mismatch pairs, real + (fake + mismatch) / 2 as DF-GAN. MA-GP (DF-GAN): ``ma_gp * mean(||(dD/dx,
dD/ds)||^p)`` on the real matched pairs, w.r.t. the image D sees and the sentence embedding (p = 6);
with ``ma_gp_every`` N > 1 it is computed on every N-th D step only, weighted x N (StyleGAN2's lazy
regularisation: the double backward is the most expensive part of a D step).
With ``diffaugment`` every image D sees (real and fake) is augmented first.

Generator phase (``model("generator", embeds=embeds)``): fresh z, D frozen; hinge: -D(G(z, s), s), BCE:
the non-saturating -log sigmoid(D(G(z, s), s)). With ``mode_seeking`` w > 0 (MSGAN, Mao et al. 2019) the
second half of the batch repeats the first half's captions with fresh noise, and G also minimises
``w / (mean|G(z1, s) - G(z2, s)| / mean|z1 - z2| + 1e-5)``: two noises for one caption must give different
images, against the collapse of a class to one image.

``l1`` / ``l2`` add weight * sum |w| / sum w^2 over the weight matrices and kernels (not biases) of the
network a phase updates, as Keras' kernel regularisers do (the article's optional regularisation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2.errors import InvalidConfigError
from dalle2.models.diffaugment import diff_augment

__all__ = [
    "LOSSES",
    "GanObjective",
    "ObjectiveConfig",
    "discriminator_loss",
    "generator_loss",
    "ma_gradient_penalty",
    "mismatched",
    "mode_seeking_loss",
    "weight_penalty",
]

LOSSES = ("hinge", "bce")
SAME_CAPTION_COSINE = 0.999  # rolled pairs at least this similar are the same caption: not a mismatch


@dataclass
class ObjectiveConfig:
    loss: str = "hinge"  # hinge | bce
    mismatch: bool = True  # real images with rolled captions as negatives
    ma_gp: float = 2.0  # MA-GP weight k (0 = off)
    ma_gp_power: float = 6.0  # MA-GP exponent p
    ma_gp_every: int = 1  # lazy regularisation (StyleGAN2): the penalty every N-th D step, its weight x N
    diffaugment: bool = True  # colour, translation, cutout on everything D sees
    l1: float = 0.0  # L1 weight regularisation
    l2: float = 0.0  # L2 weight regularisation
    mode_seeking: float = 0.0  # MSGAN mode-seeking weight (0 = off)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise InvalidConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("ma_gp", "ma_gp_power", "l1", "l2", "mode_seeking"):
            if getattr(self, name) < 0:
                raise InvalidConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.ma_gp_every, bool) or not isinstance(self.ma_gp_every, int) or self.ma_gp_every < 1:
            raise InvalidConfigError(f"ma_gp_every must be an integer >= 1, got {self.ma_gp_every!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def discriminator_loss(
    kind: str,
    real: torch.Tensor,
    fake: torch.Tensor,
    mismatch: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """D's loss on logits of real pairs, fake pairs and (optional) mismatched pairs (``keep``: which count)."""
    if kind == "hinge":
        loss_real, loss_fake = F.relu(1 - real).mean(), F.relu(1 + fake).mean()
        per_mismatch = F.relu(1 + mismatch) if mismatch is not None else None
    elif kind == "bce":  # BCE with labels real = 1, fake = 0, on sigmoid(logit)
        loss_real, loss_fake = F.softplus(-real).mean(), F.softplus(fake).mean()
        per_mismatch = F.softplus(mismatch) if mismatch is not None else None
    else:
        raise InvalidConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")
    if per_mismatch is None:
        return loss_real + loss_fake
    if keep is None:
        keep = torch.ones_like(per_mismatch, dtype=torch.bool)
    weights = keep.to(per_mismatch.dtype)
    loss_mismatch = (per_mismatch * weights).sum() / weights.sum().clamp(min=1)
    return loss_real + (loss_fake + loss_mismatch) / 2


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's logits of its images: hinge -D, or the non-saturating BCE -log sigmoid(D)."""
    if kind == "hinge":
        return -fake.mean()
    if kind == "bce":
        return F.softplus(-fake).mean()
    raise InvalidConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


def mismatched(embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrong captions for a batch: the embeddings rolled by one, and which rows really differ."""
    wrong = embeds.roll(1, dims=0)
    keep = F.cosine_similarity(embeds.float(), wrong.float(), dim=1) < SAME_CAPTION_COSINE
    return wrong, keep


def ma_gradient_penalty(
    logits: torch.Tensor,
    images: torch.Tensor,
    embeds: torch.Tensor,
    weight: float = 2.0,
    power: float = 6.0,
    embed_gain: float = 1.0,
) -> torch.Tensor:
    """DF-GAN's matching-aware gradient penalty: ``weight * mean_i ||(dD_i/dx_i, dD_i/ds_i)||^power``.

    ``logits`` must come from ``images`` and ``embeds`` with a graph (both ``requires_grad``); the penalty
    keeps that graph (``create_graph``), so it can be minimised. An input D ignores contributes zero.
    ``embed_gain``: D multiplies ``embeds`` by it first; the gradient is taken with respect to what D's
    layers see (``embeds * embed_gain``), so the penalty does not grow with the gain.
    """
    grads = list(torch.autograd.grad(logits.sum(), (images, embeds), create_graph=True, allow_unused=True))
    if grads[1] is not None and embed_gain != 1.0:
        grads[1] = grads[1] / embed_gain
    squares = [g.flatten(1).pow(2).sum(1) for g in grads if g is not None]  # each (B, ...) -> (B, N) -> (B,)
    if not squares:
        return logits.sum() * 0.0
    norm2 = torch.stack(squares).sum(0)
    return weight * norm2.pow(power / 2).mean()  # ||g||^p without a sqrt (whose gradient is inf at 0)


def mode_seeking_loss(fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019, their reference code): ``1 / (mean|fake_a - fake_b| / mean|z_a - z_b| + 1e-5)``
    for images drawn from the same captions with noises ``z_a`` and ``z_b``; small when they differ."""
    ratio = (fake_a - fake_b).abs().mean() / (z_a - z_b).abs().mean()
    return 1 / (ratio + 1e-5)


def weight_penalty(module: nn.Module, l1: float, l2: float) -> torch.Tensor | None:
    """``l1 * sum|w| + l2 * sum w^2`` over the module's weights of 2+ dimensions (None if both are 0)."""
    if not (l1 or l2):
        return None
    weights = [p for p in module.parameters() if p.ndim >= 2 and p.requires_grad]
    total = sum((l1 * w.abs().sum() if l1 else 0) + (l2 * w.pow(2).sum() if l2 else 0) for w in weights)
    return total if isinstance(total, torch.Tensor) else None


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No weight gradients for ``module`` inside the block (inputs still get theirs)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class GanObjective(nn.Module):
    """G and D in one module for the trainer; ``forward(phase, ...)`` returns that phase's loss and metrics."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, config: ObjectiveConfig) -> None:
        super().__init__()
        self.generator, self.discriminator, self.config = generator, discriminator, config
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.int64))  # for ma_gp_every; in checkpoints

    def _noise(self, embeds: torch.Tensor) -> torch.Tensor:
        return torch.randn(embeds.shape[0], self.generator.z_dim, device=embeds.device, dtype=embeds.dtype)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x) if self.config.diffaugment else x

    def forward(
        self, phase: str, images: torch.Tensor | None = None, embeds: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if embeds is None:
            raise ValueError("the GAN objective needs the sentence embeddings (embeds=...)")
        if phase == "discriminator":
            if images is None:
                raise ValueError("the discriminator phase needs the real images")
            return self.discriminator_step(images, embeds)
        if phase == "generator":
            return self.generator_step(embeds)
        raise ValueError(f"unknown GAN phase {phase!r}; phases: discriminator, generator")

    def discriminator_step(self, images: torch.Tensor, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        c, b = self.config, images.shape[0]
        with torch.no_grad():
            fake = self.generator(self._noise(embeds), embeds)
        gp_on = c.ma_gp > 0 and int(self.d_steps) % c.ma_gp_every == 0
        self.d_steps += 1
        real = self._augment(images).detach().requires_grad_(gp_on)
        s = embeds.detach().requires_grad_(gp_on)
        x, cond = [real, self._augment(fake)], [s, s]
        wrong, keep = mismatched(embeds.detach())
        if c.mismatch:
            x.append(real)
            cond.append(wrong)
        logits = self.discriminator(torch.cat(x), torch.cat(cond))
        real_logits, fake_logits = logits[:b], logits[b : 2 * b]
        mis_logits = logits[2 * b :] if c.mismatch else None
        loss = discriminator_loss(c.loss, real_logits, fake_logits, mis_logits, keep)
        out = {
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
            "accuracy": ((real_logits.detach() > 0).float().mean() + (fake_logits.detach() < 0).float().mean()) / 2,
        }
        if mis_logits is not None:
            out["d_mismatch"] = mis_logits.detach().mean()
        if gp_on:
            gain = float(getattr(self.discriminator, "embed_gain", 1.0))
            gp = ma_gradient_penalty(real_logits, real, s, c.ma_gp * c.ma_gp_every, c.ma_gp_power, gain)
            loss = loss + gp
            out["ma_gp"] = gp.detach()
        reg = weight_penalty(self.discriminator, c.l1, c.l2)
        if reg is not None:
            loss = loss + reg
        return {"loss": loss, **out}

    def generator_step(self, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        half = embeds.shape[0] // 2
        if c.mode_seeking and half:  # the second half repeats the first half's captions with other noise
            embeds = torch.cat([embeds[:half], embeds[:half], embeds[2 * half :]])
        z = self._noise(embeds)
        fake = self.generator(z, embeds)
        with frozen(self.discriminator):
            logits = self.discriminator(self._augment(fake), embeds)
        loss = generator_loss(c.loss, logits)
        out = {"d_fake": logits.detach().mean()}
        if c.mode_seeking and half:
            ms = mode_seeking_loss(fake[:half], fake[half : 2 * half], z[:half], z[half : 2 * half])
            loss = loss + c.mode_seeking * ms
            out["mode_seeking"] = ms.detach()
        reg = weight_penalty(self.generator, c.l1, c.l2)
        if reg is not None:
            loss = loss + reg
        return {"loss": loss, **out}
