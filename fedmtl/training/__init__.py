"""Training and evaluation loops, usable with or without Flower."""

from fedmtl.training.evaluate import evaluate
from fedmtl.training.local import (
    TrainResult,
    measure_losses,
    multitask_step,
    train_local,
)

__all__ = ["TrainResult", "evaluate", "measure_losses", "multitask_step", "train_local"]
