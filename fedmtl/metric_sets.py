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
``rounds.csv``), and every declared attribute must be counted: a client cannot leave itself
out of the group statistics.

For fedmtl's own classification kinds (:data:`COUNTED_KINDS`), whose rates are exact ratios of
whole counts, the metrics must also come from one set of predictions: ``accuracy`` × the test
examples is a whole number; each counted value reports all its rates (``tpr`` only with
positives, ``fpr`` only with negatives), each a whole number of examples out of its count; the
values' correct answers add up to the task's; and each gap is its values' largest rate minus
the smallest (equalized odds: the larger of the TPR and FPR gaps). A client can still lie
consistently (claim other predictions), but not report gaps its own rates contradict.
"""

from __future__ import annotations

import re
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


METRIC_NAME = re.compile(r"[\w.+ -]+")
"""What an evaluation metric's name (and so a group attribute's or value's) is made of: no
comma, quote, newline, bracket or other mark that would break a CSV row, a column name or a
console line."""


def metric_set_problem(
    metrics: Mapping[str, float], kind: str, examples: float, groups: Mapping[str, Collection[str]] | None = None,
) -> str:
    """Why ``metrics``, one task's evaluation metrics (``{name: value}``, each already in its
    range), cannot come from a task of ``kind`` evaluated on ``examples`` test examples
    (``""``: they can). ``groups``: the dataset's group attributes and their values
    (``None``: not known); counts of any other attribute or value are a problem. See the
    module docstring."""
    for name in metrics:
        if not METRIC_NAME.fullmatch(name):
            return (f"metric name {one_line(name, 64)!r} has a character no metric name has (a name is letters, "
                    "digits, spaces and '_.+-'; a group's name goes into the results' CSV files and columns)")
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
    if kind not in COUNTED_KINDS:
        return ""
    if not _whole(metrics["accuracy"] * examples):
        return (f"accuracy {metrics['accuracy']:.12g} is not a whole number of correct answers out of the "
                f"{examples:g} test examples reported")
    if groups and (absent := sorted(set(groups) - set(counts))):
        return f"no group metrics of attribute '{one_line(absent[0], 64)}', which the dataset's examples all have"
    if counts and "top-class-rate" not in metrics:
        return "no 'top-class-rate', which a task with group counts reports"
    if counts and not _top_share(metrics["top-class-rate"], examples):
        return (f"top-class-rate {metrics['top-class-rate']:.12g} is not the share of a most frequent prediction "
                f"among {examples:g} examples")
    for attribute, values in counts.items():
        if problem := _attribute_problem(metrics, attribute, values, binary, examples):
            return problem
    return ""


COUNTED_KINDS = ("multiclass", "binary")
"""fedmtl's own kinds whose accuracy and group rates are exact ratios of whole counts
(:mod:`fedmtl.tasks`, :func:`fedmtl.group_fairness.group_metrics`): their group metrics are
checked against one another (a plugin's kind is checked by its names and ranges alone)."""
WHOLE = 1e-6
"""How far (relative, at least 1e-6 absolute) a rate × its count may be from a whole number:
every rate a client reports is an exact ratio of counts (:func:`fedmtl.group_fairness._rate`)."""


def _whole(value: float) -> bool:
    return abs(value - round(value)) <= WHOLE * max(1.0, abs(value))


def _top_share(rate: float, count: float) -> bool:
    """``rate`` can be the share of the most frequent prediction among ``count`` examples: a
    whole number of them, at least one (every example has a prediction)."""
    return _whole(rate * count) and rate * count >= 1 - WHOLE


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9


def _attribute_problem(metrics: Mapping[str, float], attribute: str, values: Mapping[str, float],
                       binary: bool, examples: float) -> str:
    """Why one attribute's group metrics cannot come from one set of predictions (``""``: they
    can): each value's rates are present and are ratios of whole counts, the values' correct
    answers add up to the task's, and each gap is the largest rate minus the smallest."""
    name = one_line(attribute, 64)
    rates: dict[str, list[float]] = {"accuracy": [], "positive-rate": [], "tpr": [], "fpr": []}
    correct = 0.0
    for member, count in values.items():
        positives = metrics.get(f"positives-{attribute}-{member}")
        wanted = {"accuracy": count, "top-class-rate": count}
        if binary:
            if positives is None or not _whole(positives):
                return f"positives-{name}-{one_line(member, 32)} is missing or not a whole number"
            wanted.update({"positive-rate": count, "tpr": positives, "fpr": count - positives})
        for prefix, base in wanted.items():
            key = f"{prefix}-{attribute}-{member}"
            if prefix in ("tpr", "fpr") and base == 0:  # no example of that label: no rate
                if key in metrics:
                    return f"'{prefix}-{name}-{one_line(member, 32)}' of a value without examples of its label"
                continue
            if key not in metrics:
                return f"no '{prefix}-{name}-{one_line(member, 32)}', which a value with examples reports"
            if not _whole(metrics[key] * base) or (prefix == "top-class-rate" and not _top_share(metrics[key], base)):
                return (f"{prefix}-{name}-{one_line(member, 32)} {metrics[key]:.12g} is not a whole number of "
                        f"examples out of {base:g}")
            if prefix in rates:
                rates[prefix].append(metrics[key])
        correct += metrics[f"accuracy-{attribute}-{member}"] * count
    if abs(correct - metrics["accuracy"] * examples) > WHOLE * max(1.0, examples):
        return (f"the values of attribute '{name}' answer {correct:.6g} examples correctly, but the task's accuracy "
                f"{metrics['accuracy']:.12g} answers {metrics['accuracy'] * examples:.6g} of {examples:g}")
    gaps = {"accuracy-gap": _spread(rates["accuracy"])}
    if binary:
        odds = [g for g in (_spread(rates["tpr"]), _spread(rates["fpr"])) if g is not None]
        gaps.update({"demographic-parity-diff": _spread(rates["positive-rate"]),
                     "equalized-odds-diff": max(odds) if odds else None})
    for gap, expected in gaps.items():
        key = f"{gap}-{attribute}"
        if expected is None and key in metrics:
            return f"'{gap}-{name}' where fewer than two values have the rates it compares"
        if expected is not None and (key not in metrics or not _close(metrics[key], expected)):
            told = f"{metrics[key]:.12g}" if key in metrics else "missing"
            return f"{gap}-{name} is {told}, not {expected:.12g}, the largest of its values' rates minus the smallest"
    return ""


def _spread(rates: list[float]) -> float | None:
    """The largest rate minus the smallest (``None`` for fewer than two)."""
    return max(rates) - min(rates) if len(rates) >= 2 else None
