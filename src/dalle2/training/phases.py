"""Optimisation phases: the trainer steps one or several losses per batch, each with its own optimizer.

A stage with one loss hands the trainer a ``loss_fn`` and gets one phase (AdamW over every trainable
parameter). A stage with several players, e.g. a GAN, hands it a list of :class:`Phase`: on every batch
the trainer runs them in order, each one a full step (loss, backward, clip, optimizer step, LR schedule,
gradients cleared) over the parameters of its own sub-module, so that a later phase sees the weights the
earlier one just updated (alternating discriminator and generator steps).

A loss function returns a scalar tensor, or a dict with the scalar ``"loss"`` plus other scalars to log
(averaged over the logging window like the loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dalle2.training.errors import TrainingError

__all__ = ["OPTIMIZERS", "LossFn", "Phase", "build_optimizer", "phase_parameters", "split_loss"]

LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor]"]
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class Phase:
    """One optimizer and the loss it minimises, over the parameters of ``model.get_submodule(module)``."""

    name: str  # e.g. "discriminator"; logged as loss/<name>, lr/<name>, <name>/<metric>
    loss_fn: LossFn
    module: str = ""  # dotted sub-module whose trainable parameters this phase updates ("" = all)
    learning_rate: float | None = None  # None = train.learning_rate
    optimizer: str = "adamw"  # adamw (Adam when weight_decay is 0) | sgd
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # decoupled, on tensors of 2+ dimensions only
    max_grad_norm: float | None = None  # clip this phase's gradients (None or 0: no clipping)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"phase {self.name}: optimizer must be one of {', '.join(OPTIMIZERS)}")


def phase_parameters(model: nn.Module, phase: Phase) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters a phase updates, with their names in ``model``."""
    try:
        module = model.get_submodule(phase.module) if phase.module else model
    except AttributeError:
        raise TrainingError(f"phase {phase.name}: the model has no sub-module {phase.module!r}") from None
    prefix = f"{phase.module}." if phase.module else ""
    return [(prefix + n, p) for n, p in module.named_parameters() if p.requires_grad]


def build_optimizer(
    params: list[tuple[str, nn.Parameter]], phase: Phase, learning_rate: float
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``params``; no weight decay on biases and norm gains (nanoGPT's habit)."""
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": phase.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=phase.momentum, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=phase.betas, weight_decay=phase.weight_decay)


def split_loss(output: Any, where: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss function's result -> (scalar loss, metrics); anything else is a TrainingError."""
    metrics: dict[str, Any] = {}
    loss = output
    if isinstance(output, dict):
        if "loss" not in output:
            raise TrainingError(f"{where}: a loss_fn that returns a dict must put the scalar loss under 'loss'")
        metrics = {k: v for k, v in output.items() if k != "loss"}
        loss = output["loss"]
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TrainingError(f"{where}: loss_fn must return a scalar tensor, got {shape}")
    out = {}
    for key, value in metrics.items():
        value = torch.as_tensor(value, device=loss.device).detach().float()
        if value.ndim != 0:
            raise TrainingError(f"{where}: metric {key!r} must be a scalar, got shape {tuple(value.shape)}")
        out[key] = value
    return loss, out
