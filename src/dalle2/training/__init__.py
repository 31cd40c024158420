"""Training: one trainer on Accelerate (EMA, exact resume, budgets, logging) shared by every stage."""

from dalle2.training.checkpoint import latest_checkpoint, load_weights, save_component
from dalle2.training.ema import EMA
from dalle2.training.errors import TrainingError
from dalle2.training.trainer import Trainer, TrainResult, warmup_cosine

__all__ = [
    "EMA",
    "Trainer",
    "TrainResult",
    "TrainingError",
    "latest_checkpoint",
    "load_weights",
    "save_component",
    "warmup_cosine",
]
