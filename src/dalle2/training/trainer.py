"""The one trainer every stage uses, on Hugging Face Accelerate.

The trainer knows nothing about the model (minGPT's habit): a stage hands it a module, a loss
``loss_fn(model, batch) -> scalar tensor`` and a dataset of sample dicts, and gets back EMA weights.
The same code runs on one CPU, one or several GPUs and several nodes (``accelerate launch`` /
torchrun): Accelerate owns devices, DDP, mixed precision, gradient accumulation and trackers.

Exact resume. A checkpoint holds model, EMA, optimizer, LR scheduler, step, every process's RNG
states and the data position (epoch, batches done in it). The data order is a pure function of
``(seed, epoch)`` (a permutation from a ``torch.Generator`` seeded with ``seed + epoch``), so a resumed
run rebuilds the epoch's order and skips the batches already seen; a run killed after a checkpoint
and resumed ends with bit-identical weights to an uninterrupted run. This assumes that the dataset
returns the same sample for the same index (randomness belongs in ``loss_fn``, which draws from the
restored torch RNG) and that the number of processes and the batch size are unchanged.

Several processes: ``accelerate launch --multi_gpu --num_processes N ...`` or ``torchrun``; on a machine
without GPUs the trainer asks Accelerate for CPU processes (gloo). (``accelerate launch --cpu`` starts
several processes only through mpirun; without it, one.) Multi-node runs need ``out_dir`` on a shared
file system: only the main process writes, every process reads the checkpoint when resuming.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.tracking import get_available_trackers
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, send_to_device, set_seed
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from dalle2.config import Config, TrainConfig
from dalle2.data.base import collate
from dalle2.grid import image_grid, save_image_atomic
from dalle2.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    preserved_rng,
    restore_rng,
    save_checkpoint,
    save_component,
)
from dalle2.training.ema import EMA
from dalle2.training.errors import TrainingError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
SampleFn = Callable[[nn.Module, int], "list[Image.Image] | None"]

# Trackers Accelerate can drive, and the package each one needs.
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "aim": "aim",
    "comet_ml": "comet-ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "trackio": "trackio",
    "swanlab": "swanlab",
}


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total, including those before a resume
    steps_this_run: int
    wall_seconds: float
    samples_per_second: float  # over all processes
    final_loss: float | None  # loss of the last step (mean over processes and accumulated batches)
    stop_reason: str  # "max_steps reached" | "time budget reached"
    checkpoint: Path | None  # the newest checkpoint on disk


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup  # the first step already moves the weights
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochSampler(Sampler[int]):
    """A permutation per epoch from a generator seeded with ``seed + epoch``: identical on every process,
    and rebuilt exactly after a resume."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.length, generator=generator).tolist()

    def __len__(self) -> int:
        return self.length


def check_trackers(log_with: Sequence[str] | str | None) -> list[str]:
    """Tracker names, each checked to be known to Accelerate and installed (else a TrainingError)."""
    if log_with is None:
        return []
    names = [log_with] if isinstance(log_with, str) else list(log_with)
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise TrainingError(f"unknown tracker {name!r}; choose from {', '.join(TRACKER_PACKAGES)}")
        if name not in available:
            raise TrainingError(
                f"logging to {name} was asked for but the {TRACKER_PACKAGES[name]!r} package is not installed "
                f"(pip install {TRACKER_PACKAGES[name]}), or leave {name} out of log_with"
            )
    return list(dict.fromkeys(names))


def _has_accelerator_device() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _allow_new_mixed_precision(mixed_precision: str) -> None:
    """Accelerate keeps one state per process; let a single-process run (tests, ``train all``) switch precision."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as tracker-friendly scalars (None and lists become strings)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(f"{name}/", value))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Trainer:
    """Train ``model`` by minimizing ``loss_fn(model, batch)`` over ``dataset``; see the module docstring.

    ``loss_fn`` must go through ``model(...)`` (its ``forward``): under DDP only the forward pass is
    synchronized, and under mixed precision only it is autocast by the prepared model (the trainer
    also wraps the whole call in ``accelerator.autocast()``). Batches arrive on the training device.
    ``config.batch_size`` is per process; one optimizer step sees
    ``batch_size * processes * gradient_accumulation_steps`` samples. ``sample_fn(ema_model, step)``
    returns preview images (or None); it runs on the main process only, under ``torch.no_grad`` and
    without disturbing the training RNG streams.

    Optimizer: AdamW (weight decay on tensors of 2+ dimensions only), LR = ``config.learning_rate``
    times ``warmup_cosine``: linear warmup over ``warmup_steps`` (default 5% of the schedule, at most
    1000), cosine decay to ``min_lr_ratio`` at ``total_steps`` (default ``config.schedule_steps``, else
    ``config.max_steps``; set it to the full length when stopping early by ``max_steps`` and resuming
    later with a larger one). Gradients
    are clipped to ``max_grad_norm``. ``config.max_minutes`` counts this run's wall time only.
    Checkpoints go to ``out_dir/checkpoints/step_*`` (the newest ``keep_checkpoints`` kept), logs to
    ``out_dir/logs/<stage_name>``, previews to ``out_dir/samples``. ``train(resume=False)`` refuses an
    ``out_dir`` that already holds a checkpoint; ``train(resume=True)`` without one starts afresh.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataset: Dataset | IterableDataset,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        sample_fn: SampleFn | None = None,
        sample_every: int | None = None,
        log_with: Sequence[str] | str | None = ("tensorboard",),
        stage_name: str = "stage",
        gradient_accumulation_steps: int = 1,
        warmup_steps: int | None = None,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        max_grad_norm: float | None = 1.0,
        num_workers: int = 0,
        log_every: int = 10,
        keep_checkpoints: int = 1,
        run_config: Config | dict[str, Any] | None = None,
        progress: bool = True,
        cpu: bool | None = None,
    ) -> None:
        if gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
        self.config = config
        self.loss_fn = loss_fn
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.stage_name = stage_name
        self.sample_fn = sample_fn
        self.sample_every = sample_every or config.checkpoint_every
        self.max_grad_norm = max_grad_norm
        self.log_every = max(1, log_every)
        self.keep_checkpoints = keep_checkpoints
        self.progress = progress
        if run_config is None:
            run_config = {"train": dataclasses.asdict(config)}
        elif not isinstance(run_config, dict):
            run_config = run_config.to_dict()
        self.run_config = json.loads(json.dumps(run_config, default=str))  # plain YAML-safe types
        self.total_steps = total_steps or getattr(config, "schedule_steps", None) or config.max_steps
        self.warmup_steps = warmup_steps if warmup_steps is not None else min(1000, max(1, self.total_steps // 20))
        self.min_lr_ratio = min_lr_ratio
        self.gradient_accumulation_steps = gradient_accumulation_steps

        self.log_with = check_trackers(log_with)
        _allow_new_mixed_precision(config.mixed_precision)
        self.accelerator = Accelerator(
            cpu=not _has_accelerator_device() if cpu is None else cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
            log_with=self.log_with or None,
            project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")),
            step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
            rng_types=[],  # the data order is seeded per epoch, nothing to synchronize
        )
        acc = self.accelerator

        self.ema = EMA(model, decay=ema_decay, warmup=ema_warmup).to(acc.device)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise TrainingError(f"{stage_name}: the model has no trainable parameters")
        groups = [  # no weight decay on biases and norm gains (nanoGPT's habit)
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=config.learning_rate, betas=betas, weight_decay=weight_decay
        )
        schedule = functools.partial(
            warmup_cosine, warmup=self.warmup_steps, total=self.total_steps, min_ratio=min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        # Data: a map-style dataset gets the seeded per-epoch sampler and Accelerate's sharding; a streamed
        # (iterable) dataset is expected to shard itself across processes (as ShardDataset does).
        self.dataset = dataset
        self.streamed = isinstance(dataset, IterableDataset)
        self._loader_generator = torch.Generator()  # worker seeds only; reseeded per epoch
        self._sampler = None if self.streamed else EpochSampler(len(dataset), config.seed)  # type: ignore[arg-type]
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=self._sampler,
            collate_fn=collate_fn or collate,
            num_workers=num_workers,
            drop_last=True,
            generator=self._loader_generator,
            pin_memory=acc.device.type == "cuda",
        )
        if self.streamed:
            self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
            self.dataloader = loader
        else:
            self.model, self.optimizer, self.dataloader, self.scheduler = acc.prepare(
                model, optimizer, loader, scheduler
            )
            if len(self.dataloader) == 0:
                raise TrainingError(
                    f"{stage_name}: the dataset has {len(dataset)} samples, fewer than one batch of "  # type: ignore[arg-type]
                    f"{config.batch_size} per process x {acc.num_processes} processes; lower train.batch_size"
                )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on (this process)
        self.last_loss: float | None = None

    # -- public helpers ------------------------------------------------------------------------------

    @property
    def ema_model(self) -> nn.Module:
        """The fp32 EMA copy of the model: what inference and ``save_ema`` use."""
        return self.ema.model

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def save_ema(self, folder: str | Path, config: dict[str, Any]) -> Path | None:
        """Write the EMA weights as ``folder/model.safetensors`` + ``folder/config.json`` (main process only)."""
        path = save_component(self.ema.model, folder, config) if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return path

    # -- training ------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> TrainResult:
        """Train until ``config.max_steps`` or ``config.max_minutes`` (of this run); checkpoint and report."""
        acc = self.accelerator
        resumed_from = self._start(resume)
        acc.init_trackers(self.stage_name, config=self._hparams())
        bar = tqdm(
            total=self.config.max_steps,
            initial=self.step,
            desc=self.stage_name,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and acc.is_main_process),
        )
        try:
            return self._loop(bar, resumed_from)
        finally:
            bar.close()
            acc.end_training()

    def _start(self, resume: bool) -> Path | None:
        """Restore the latest checkpoint (``resume``) or seed a fresh run; return the checkpoint used."""
        acc = self.accelerator
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is not None and not resume:
            raise TrainingError(
                f"{self.checkpoint_dir} already holds a checkpoint ({latest.name}); resume it (--resume) "
                "or train into a new output folder"
            )
        if latest is None:
            if resume:
                acc.print(f"{self.stage_name}: no checkpoint in {self.checkpoint_dir}, starting from scratch")
            set_seed(self.config.seed, device_specific=True)  # seed + process index: different noise per process
            self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
            return None
        state, optimizer_state, rng = load_checkpoint(
            latest, model=self.unwrapped_model, ema_model=self.ema.model, rank=acc.process_index, device=acc.device
        )
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.num_updates = int(state["ema_updates"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        self.last_loss = state.get("loss")
        saved, now = state.get("data", {}), self._data_signature()
        changed = [f"{k} {saved.get(k)} -> {now[k]}" for k in now if saved.get(k) != now[k]]
        if changed:  # the saved position means nothing in another batching: start the next epoch
            acc.print(f"{self.stage_name}: resuming with {', '.join(changed)}; not exact, continuing at the next epoch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        restore_rng(rng)
        acc.print(f"{self.stage_name}: resumed from {latest} (step {self.step})")
        return latest

    def _data_signature(self) -> dict[str, Any]:
        return {
            "batch_size": self.config.batch_size,
            "num_processes": self.accelerator.num_processes,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "seed": self.config.seed,
            "dataset_length": None if self.streamed else len(self.dataset),  # type: ignore[arg-type]
        }

    def _hparams(self) -> dict[str, Any]:
        trainer = {
            "stage": self.stage_name,
            "ema_decay": self.ema.decay,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
        }
        return _flat("", {"train": dataclasses.asdict(self.config), "trainer": trainer})

    def _epoch_batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """The batches of ``epoch`` on this process, after the first ``skip``."""
        self._loader_generator.manual_seed(self.config.seed + epoch)
        if self.streamed:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            device = self.accelerator.device
            return itertools.islice((send_to_device(b, device) for b in self.dataloader), skip, None)
        self._sampler.set_epoch(epoch)  # type: ignore[union-attr]
        loader = self.dataloader if skip == 0 else self.accelerator.skip_first_batches(self.dataloader, skip)
        loader.set_epoch(epoch)  # DataLoaderShard passes its own epoch to the sampler when iterated
        return loader

    def _loop(self, bar: tqdm, resumed_from: Path | None) -> TrainResult:
        acc, cfg = self.accelerator, self.config
        start_step, start = self.step, time.monotonic()
        deadline = start + cfg.max_minutes * 60 if cfg.max_minutes else None
        samples_per_step = cfg.batch_size * acc.num_processes * self.gradient_accumulation_steps
        checkpoint = resumed_from
        window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
        stop_reason = "max_steps reached" if self.step >= cfg.max_steps else None
        micro_losses: list[torch.Tensor] = []
        self.model.train()

        while stop_reason is None:
            seen_any = False
            for batch in self._epoch_batches(self.epoch, self.batch_in_epoch):
                seen_any = True
                self.batch_in_epoch += 1
                over_time = False
                with acc.accumulate(self.model):
                    with acc.autocast():
                        loss = self.loss_fn(self.model, batch)
                    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                        raise TrainingError(f"{self.stage_name}: loss_fn must return a scalar tensor, got {shape}")
                    micro_losses.append(loss.detach().float())
                    acc.backward(loss)
                    if acc.sync_gradients:
                        over_time = deadline is not None and time.monotonic() >= deadline
                        # One collective per step: the loss for NaN checks and logging, and the time
                        # budget, so that every process takes the same decision.
                        mean = torch.stack(micro_losses).mean()
                        local = torch.stack([mean, torch.tensor(float(over_time), device=mean.device)])
                        total = acc.reduce(local, reduction="sum").tolist()
                        micro_losses.clear()
                        step_loss, over_time = total[0] / acc.num_processes, total[1] > 0
                        if not math.isfinite(step_loss):
                            self._fail(f"loss is {step_loss}", checkpoint)
                        if self.max_grad_norm:
                            norm = float(acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm))
                            if not math.isfinite(norm) and cfg.mixed_precision != "fp16":
                                self._fail(f"gradient norm is {norm}", checkpoint)
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue

                self.step += 1
                self.ema.update(self.unwrapped_model)
                self.last_loss = step_loss
                window_loss, window_steps = window_loss + step_loss, window_steps + 1
                if self.step >= cfg.max_steps:
                    stop_reason = "max_steps reached"
                elif over_time:
                    stop_reason = "time budget reached"

                now = time.monotonic()
                rate = window_steps * samples_per_step / max(now - window_start, 1e-9)
                bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
                if self.step % self.log_every == 0 or stop_reason:
                    lr = self.scheduler.get_last_lr()[0]
                    acc.log(
                        {"loss": window_loss / window_steps, "lr": lr, "samples_per_second": rate, "epoch": self.epoch},
                        step=self.step,
                    )
                    window_loss, window_steps, window_start = 0.0, 0, now
                if self.step % cfg.checkpoint_every == 0 or stop_reason:
                    checkpoint = self._save()  # always at a stop, so a resume continues from here
                if self.sample_fn is not None and (self.step % self.sample_every == 0 or stop_reason):
                    self._sample()
                if stop_reason:
                    break
            else:
                if not seen_any and self.batch_in_epoch == 0:
                    raise TrainingError(
                        f"{self.stage_name}: epoch {self.epoch} yielded no batches; is the dataset empty?"
                    )
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0

        wall = time.monotonic() - start
        steps = self.step - start_step
        return TrainResult(
            step=self.step,
            steps_this_run=steps,
            wall_seconds=wall,
            samples_per_second=steps * samples_per_step / wall if wall > 0 else 0.0,
            final_loss=self.last_loss,
            stop_reason=stop_reason,
            checkpoint=checkpoint,
        )

    def _fail(self, what: str, checkpoint: Path | None) -> None:
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        raise TrainingError(
            f"{self.stage_name}: {what} at step {self.step + 1}; stopped without saving this state ({kept}). "
            "Lower train.learning_rate or check the data, then resume."
        )

    # -- checkpoints and previews --------------------------------------------------------------------

    def _save(self) -> Path:
        """Checkpoint the current step: every process hands in its RNG states, the main process writes."""
        acc = self.accelerator
        rng_states = gather_object([capture_rng()])
        epoch, batch = self.epoch, self.batch_in_epoch
        if not self.streamed and batch >= len(self.dataloader):
            epoch, batch = epoch + 1, 0
        state = {
            "stage": self.stage_name,
            "epoch": epoch,
            "batch": batch,
            "ema_updates": self.ema.num_updates,
            "loss": self.last_loss,
            "scheduler": self.scheduler.state_dict(),
            "data": self._data_signature(),
            "train": dataclasses.asdict(self.config),
        }
        path = self.checkpoint_dir / f"step_{self.step:08d}"
        acc.wait_for_everyone()
        error = None
        if acc.is_main_process:
            try:
                path = save_checkpoint(
                    self.checkpoint_dir,
                    step=self.step,
                    model=self.unwrapped_model,
                    ema_model=self.ema.model,
                    optimizer_state=self.optimizer.state_dict(),
                    state=state,
                    rng_states=rng_states,
                    run_config=self.run_config,
                    keep=self.keep_checkpoints,
                )
            except Exception as e:  # tell the other processes, then raise everywhere
                error = e
        message = broadcast_object_list([None if error is None else f"{type(error).__name__}: {error}"])[0]
        if error is not None:
            raise error
        if message is not None:
            raise TrainingError(f"{self.stage_name}: saving the checkpoint failed on the main process: {message}")
        return path

    def _sample(self) -> None:
        """Preview grid from the EMA model: PNG in out_dir/samples/ and an image in the trackers (main only)."""
        acc = self.accelerator
        if not acc.is_main_process:
            return
        with preserved_rng(), torch.no_grad():
            images = self.sample_fn(self.ema.model, self.step)  # type: ignore[misc]
        if not images:
            return
        grid = image_grid(images)
        path = save_image_atomic(grid, self.out_dir / "samples" / f"step_{self.step:08d}.png")
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(grid), self.step, dataformats="HWC")
                tracker.writer.flush()
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_artifact(str(path), artifact_path="samples")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({"samples": [grid]}, step=self.step)
