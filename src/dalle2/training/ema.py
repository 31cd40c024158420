"""Exponential moving average of a model's weights, with warmup, kept in fp32.

The EMA weights are what every stage ships and samples with. Warmup follows the usual
``decay_t = min(decay, (1 + t) / (10 + t))`` (t = updates done so far), so a short run on small data
is not left sitting near the initial weights: the first update moves the average 90% of the way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dalle2.errors import InvalidConfigError


class EMA:
    """An fp32 copy of ``model`` (``.model``, eval mode, no grad) updated by ``update(model)``."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise InvalidConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next ``update`` uses."""
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
        weight = 1.0 - self.current_decay()
        ema_params = dict(self.model.named_parameters())
        targets, sources = [], []
        for name, param in model.named_parameters():
            if name not in ema_params:
                raise KeyError(f"EMA has no parameter {name!r}: was the model changed after the trainer was built?")
            if param.requires_grad:  # frozen parameters never change, so their average is themselves
                targets.append(ema_params[name])
                sources.append(param.detach().to(torch.float32))
        if targets:
            torch._foreach_lerp_(targets, sources, weight)
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buffer.detach())
        self.num_updates += 1

    def to(self, device: torch.device | str) -> EMA:
        self.model.to(device)
        return self
