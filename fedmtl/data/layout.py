"""The version of how a config's clients are built from its data (its *data layout*).

A run's checkpoints record :data:`DATA_LAYOUT`. When a later fedmtl builds the clients of the
same config otherwise (other rows for a client, in another order), a run resumed across that
change would train its clients on other data from the resumed round on, without a word: the
resume names the change instead (:func:`layout_changes`; ``--force`` goes on with the clients
as they are built now). Every change that alters a federation built from an unchanged config
bumps :data:`DATA_LAYOUT` and adds an entry to :data:`CHANGES`.
"""

from __future__ import annotations

from collections.abc import Callable

DATA_LAYOUT = 2
"""The data layout of this fedmtl (a checkpoint without one is of layout 1)."""


def _label_cut_pooled_rows(dataset: str, partitioner: str) -> bool:
    from fedmtl.data.partitioners import CUTS_CLASSES_IN_ORDER

    return dataset in ("synthetic", "arrests", "celeba") and partitioner in CUTS_CLASSES_IN_ORDER


CHANGES: dict[int, tuple[str, Callable[[str, str], bool]]] = {
    2: ("the pooled rows of a dataset with natural clients are shuffled before a label partitioner cuts "
        "each class into blocks, not taken client by client", _label_cut_pooled_rows),
}
"""Layout → (what changed from the layout before, which configs it affects, by ``data.dataset``
and ``data.partitioner``). Only the built-in datasets are named: a plugin dataset's federation
is its own, and not checked."""


def layout_changes(recorded: object, dataset: str, partitioner: str) -> list[str]:
    """The changes since layout ``recorded`` (1 when not a whole number: written before layouts
    were recorded) that alter the clients of a config of ``dataset`` and ``partitioner``, oldest
    first."""
    since = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else 1
    return [what for layout, (what, affects) in sorted(CHANGES.items())
            if since < layout <= DATA_LAYOUT and affects(dataset, partitioner)]
