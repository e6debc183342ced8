"""Which evaluation metrics a task of each kind reports, and whether one reply's metrics of a
task are a set that kind could have produced.

A client's evaluation of one task reports the metrics of its kind
(:attr:`fedmtl.tasks.TaskKind.metrics`: ``accuracy`` and ``loss`` of a classification task,
``mse``, ``mae`` and ``loss`` of a regression task), all of them, and, for a classification
task on data with group attributes, the group metrics of :func:`fedmtl.group_fairness.group_metrics`:

- ``top-class-rate``;
- per value ``v`` of an attribute ``g``: ``count-<g>-<v>``, ``accuracy-<g>-<v>``,
  ``top-class-rate-<g>-<v>`` and, for a binary task, ``positive-rate-<g>-<v>``,
  ``positives-<g>-<v>``, ``tpr-<g>-<v>`` and ``fpr-<g>-<v>``;
- per attribute: ``accuracy-gap-<g>`` and, for a binary task, ``demographic-parity-diff-<g>``
  and ``equalized-odds-diff-<g>``.

:func:`metric_set_problem` checks what ranges alone cannot: the kind's metrics are all there
(the server's statistics read them), no metric of another kind is, every per-value metric has
its ``count-<g>-<v>``, every gap an attribute with counts, ``positives`` ≤ ``count`` for each
value, and each attribute's counts, whole numbers of at least 1, add up to the test examples
the reply reports (every example has a value of every attribute). Where the dataset declares
its group attributes (:attr:`fedmtl.data.DatasetEntry.groups`), the attributes and values
counted must be among them: a client cannot invent groups (each would add columns to
``rounds.csv``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from fedmtl.one_line import one_line
from fedmtl.tasks import TASK_KINDS

PER_VALUE = ("count", "accuracy", "top-class-rate", "positive-rate", "positives", "tpr", "fpr")
"""Prefixes of the per-value group metrics (``<prefix>-<attribute>-<value>``)."""
BINARY_ONLY = ("positive-rate", "positives", "tpr", "fpr", "demographic-parity-diff", "equalized-odds-diff")
"""Group metrics only a binary task reports."""
GAPS = ("accuracy-gap", "demographic-parity-diff", "equalized-odds-diff")
"""Prefixes of the per-attribute gaps (``<prefix>-<attribute>``)."""
MAX_NAME = 200
"""The longest metric name a reply may carry (``<view>.<task>.<metric>``)."""
MAX_METRICS = 4096
"""The most metrics one reply may carry."""


def attribute_counts(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{attribute: {value: count}}`` of one task's ``count-<g>-<v>`` metrics (the value is the
    part after the last ``-``: an attribute's name may contain ``-``, a value may not)."""
    counts: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        if name.startswith("count-") and "-" in name[len("count-"):]:
            attribute, member = name[len("count-"):].rsplit("-", 1)
            counts.setdefault(attribute, {})[member] = value
    return counts


def attribute_values(clients: Sequence[Mapping[str, float]]) -> dict[str, list[str]]:
    """``{attribute: values}`` of the ``count-<g>-<v>`` metrics of any of ``clients`` (one
    task's metrics from each), attributes sorted by name, values integer codes in numeric order,
    then names alphabetically."""
    values: dict[str, set[str]] = {}
    for metrics in clients:
        for attribute, members in attribute_counts(metrics).items():
            values.setdefault(attribute, set()).update(members)
    return {g: sorted(values[g], key=_value_order) for g in sorted(values)}


def _value_order(value: str) -> tuple[int, int | str]:
    """Integer codes in numeric order, then names alphabetically."""
    return (0, int(value)) if value.isdigit() else (1, value)


def _unknown_group(counts: Mapping[str, Mapping[str, float]], groups: Mapping[str, Collection[str]]) -> str:
    """Why ``counts`` name a group the dataset does not have (``""``: they do not)."""
    for attribute, members in counts.items():
        if attribute not in groups:
            return f"group attribute '{one_line(attribute, 64)}', which the dataset does not have"
        for member in members:
            if member not in groups[attribute]:
                return (f"value '{one_line(member, 32)}' of group attribute '{one_line(attribute, 64)}', "
                        f"which the dataset does not have")
    return ""


def _group_name_problem(name: str, counts: Mapping[str, Mapping[str, float]], binary: bool) -> str:
    """Why group metric ``name`` does not belong to this task's metrics (``""``: it does)."""
    if name == "top-class-rate":
        return "" if counts else "a group metric without group counts"
    for gap in GAPS:
        if name.startswith(gap + "-") and name[len(gap) + 1:] in counts:
            return "" if binary or gap not in BINARY_ONLY else "a metric of binary tasks only"
    for prefix in PER_VALUE:
        rest = name[len(prefix) + 1:] if name.startswith(prefix + "-") else ""
        if "-" in rest:
            attribute, member = rest.rsplit("-", 1)
            if member in counts.get(attribute, {}):
                return "" if binary or prefix not in BINARY_ONLY else "a metric of binary tasks only"
    return "not a metric of this task's kind"


def metric_set_problem(
    metrics: Mapping[str, float], kind: str, examples: float, groups: Mapping[str, Collection[str]] | None = None,
) -> str:
    """Why ``metrics``, one task's evaluation metrics (``{name: value}``, each already in its
    range), cannot come from a task of ``kind`` evaluated on ``examples`` test examples
    (``""``: they can). ``groups``: the dataset's group attributes and their values
    (``None``: not known); counts of any other attribute or value are a problem. See the
    module docstring."""
    expected = TASK_KINDS.get(kind).metrics
    missing = [name for name in expected if name not in metrics]
    if missing:
        return f"no '{missing[0]}', which a {kind} task reports"
    counts = attribute_counts(metrics)
    if groups is not None and (problem := _unknown_group(counts, groups)):
        return problem
    binary = kind == "binary"
    for name in metrics:
        if name in expected:
            continue
        problem = "not a metric of this task's kind" if kind == "regression" else _group_name_problem(
            name, counts, binary)
        if problem:
            return f"'{one_line(name, 64)}': {problem}"
    for attribute, values in counts.items():
        if any(not float(v).is_integer() or v < 1 for v in values.values()):
            return f"a count of attribute '{one_line(attribute, 64)}' is not a whole number of at least 1"
        if sum(values.values()) != examples:
            return (f"the counts of attribute '{one_line(attribute, 64)}' add up to {sum(values.values()):g}, not the "
                    f"{examples:g} test examples reported")
        for member, count in values.items():
            positives = metrics.get(f"positives-{attribute}-{member}")
            if positives is not None and positives > count:
                return (f"positives-{one_line(attribute, 64)}-{one_line(member, 32)} is {positives:g}, "
                        f"more than its count {count:g}")
    return ""
