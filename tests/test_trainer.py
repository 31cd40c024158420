"""The shared trainer on a toy regression problem: learning, exact resume, atomic checkpoints,
NaN stops, EMA warmup, budgets, logging and a 2-process run under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dalle2.config import TrainConfig
from dalle2.training import EMA, Trainer, TrainingError, latest_checkpoint, load_weights, save_component
from dalle2.training import checkpoint as checkpoint_module

WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0])


class ToyDataset(torch.utils.data.Dataset):
    """Sample dicts (``x``, target ``y`` and a caption) of a linear function; the same sample per index."""

    def __init__(self, n: int = 64) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ WEIGHTS

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "y": self.y[index], "caption": f"sample {index}"}


class ToyStream(torch.utils.data.IterableDataset):
    def __init__(self, n: int = 32) -> None:
        self.data = ToyDataset(n)

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def collate(batch: list[dict]) -> dict:
    return {
        "x": torch.stack([s["x"] for s in batch]),
        "y": torch.stack([s["y"] for s in batch]),
        "caption": [s["caption"] for s in batch],
    }


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))


def noisy_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """MSE with noise drawn from torch, Python and NumPy RNGs, so exact resume must restore all three."""
    jitter = 0.01 * (random.random() + float(np.random.rand()))
    noise = 0.01 * torch.randn_like(batch["y"]) + jitter
    return (model(batch["x"]).squeeze(-1) - batch["y"] - noise).pow(2).mean()


def make_trainer(out: Path, *, max_steps: int = 20, checkpoint_every: int = 5, loss_fn=noisy_loss, **kwargs) -> Trainer:
    config = TrainConfig(
        batch_size=8,
        learning_rate=kwargs.pop("learning_rate", 1e-2),
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        max_minutes=kwargs.pop("max_minutes", None),
        mixed_precision=kwargs.pop("mixed_precision", "no"),
        keep_checkpoints=kwargs.pop("keep", 1),
        seed=0,
    )
    kwargs.setdefault("log_with", None)
    kwargs.setdefault("total_steps", 20)  # the LR schedule of the full run, also when stopped early by max_steps
    dataset = kwargs.pop("dataset", None) or ToyDataset()
    return Trainer(make_model(), loss_fn, dataset, config, out, collate_fn=collate, progress=False, **kwargs)


def full_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = {f"model.{k}": v for k, v in trainer.unwrapped_model.state_dict().items()}
    ema = {f"ema.{k}": v for k, v in trainer.ema_model.state_dict().items()}
    optim = trainer.optimizer.state_dict()["state"]
    moments = {f"adam.{i}.{k}": v for i, s in optim.items() for k, v in s.items()}
    return {**model, **ema, **moments}


def assert_identical(a: Trainer, b: Trainer) -> None:
    sa, sb = full_state(a), full_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"not bit-identical after resume: {different}"


def dataset_mse(model: nn.Module) -> float:
    data = ToyDataset()
    model = model.cpu().eval()
    with torch.no_grad():
        return float((model(data.x).squeeze(-1) - data.y).pow(2).mean())


def test_loss_decreases(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=150, checkpoint_every=1000, learning_rate=3e-2, total_steps=150)
    before = dataset_mse(make_model())
    result = trainer.train()
    assert result.stop_reason == "max_steps reached" and result.step == 150
    assert result.samples_per_second > 0 and result.final_loss is not None
    assert dataset_mse(trainer.ema_model) < before / 5
    assert dataset_mse(trainer.unwrapped_model) < before / 5


@pytest.mark.parametrize("stop_at", [10, 7])  # a multiple of the checkpoint interval, and not one
def test_exact_resume_after_max_steps_stop(tmp_path, stop_at):
    full = make_trainer(tmp_path / "a")
    full.train()
    part = make_trainer(tmp_path / "b", max_steps=stop_at)
    assert part.train().checkpoint.name == f"step_{stop_at:08d}"  # checkpointed at the budget stop
    resumed = make_trainer(tmp_path / "b")
    result = resumed.train(resume=True)
    assert result.step == 20 and result.steps_this_run == 20 - stop_at
    assert_identical(full, resumed)


class Killed(Exception):
    pass


@pytest.mark.parametrize("accumulation", [1, 2])
def test_exact_resume_after_kill(tmp_path, accumulation):
    """A run killed mid-step (after the step-10 checkpoint) and resumed with the same settings."""
    calls = {"n": 0}

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 13 * accumulation + 1:  # inside step 14, after the step-10 checkpoint
            raise Killed
        return noisy_loss(model, batch)

    kw = {"gradient_accumulation_steps": accumulation}
    full = make_trainer(tmp_path / "a", **kw)
    full.train()
    with pytest.raises(Killed):
        make_trainer(tmp_path / "b", loss_fn=dying_loss, **kw).train()
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000010"
    resumed = make_trainer(tmp_path / "b", **kw)
    resumed.train(resume=True)
    assert_identical(full, resumed)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    real = checkpoint_module.save_optimizer_state
    calls = {"n": 0}

    def crash_on_second_save(state, path):
        calls["n"] += 1
        if calls["n"] == 2:
            (path.parent / "model.safetensors").write_bytes(b"half a file")  # the crash leaves debris behind
            raise OSError("disk full (simulated)")
        real(state, path)

    monkeypatch.setattr(checkpoint_module, "save_optimizer_state", crash_on_second_save)
    with pytest.raises(OSError, match="simulated"):
        make_trainer(tmp_path, max_steps=10).train()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005"]  # no partial folder, no temp folder
    monkeypatch.setattr(checkpoint_module, "save_optimizer_state", real)
    resumed = make_trainer(tmp_path, max_steps=10)
    assert resumed.train(resume=True).step == 10


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def exploding(model, batch):
        calls["n"] += 1
        loss = noisy_loss(model, batch)
        return loss * float("nan") if calls["n"] == 8 else loss

    trainer = make_trainer(tmp_path, loss_fn=exploding)
    with pytest.raises(TrainingError, match=r"loss is nan at step 8.*step_00000005"):
        trainer.train()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000005"]


def test_ema_warmup_moves_after_one_step(tmp_path):
    initial = {k: v.clone() for k, v in make_model().state_dict().items()}
    trainer = make_trainer(tmp_path, max_steps=1, learning_rate=0.1)
    trainer.train()
    for name, start in initial.items():
        moved = trainer.unwrapped_model.state_dict()[name].cpu() - start
        ema_moved = trainer.ema_model.state_dict()[name].cpu() - start
        # decay after one update is min(0.999, 1/10): the average moved 90% of the way, not 0.1%
        torch.testing.assert_close(ema_moved, 0.9 * moved)
        assert moved.abs().max() > 1e-3
    assert trainer.ema_model.state_dict()["0.weight"].dtype == torch.float32


def test_ema_without_warmup_barely_moves():
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.999, warmup=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, model.weight - 0.999)


def test_time_budget_stops_and_checkpoints(tmp_path, capsys):
    def slow_loss(model, batch):
        time.sleep(0.02)
        return noisy_loss(model, batch)

    trainer = make_trainer(tmp_path, max_steps=100_000, checkpoint_every=100_000, loss_fn=slow_loss, max_minutes=0.005)
    result = trainer.train()
    assert result.stop_reason == "time budget reached"
    assert 1 <= result.step < 100 and result.wall_seconds < 10
    assert result.checkpoint == tmp_path / "checkpoints" / f"step_{result.step:08d}"
    # the step limit still binds too, and the run says so when it starts
    assert "stops at step 100,000 (train.max_steps) or after 0.005 min of this run" in capsys.readouterr().out


@pytest.mark.parametrize(("keep", "expected"), [(1, [20]), (2, [15, 20]), (0, [5, 10, 15, 20])])
def test_train_keep_checkpoints(tmp_path, keep, expected):
    make_trainer(tmp_path, keep=keep).train()
    assert sorted(int(p.name.split("_")[1]) for p in (tmp_path / "checkpoints").iterdir()) == expected


def test_negative_keep_checkpoints_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="keep_checkpoints must be >= 0"):
        make_trainer(tmp_path, keep=-1)


def test_tensorboard_logs_and_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def sample_fn(ema_model, step):
        assert not ema_model.training
        torch.randn(3)  # sampling randomness must not leak into training
        return [Image.new("RGB", (8, 8), (step * 10 % 255, 0, 0)) for _ in range(4)]

    trainer = make_trainer(tmp_path, max_steps=6, log_with=("tensorboard",), sample_fn=sample_fn, sample_every=3)
    trainer.train()
    run = tmp_path / "logs" / "stage"
    events = EventAccumulator(str(run)).Reload()
    tags = events.Tags()
    assert {"loss", "lr", "samples_per_second"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [6]  # log_every=10: only the final step
    assert "samples" in tags["images"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_00000003.png", "step_00000006.png"]


def test_missing_tracker_package_is_a_clear_error(tmp_path):
    try:
        import mlflow  # noqa: F401

        pytest.skip("mlflow is installed")
    except ImportError:
        pass
    with pytest.raises(TrainingError, match="mlflow.*not installed"):
        make_trainer(tmp_path, log_with=("tensorboard", "mlflow"))


def test_refuses_to_overwrite_and_rejects_other_models(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    with pytest.raises(TrainingError, match="already holds a checkpoint"):
        make_trainer(tmp_path, max_steps=4).train()
    other = Trainer(
        nn.Linear(4, 1),
        noisy_loss,
        ToyDataset(),
        TrainConfig(batch_size=8),
        tmp_path,
        collate_fn=collate,
        log_with=None,
    )
    with pytest.raises(TrainingError, match="cannot load .* into this model"):
        other.train(resume=True)


def test_loss_must_be_scalar(tmp_path):
    trainer = make_trainer(tmp_path, loss_fn=lambda model, batch: model(batch["x"]))
    with pytest.raises(TrainingError, match="scalar"):
        trainer.train()


def test_save_ema_component_round_trip(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=3)
    trainer.train()
    folder = trainer.save_ema(tmp_path / "pipe" / "toy", {"hidden": 16})
    header = {"format": "dalle2-component", "format_version": 1, "class": "Sequential"}
    assert json.loads((folder / "config.json").read_text()) == {**header, "hidden": 16}
    fresh = make_model()
    load_weights(fresh, folder / "model.safetensors")
    for name, value in trainer.ema_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value.cpu())
    save_component(fresh, folder, {"hidden": 16})  # overwriting an existing component is fine


def test_bf16_mixed_precision_then_fp32_in_one_process(tmp_path):
    bf16 = make_trainer(tmp_path / "bf16", max_steps=3, mixed_precision="bf16")
    result = bf16.train()
    assert result.step == 3 and np.isfinite(result.final_loss)
    assert bf16.ema_model.state_dict()["0.weight"].dtype == torch.float32
    assert make_trainer(tmp_path / "fp32", max_steps=1).train().step == 1  # precision can change between runs


def test_streamed_dataset_trains(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, dataset=ToyStream(32))  # 4 batches per epoch
    result = trainer.train()
    assert result.step == 6 and trainer.epoch == 1


TWO_PROCESS_SCRIPT = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_trainer import make_trainer
trainer = make_trainer(Path({out!r}), max_steps=6, checkpoint_every=100, log_with=("tensorboard",))
result = trainer.train()
acc = trainer.accelerator
flat = torch.cat([p.detach().flatten() for p in trainer.ema_model.parameters()])
Path({out!r}, f"rank{{acc.process_index}}.txt").write_text(
    f"{{acc.num_processes}} {{result.step}} {{flat.double().sum().item():.17g}}")
"""


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "train_two.py"
    script.write_text(textwrap.dedent(TWO_PROCESS_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))))
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29500 + os.getpid() % 1000),
        str(script),
    ]  # fmt: skip
    # No GPU visible: the trainer then asks Accelerate for CPU processes (gloo). `accelerate launch --cpu`
    # would start a single process: with --cpu it only starts several through mpirun.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [(out / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert ranks[0][:2] == ["2", "6"] and ranks[0] == ranks[1]  # both trained 6 steps and hold the same EMA
    assert [p.name for p in (out / "logs").iterdir()] == ["stage"]  # one tensorboard run
    assert len(list((out / "logs" / "stage").glob("events.out.tfevents.*"))) == 1  # written once
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000006"]
    state = json.loads((out / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["data"]["num_processes"] == 2 and len(state["rng"]) == 2
