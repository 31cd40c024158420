"""The trainer with several optimizer phases (a GAN's D and G steps): alternating updates, per-phase
optimizers and logging, EMA of one sub-module, bit-exact resume, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dalle2.config import TrainConfig
from dalle2.training import Trainer, TrainingError
from dalle2.training.phases import Phase
from tests.test_trainer import ToyDataset, collate


class Pair(nn.Module):
    """Two players: ``a`` fits the data, ``b`` fits ``a`` (so ``b`` must see ``a``'s update of this step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if phase == "a":
            err = self.a(x).squeeze(-1) - y - 0.01 * torch.randn_like(y)  # noise: resume must restore the RNG
            return {"loss": err.pow(2).mean(), "abs_err": err.abs().mean()}
        target = self.a(x).squeeze(-1).detach()
        return (self.b(x).squeeze(-1) - target).pow(2).mean()


def loss_of(name: str):
    return lambda model, batch: model(name, batch["x"], batch["y"])


def make(out: Path, max_steps: int = 8, phases=None, **kwargs) -> Trainer:
    phases = phases or [
        Phase("a", loss_of("a"), "a", learning_rate=0.1),
        Phase("b", loss_of("b"), "b", optimizer="sgd", learning_rate=0.1, momentum=0.5),
    ]
    config = TrainConfig(batch_size=8, learning_rate=1e-3, max_steps=max_steps, checkpoint_every=2, seed=0)
    kwargs.setdefault("log_with", None)
    kwargs.setdefault("ema_of", "b")
    return Trainer(Pair(), phases, ToyDataset(), config, out, collate_fn=collate, progress=False,
                   warmup_steps=0, min_lr_ratio=1.0, **kwargs)  # fmt: skip


def state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in trainer.unwrapped_model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema_model.state_dict().items()})
    for i, optimizer in enumerate(trainer.optimizers):
        for p, s in optimizer.state_dict()["state"].items():
            out.update({f"opt{i}.{p}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


def test_phases_alternate_with_their_own_optimizers_and_logs(tmp_path):
    logged: list[dict[str, float]] = []
    trainer = make(tmp_path, max_steps=100, on_log=lambda step, values: logged.append(values) or {"extra": 1.0})
    result = trainer.train()
    assert isinstance(trainer.optimizers[0].optimizer, torch.optim.AdamW)
    assert isinstance(trainer.optimizers[1].optimizer, torch.optim.SGD)
    assert result.final_losses.keys() == {"a", "b"} and result.final_loss == pytest.approx(
        sum(result.final_losses.values())
    )
    assert result.final_losses["a"] < 0.05 and result.final_losses["b"] < 0.05  # b tracked the moving a
    assert set(trainer.ema_model.state_dict()) == {"weight", "bias"}  # the EMA is of ``b`` alone
    first = logged[0]
    assert {"loss/a", "loss/b", "a/abs_err", "lr/a", "lr/b", "samples_per_second", "epoch"} <= first.keys()
    assert first["lr/a"] == pytest.approx(0.1) and first["lr/b"] == pytest.approx(0.1)  # constant LRs


@pytest.mark.parametrize("stop_at", [4, 5])
def test_resume_is_bit_exact(tmp_path, stop_at):
    whole = make(tmp_path / "whole")
    whole.train()
    make(tmp_path / "split", max_steps=stop_at).train()
    resumed = make(tmp_path / "split")
    result = resumed.train(resume=True)
    assert result.step == 8 and result.steps_this_run == 8 - stop_at
    a, b = state(whole), state(resumed)
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("opt1.")]) == 2  # SGD momentum buffers
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_phase_errors(tmp_path):
    with pytest.raises(TrainingError, match="no sub-module 'c'"):
        make(tmp_path, phases=[Phase("a", loss_of("a"), "a"), Phase("c", loss_of("b"), "c")])
    with pytest.raises(TrainingError, match=r"a\.weight is in phases all and a"):
        make(tmp_path, phases=[Phase("all", loss_of("a")), Phase("a", loss_of("a"), "a")])
    with pytest.raises(TrainingError, match="distinct names"):
        make(tmp_path, phases=[Phase("a", loss_of("a"), "a"), Phase("a", loss_of("b"), "b")])
    with pytest.raises(TrainingError, match="gradient_accumulation_steps 1"):
        make(tmp_path, gradient_accumulation_steps=2)
    with pytest.raises(TrainingError, match="optimizer must be one of adamw, sgd"):
        Phase("a", loss_of("a"), optimizer="lion")
    bad = make(tmp_path / "bad", phases=[Phase("a", lambda m, b: {"value": m("a", b["x"], b["y"])["loss"]}, "a")])
    with pytest.raises(TrainingError, match="under 'loss'"):
        bad.train()


def test_single_loss_checkpoint_is_not_resumed_by_phases(tmp_path):
    single = Trainer(Pair(), lambda m, b: m("b", b["x"], b["y"]), ToyDataset(), TrainConfig(batch_size=8, max_steps=2),
                     tmp_path, collate_fn=collate, log_with=None, progress=False)  # fmt: skip
    single.train()
    with pytest.raises(TrainingError, match=r"optimizer phases none \(one loss\), this run has \['a', 'b'\]"):
        make(tmp_path, ema_of=None).train(resume=True)
