"""The version of how a config's clients are built from its data (its *data layout*).

A run's checkpoints record :data:`DATA_LAYOUT`. When a later fedmtl builds the clients of the
same config otherwise (other rows for a client, in another order), a run resumed across that
change would train its clients on other data from the resumed round on, without a word: the
resume names the change instead (:func:`layout_changes`; ``--force`` goes on with the clients
as they are built now). Every change that alters a federation built from an unchanged config
bumps :data:`DATA_LAYOUT` and adds an entry to :data:`CHANGES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DATA_LAYOUT = 3
"""The data layout of this fedmtl (a checkpoint without one is of layout 1)."""


def _label_cut_pooled_rows(dataset: str, partitioner: str, params: Mapping[str, Any]) -> bool:
    from fedmtl.data.partitioners import CUTS_CLASSES_IN_ORDER

    return dataset in ("synthetic", "arrests", "celeba") and partitioner in CUTS_CLASSES_IN_ORDER


def _pixel_centre_index(src: int, dst: int) -> np.ndarray:
    """The MultiMNIST resize of layouts 1 and 2: source pixel ``⌊(i + ½)·src/dst⌋``."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def _canvas_resized_otherwise(dataset: str, partitioner: str, params: Mapping[str, Any]) -> bool:
    from fedmtl.data.multimnist import CANVAS, DIGIT, _nearest_index

    if dataset != "multimnist":
        return False
    canvas = params.get("canvas", CANVAS)
    if not isinstance(canvas, int) or isinstance(canvas, bool) or canvas < DIGIT:
        return False
    return not np.array_equal(_pixel_centre_index(canvas, DIGIT), _nearest_index(canvas, DIGIT))


CHANGES: dict[int, tuple[str, Callable[[str, str, Mapping[str, Any]], bool]]] = {
    2: ("the pooled rows of a dataset with natural clients are shuffled before a label partitioner cuts "
        "each class into blocks, not taken client by client", _label_cut_pooled_rows),
    3: ("MultiMNIST canvases are resized by Pillow's nearest neighbour, which takes other pixels than "
        "the pixel-centre formula on this data.params.canvas", _canvas_resized_otherwise),
}
"""Layout → (what changed from the layout before, which configs it affects, by ``data.dataset``,
``data.partitioner`` and ``data.params``). Only the built-in datasets are named: a plugin
dataset's federation is its own, and not checked."""


def layout_changes(recorded: object, dataset: str, partitioner: str,
                   params: Mapping[str, Any] | None = None) -> list[str]:
    """The changes since layout ``recorded`` (1 when not a whole number: written before layouts
    were recorded) that alter the clients of a config of ``dataset``, ``partitioner`` and
    ``params`` (``data.params``), oldest first."""
    since = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else 1
    return [what for layout, (what, affects) in sorted(CHANGES.items())
            if since < layout <= DATA_LAYOUT and affects(dataset, partitioner, params or {})]
