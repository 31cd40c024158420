"""The one trainer every stage uses, on Hugging Face Accelerate.

The trainer knows nothing about the model (minGPT's habit): a stage hands it a module, a loss
``loss_fn(model, batch) -> scalar tensor`` and a dataset of sample dicts, and gets back EMA weights.
A model of several players (a GAN) hands it a list of :class:`~dalle2.training.phases.Phase` instead:
one loss and one optimizer per sub-module, stepped in turn on every batch (see ``phases.py``).
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
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    send_to_device,
    set_seed,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm.auto import tqdm

from dalle2.config import Config, TrainConfig
from dalle2.data.base import collate
from dalle2.errors import InvalidConfigError
from dalle2.grid import image_grid, save_image_atomic
from dalle2.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    preserved_rng,
    restore_rng,
    save_checkpoint,
    save_component,
    unreadable_file,
)
from dalle2.training.ema import EMA
from dalle2.training.errors import TrainingError
from dalle2.training.phases import LossFn, Phase, build_optimizer, phase_parameters, split_loss

SampleFn = Callable[[nn.Module, int], "list[Image.Image] | None"]
LogFn = Callable[[int, dict[str, float]], "dict[str, float] | None"]

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
    final_losses: dict[str, float] | None = None  # per phase (final_loss is their sum)
    total_wall_seconds: float | None = None  # training time of every run that led to this step (resumes summed)
    samples_per_step: int = 0  # images (or pairs) per optimizer step, over all processes and accumulated batches
    device: str = ""  # what trained it: "cpu (2 threads)", "cuda: NVIDIA H200 x1", ...


def device_name(device: torch.device, processes: int = 1) -> str:
    """What a run trained on, for reports and provenance: the accelerator's name, or the CPU's thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} x{processes}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)" + (f" x{processes}" if processes > 1 else "")
    return f"{device.type} x{processes}"


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

    ``loss_fn`` is one loss function, or a sequence of :class:`Phase` (each with its own loss, sub-module,
    optimizer, LR and clipping; ``betas``, ``weight_decay`` and ``max_grad_norm`` below then apply to the
    single-loss case only). Several phases need ``gradient_accumulation_steps == 1`` and no fp16. A loss
    function may return a dict: the scalar ``"loss"`` plus scalars to log. ``ema_of`` names the sub-module
    the EMA averages (e.g. a GAN's generator; default: the whole model). ``on_log(step, logged)`` runs on
    the main process at every log (under ``no_grad``, training RNG streams untouched) and may return more
    scalars to log.

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
    Checkpoints go to ``out_dir/checkpoints/step_*`` (the newest ``keep_checkpoints`` kept, default
    ``config.keep_checkpoints``; 0 keeps all), logs to
    ``out_dir/logs/<stage_name>``, previews to ``out_dir/samples``. ``train(resume=False)`` refuses an
    ``out_dir`` that already holds a checkpoint; ``train(resume=True)`` without one starts afresh.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | Sequence[Phase],
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
        keep_checkpoints: int | None = None,
        run_config: Config | dict[str, Any] | None = None,
        progress: bool = True,
        cpu: bool | None = None,
        ema_of: str | None = None,
        on_log: LogFn | None = None,
    ) -> None:
        if gradient_accumulation_steps < 1:
            raise InvalidConfigError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
        self.config = config
        if callable(loss_fn):
            single = Phase("model", loss_fn, betas=betas, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
            self.phases, self.multi_phase = [single], False
        else:
            self.phases, self.multi_phase = list(loss_fn), True
            names = [p.name for p in self.phases]
            if not self.phases or len(set(names)) != len(names):
                raise TrainingError(f"{stage_name}: phases need distinct names, got {names}")
            if gradient_accumulation_steps != 1 or config.mixed_precision == "fp16":
                raise TrainingError(
                    f"{stage_name}: several optimizer phases need gradient_accumulation_steps 1 and no fp16"
                )
        self.on_log = on_log
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.stage_name = stage_name
        self.sample_fn = sample_fn
        self.sample_every = sample_every or config.checkpoint_every
        self.log_every = max(1, log_every)
        self.keep_checkpoints = int(
            getattr(config, "keep_checkpoints", 1) if keep_checkpoints is None else keep_checkpoints
        )
        if self.keep_checkpoints < 0:
            raise TrainingError(f"{stage_name}: keep_checkpoints must be >= 0 (0 = all), got {self.keep_checkpoints}")
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
            # under DDP a phase leaves the other phases' parameters without gradients
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if self.multi_phase else None,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
            log_with=self.log_with or None,
            project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")),
            step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the process count
            rng_types=[],  # the data order is seeded per epoch, nothing to synchronize
        )
        acc = self.accelerator

        self.ema_of = ema_of
        try:
            averaged = model.get_submodule(ema_of) if ema_of else model
        except AttributeError:
            raise TrainingError(f"{stage_name}: ema_of names no sub-module of the model: {ema_of!r}") from None
        self.ema = EMA(averaged, decay=ema_decay, warmup=ema_warmup).to(acc.device)
        schedule = functools.partial(
            warmup_cosine, warmup=self.warmup_steps, total=self.total_steps, min_ratio=min_lr_ratio
        )
        optimizers, schedulers, owner = [], [], {}
        self._phase_params: list[list[nn.Parameter]] = []
        for phase in self.phases:
            params = phase_parameters(model, phase)
            self._phase_params.append([p for _, p in params])
            if not params:
                what = "the model has" if not self.multi_phase else f"phase {phase.name}: {phase.module!r} has"
                raise TrainingError(f"{stage_name}: {what} no trainable parameters")
            for name, _ in params:
                if name in owner:
                    raise TrainingError(f"{stage_name}: {name} is in phases {owner[name]} and {phase.name}")
                owner[name] = phase.name
            lr = config.learning_rate if phase.learning_rate is None else phase.learning_rate
            optimizers.append(build_optimizer(params, phase, lr))
            schedulers.append(torch.optim.lr_scheduler.LambdaLR(optimizers[-1], schedule))

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
        k = len(self.phases)
        if self.streamed:
            prepared = acc.prepare(model, *optimizers, *schedulers)
            self.dataloader = loader
        else:
            prepared = acc.prepare(model, *optimizers, loader, *schedulers)
            self.dataloader = prepared[1 + k]
            prepared = [*prepared[: 1 + k], *prepared[2 + k :]]
        self.model = prepared[0]
        self.optimizers, self.schedulers = list(prepared[1 : 1 + k]), list(prepared[1 + k :])
        self.optimizer, self.scheduler = self.optimizers[0], self.schedulers[0]  # the single-loss case's
        if not self.streamed:
            if len(self.dataloader) == 0:
                raise TrainingError(
                    f"{stage_name}: the dataset has {len(dataset)} samples, fewer than one batch of "  # type: ignore[arg-type]
                    f"{config.batch_size} per process x {acc.num_processes} processes; lower train.batch_size"
                )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on (this process)
        self.last_loss: float | None = None
        self.last_losses: dict[str, float] = {}
        self.wall_before = 0.0  # training seconds of the runs before a resume (from the checkpoint)
        self._run_start = time.monotonic()

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
        self._load_optimizers(optimizer_state, state["scheduler"], latest)
        self.ema.num_updates = int(state["ema_updates"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        self.last_loss = state.get("loss")
        self.last_losses = dict(state.get("losses") or {})
        self.wall_before = float(state.get("wall_seconds_total", 0.0))
        saved, now = state.get("data", {}), self._data_signature()
        changed = [f"{k} {saved.get(k)} -> {now[k]}" for k in now if saved.get(k) != now[k]]
        if changed:  # the saved position means nothing in another batching: start the next epoch
            acc.print(f"{self.stage_name}: resuming with {', '.join(changed)}; not exact, continuing at the next epoch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        restore_rng(rng)
        acc.print(f"{self.stage_name}: resumed from {latest} (step {self.step})")
        return latest

    def _optimizer_states(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(optimizer state, scheduler state) to checkpoint: as they are for one loss, by phase name for several."""
        if not self.multi_phase:
            return self.optimizer.state_dict(), self.scheduler.state_dict()
        names = [p.name for p in self.phases]
        return (
            {"phases": {n: o.state_dict() for n, o in zip(names, self.optimizers, strict=True)}},
            {"phases": {n: s.state_dict() for n, s in zip(names, self.schedulers, strict=True)}},
        )

    def _load_optimizers(self, optimizer_state: dict[str, Any], scheduler_state: dict[str, Any], path: Path) -> None:
        saved = sorted(optimizer_state["phases"]) if "phases" in optimizer_state else None
        wanted = sorted(p.name for p in self.phases) if self.multi_phase else None
        if saved != wanted:
            raise TrainingError(
                f"{path} was written with optimizer phases {saved or 'none (one loss)'}, this run has "
                f"{wanted or 'none (one loss)'}; resume it with the stage that wrote it, or start a new folder"
            )
        try:
            if not self.multi_phase:
                self.optimizer.load_state_dict(optimizer_state)
                self.scheduler.load_state_dict(scheduler_state)
                return
            for phase, optimizer, scheduler in zip(self.phases, self.optimizers, self.schedulers, strict=True):
                optimizer.load_state_dict(optimizer_state["phases"][phase.name])
                scheduler.load_state_dict(scheduler_state["phases"][phase.name])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:  # a state of another shape
            raise unreadable_file(path / "optimizer.pt", path, error) from None

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
            "phases": ",".join(p.name for p in self.phases),
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
        self._run_start = start
        deadline = start + cfg.max_minutes * 60 if cfg.max_minutes else None
        samples_per_step = cfg.batch_size * acc.num_processes * self.gradient_accumulation_steps
        checkpoint = resumed_from
        window: dict[str, list[float]] = {}  # logged name -> [sum, count] over the logging window
        window_steps, window_start = 0, time.monotonic()
        stop_reason = "max_steps reached" if self.step >= cfg.max_steps else None
        if deadline is not None and stop_reason is None:  # both limits bind; say so, a preset may set max_steps low
            acc.print(
                f"{self.stage_name}: stops at step {cfg.max_steps:,} (train.max_steps) or after "
                f"{cfg.max_minutes:g} min of this run, whichever comes first"
            )
        micro: list[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = [[] for _ in self.phases]
        self.model.train()

        while stop_reason is None:
            seen_any = False
            for batch in self._epoch_batches(self.epoch, self.batch_in_epoch):
                seen_any = True
                self.batch_in_epoch += 1
                over_time = False
                losses: dict[str, float] = {}
                with acc.accumulate(self.model):
                    for i, phase in enumerate(self.phases):
                        with acc.autocast():
                            output = phase.loss_fn(self.model, batch)
                        loss, metrics = split_loss(output, self._where(phase))
                        micro[i].append((loss.detach().float(), metrics))
                        acc.backward(loss)
                        if not acc.sync_gradients:
                            continue
                        over_time = over_time or (deadline is not None and time.monotonic() >= deadline)
                        # One collective per step and phase: the loss for NaN checks and logging, the metrics
                        # and the time budget, so that every process takes the same decision.
                        step_loss, values, over_time = self._reduce(micro[i], over_time)
                        micro[i].clear()
                        if not math.isfinite(step_loss):
                            self._fail(f"{self._where(phase, short=True)}loss is {step_loss}", checkpoint)
                        if phase.max_grad_norm:
                            norm = float(acc.clip_grad_norm_(self._phase_params[i], phase.max_grad_norm))
                            if not math.isfinite(norm) and cfg.mixed_precision != "fp16":
                                self._fail(f"{self._where(phase, short=True)}gradient norm is {norm}", checkpoint)
                        self.optimizers[i].step()
                        self.schedulers[i].step()
                        self.optimizers[i].zero_grad(set_to_none=True)
                        if self.multi_phase:  # gradients a phase left on the other phases' parameters
                            self.model.zero_grad(set_to_none=True)
                        losses[phase.name] = step_loss
                        for key, value in {"loss": step_loss, **values}.items():
                            entry = window.setdefault(self._log_name(phase, key), [0.0, 0])
                            entry[0], entry[1] = entry[0] + value, entry[1] + 1
                if not acc.sync_gradients:
                    continue

                self.step += 1
                self.ema.update(
                    self.unwrapped_model.get_submodule(self.ema_of) if self.ema_of else self.unwrapped_model
                )
                step_loss = sum(losses.values())
                self.last_loss = step_loss
                self.last_losses = losses if self.multi_phase else {}
                window_steps += 1
                if self.step >= cfg.max_steps:
                    stop_reason = "max_steps reached"
                elif over_time:
                    stop_reason = "time budget reached"

                now = time.monotonic()
                rate = window_steps * samples_per_step / max(now - window_start, 1e-9)
                shown = losses if self.multi_phase else {"loss": step_loss}
                bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, samples_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
                if self.step % self.log_every == 0 or stop_reason:
                    self._log(window, rate)
                    window, window_steps, window_start = {}, 0, now
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
            final_losses=dict(self.last_losses) if self.multi_phase else None,
            total_wall_seconds=self.wall_before + wall,
            samples_per_step=samples_per_step,
            device=device_name(acc.device, acc.num_processes),
        )

    def _where(self, phase: Phase, short: bool = False) -> str:
        if short:
            return f"{phase.name} " if self.multi_phase else ""
        return f"{self.stage_name} ({phase.name} phase)" if self.multi_phase else self.stage_name

    def _log_name(self, phase: Phase, key: str) -> str:
        """Logged names: bare for one loss; ``loss/<phase>`` and ``<phase>/<key>`` for several phases."""
        if not self.multi_phase:
            return key
        return f"loss/{phase.name}" if key == "loss" else f"{phase.name}/{key}"

    def _reduce(
        self, micro: list[tuple[torch.Tensor, dict[str, torch.Tensor]]], over_time: bool
    ) -> tuple[float, dict[str, float], bool]:
        """Mean loss and metrics over the accumulated micro-batches and the processes; any process over time."""
        loss = torch.stack([m[0] for m in micro]).mean()
        keys = sorted({k for _, metrics in micro for k in metrics})
        values = [torch.stack([m[1][k] for m in micro if k in m[1]]).mean().to(loss.device) for k in keys]
        local = torch.stack([loss, torch.tensor(float(over_time), device=loss.device), *values])
        total = self.accelerator.reduce(local, reduction="sum").tolist()
        n = self.accelerator.num_processes
        return total[0] / n, {k: v / n for k, v in zip(keys, total[2:], strict=True)}, total[1] > 0

    def _log(self, window: dict[str, list[float]], rate: float) -> None:
        """Log the window's means, LRs and speed; ``on_log`` may add scalars (main process)."""
        acc = self.accelerator
        logged = {name: total / max(count, 1) for name, (total, count) in window.items()}
        for phase, scheduler in zip(self.phases, self.schedulers, strict=True):
            logged[f"lr/{phase.name}" if self.multi_phase else "lr"] = scheduler.get_last_lr()[0]
        logged.update({"samples_per_second": rate, "epoch": self.epoch})
        if self.on_log is not None and acc.is_main_process:
            with preserved_rng(), torch.no_grad():
                logged.update(self.on_log(self.step, dict(logged)) or {})
        acc.log(logged, step=self.step)

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
        optimizer_state, scheduler_state = self._optimizer_states()
        state = {
            "stage": self.stage_name,
            "epoch": epoch,
            "batch": batch,
            "ema_updates": self.ema.num_updates,
            "loss": self.last_loss,
            "losses": self.last_losses,
            "wall_seconds_total": round(self.wall_before + time.monotonic() - self._run_start, 3),
            "scheduler": scheduler_state,
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
                    optimizer_state=optimizer_state,
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
