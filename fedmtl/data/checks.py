"""What a dataset's builder returns is checked against what the dataset declares.

A dataset (a plugin's, docs/extending.md) declares its input shape and tasks
(:class:`fedmtl.data.DatasetEntry`); its :class:`~fedmtl.data.federation.Federation` must
have them, and every client's data must fit them: float32 inputs of that shape with finite
values, targets of every declared task and no other in every split (``data.task-sets`` then
gives a client fewer), one target per example, and targets its task's kind accepts
(:meth:`fedmtl.tasks.TaskKind.target_problem`: class labels in range); group attributes
(``Split.groups``) hold one integer code per example, each a value the attribute names, and
are the groups the dataset declares (:attr:`fedmtl.data.DatasetEntry.groups`). Anything
else is a :class:`DataError` naming the dataset, the client, the split and the task, before
training or evaluation could turn it into a shape error deep in PyTorch or a silent NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedmtl.group_fairness import value_name
from fedmtl.tasks import TASK_KINDS, TaskSpec


class DataError(ValueError):
    """A dataset's data does not fit what it declares, or no partition fits the config (one
    line naming where, or the keys to change)."""


def check_federation(name: str, tasks: Sequence[TaskSpec], input_shape: Sequence[int], built_tasks: Sequence[TaskSpec],
                     built_shape: Sequence[int], num_clients: int | None = None,
                     built_clients: int | None = None) -> None:
    """The federation the dataset built has the tasks and input shape it declares, and the
    ``num_clients`` clients the config asks for (``data.num-clients``; not checked when ``None``).

    Raises
    ------
    DataError
        Naming the dataset and what differs.
    """
    if num_clients is not None and built_clients != num_clients:
        raise DataError(f"data.dataset = {name!r} built a federation of {built_clients!r} clients for "
                        f"data.num-clients = {num_clients} (its build passes cfg.num_clients to Federation)")
    if tuple(built_shape) != tuple(input_shape):
        raise DataError(f"data.dataset = {name!r} declares inputs of shape {tuple(input_shape)} but built a "
                        f"federation of shape {tuple(built_shape)}")
    if list(built_tasks) != list(tasks):
        raise DataError(f"data.dataset = {name!r} declares the tasks {_specs(tasks)} but built a federation of "
                        f"{_specs(built_tasks)}")


def _specs(tasks: Sequence[TaskSpec]) -> str:
    return ", ".join(f"{t.name} ({t.kind}, {t.num_classes} classes)" for t in tasks) or "none"


def check_client_data(name: str, client_id: int, splits: Mapping[str, Any], tasks: Sequence[TaskSpec],
                      input_shape: Sequence[int], groups: Mapping[str, Sequence[str]] | None = None) -> None:
    """Client ``client_id``'s splits (``{"train": Split, "test": Split, ...}``; this module
    comes before :mod:`fedmtl.data.federation`, which calls it, so it names no ``Split``) fit the
    dataset's declared ``tasks`` and ``input_shape``, and their group attributes are well formed
    (:func:`_groups_problem`) and, where the dataset declares its ``groups`` (``{attribute:
    value names}``; ``None``: not declared), these.

    Raises
    ------
    DataError
        ``data.dataset = '<name>', client <id>, split '<split>': <what>``.
    """
    specs = {t.name: t for t in tasks}
    for split_name, split in splits.items():
        problem = _split_problem(split, specs, tuple(input_shape)) or _groups_problem(split, groups)
        if problem is None and split_name in ("train", "test") and len(split) == 0:
            problem = "no examples (a client trains and is tested on at least one each)"
        if problem:
            raise DataError(f"data.dataset = {name!r}, client {client_id}, split '{split_name}': {problem}")


def _split_problem(split: Any, specs: dict[str, TaskSpec], shape: tuple[int, ...]) -> str | None:
    x = getattr(split, "x", None)
    targets = getattr(split, "targets", None)
    if not isinstance(x, torch.Tensor) or not isinstance(targets, dict):
        return "not a fedmtl.data.Split (inputs x as a tensor, targets as a dict of tensors)"
    if x.dtype != torch.float32:
        return f"inputs are {x.dtype}; give torch.float32"
    if tuple(x.shape[1:]) != shape:
        return f"inputs of shape {tuple(x.shape[1:])}, but the dataset declares {shape}"
    if not bool(torch.isfinite(x).all()):
        return f"{int((~torch.isfinite(x)).sum())} input value(s) are not finite (NaN or infinite)"
    missing = [task for task in specs if task not in targets]
    if missing:
        return (f"no targets of task {', '.join(repr(t) for t in missing)} (each split holds every declared task: "
                f"{', '.join(specs)}; data.task-sets gives clients fewer)")
    for task, target in targets.items():
        if task not in specs:
            return f"targets of task {task!r}, which the dataset does not declare (its tasks: {', '.join(specs)})"
        if not isinstance(target, torch.Tensor) or target.dim() != 1 or len(target) != len(x):
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            return f"task '{task}': targets of shape {got}, expected ({len(x)},): one per example"
        spec = specs[task]
        problem = TASK_KINDS.get(spec.kind)().target_problem(target, spec.num_classes)
        if problem:
            return f"task '{task}' ({spec.kind}, {spec.num_classes} classes): {problem}"
    return None


def _groups_problem(split: Any, declared: Mapping[str, Sequence[str]] | None) -> str | None:
    """What is wrong with a split's group attributes (``None``: nothing): each attribute's
    codes are one integer per example, each a value it names (at least 0, below the number of
    its ``group_names`` where it has them); names only of attributes the split has; and, where
    the dataset ``declared`` its groups, exactly those attributes, each value's name
    (:func:`fedmtl.group_fairness.value_name`) one it declares."""
    groups, names = getattr(split, "groups", None), getattr(split, "group_names", None)
    if not isinstance(groups, dict) or not isinstance(names, dict):
        return "groups and group_names must be dicts keyed by attribute name"
    for attribute in names:
        if attribute not in groups:
            return f"group_names of attribute {attribute!r}, which has no groups"
    for attribute, codes in groups.items():
        problem = _codes_problem(codes, len(split.x), names.get(attribute))
        if problem:
            return f"group attribute {attribute!r}: {problem}"
    if declared is None:
        return None
    if set(groups) != set(declared):
        return (f"group attributes {sorted(groups)}, but the dataset declares {sorted(declared)} "
                "(DatasetEntry groups=)")
    for attribute, codes in groups.items():
        for code in sorted(int(c) for c in codes.unique()):
            value = value_name(code, names.get(attribute))
            if value not in declared[attribute]:
                return (f"group attribute {attribute!r}: value {value!r} (code {code}), which the dataset does "
                        f"not declare (its values: {', '.join(declared[attribute])})")
    return None


def _codes_problem(codes: Any, examples: int, names: Sequence[str] | None) -> str | None:
    """What is wrong with one attribute's group codes (``None``: nothing)."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 1 or len(codes) != examples:
        got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        return f"codes of shape {got}, expected ({examples},): one per example"
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        return f"codes must be integers, not {codes.dtype}"
    if not len(codes):
        return None
    low, high = int(codes.min()), int(codes.max())
    if low < 0:
        return f"codes span {low}..{high}; a group code is at least 0"
    if names is not None and high >= len(names):
        return (f"codes span {low}..{high}, outside 0..{len(names) - 1} (its group_names: "
                f"{', '.join(map(str, names))})")
    try:
        for code in codes.unique():
            value_name(int(code), names)
    except ValueError as error:
        return str(error)
    return None


def checked_partition(name: str, parts: Any, num_clients: int, num_rows: int) -> list[np.ndarray]:
    """What partitioner ``name`` returned, as one integer index array per client, once it is
    known to be that: ``num_clients`` arrays of integers in ``[0, num_rows)``, each row in at
    most one part, once (a row in two parts, or twice in one, would be split into one client's
    training data and another's, or its own, test data).

    Raises
    ------
    DataError
        ``data.partitioner = '<name>': <what>``.
    """
    where = f"data.partitioner = {name!r}"
    if not isinstance(parts, list | tuple) or len(parts) != num_clients:
        got = f"{len(parts)} parts" if isinstance(parts, list | tuple) else f"a {type(parts).__name__}"
        raise DataError(f"{where} returned {got} for data.num-clients = {num_clients}; a partitioner returns one "
                        "array of row indices per client")
    out = []
    for client, part in enumerate(parts):
        rows = np.asarray(part)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise DataError(f"{where}: client {client}'s part is not a 1-D array of integer row indices "
                            f"(shape {rows.shape}, dtype {rows.dtype})")
        bad = rows[(rows < 0) | (rows >= num_rows)] if rows.size else rows
        if bad.size:
            raise DataError(f"{where}: client {client}'s part holds row {int(bad[0])}, outside the dataset's "
                            f"{num_rows} rows")
        if rows.size < 2:
            raise DataError(f"{where}: client {client}'s part has {rows.size} row(s); a client needs at least 2 "
                            "(one to train on, one to test on)")
        out.append(rows.astype(np.int64, copy=False))
    _check_disjoint(where, out, num_rows)
    return out


def _check_disjoint(where: str, parts: list[np.ndarray], num_rows: int) -> None:
    """Refuse parts that hold a row twice: in one part, or in two clients' parts."""
    rows = np.concatenate(parts)
    counts = np.bincount(rows, minlength=num_rows)
    if not (counts > 1).any():
        return
    owners = np.concatenate([np.full(len(part), client) for client, part in enumerate(parts)])
    row = int(np.flatnonzero(counts > 1)[0])
    holders = sorted(int(c) for c in owners[rows == row])
    if len(set(holders)) == 1:
        raise DataError(f"{where}: client {holders[0]}'s part holds row {row} {len(holders)} times; each row "
                        "belongs to one client once (its train and test splits would share it)")
    raise DataError(f"{where}: row {row} is in the parts of clients {', '.join(map(str, sorted(set(holders))))}; "
                    "each row belongs to one client (one's test data would be another's training data)")
