"""Group fairness of one client's predictions: per-group rates and the gaps between groups.

For a sensitive attribute ``g`` (e.g. ``colour`` of the ``arrests`` data) with values ``v``
(named by the data: ``colour-Black``, ``colour-White``; the integer code where the data names
none):

- ``accuracy-<g>-<v>`` and ``count-<g>-<v>``: accuracy and number of test examples per group;
- ``top-class-rate-<g>-<v>``: the share of the group's examples predicted as the class predicted
  most often for the group, and ``top-class-rate``: the same over all the client's examples of
  the task (1: the model predicts one class for the whole group, or the whole task; such a
  model has no group gap to speak of, see :func:`one_class_predictions`);
- ``accuracy-gap-<g>``: max − min of the group accuracies (accuracy parity);
- binary tasks also: ``positive-rate-<g>-<v>`` = P(ŷ = 1 | g = v), ``tpr-<g>-<v>``,
  ``fpr-<g>-<v>``; ``demographic-parity-diff-<g>`` = max − min positive rate, and
  ``equalized-odds-diff-<g>`` = max(TPR gap, FPR gap) — the "between groups" differences of
  fairlearn's ``demographic_parity_difference`` / ``equalized_odds_difference``.

Binary tasks also record ``positives-<g>-<v>``, the number of examples with label 1, so that
rates can be pooled over clients. Rates that are undefined for a client (no example of a
group, no positive or negative label) are left out, and gaps use the groups where the rate is
defined (at least two).

Across clients, :func:`summarize_group_gaps` reports each gap's mean and worst (largest) value
over the clients where it is defined, and the gap of the *pooled* rates (every client's test
examples taken together: count-weighted group accuracies, positive rates, TPRs and FPRs).
:func:`one_class_predictions` tells, from the same per-client metrics, which models predict one
class for a whole task or a whole group: a demographic-parity or equalized-odds difference of 0
of a model that answers "positive" to everyone says nothing good about it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedmtl.metric_sets import attribute_values


def _gap(values: list[float]) -> float | None:
    return max(values) - min(values) if len(values) >= 2 else None


def value_name(code: int, names: Sequence[str] | None) -> str:
    """The name of group value ``code`` (``names[code]``; the code itself where there is none).

    Raises
    ------
    ValueError
        When the name has a character a metric name cannot hold ('-', '.', whitespace).
    """
    if names is None or not 0 <= code < len(names):
        return str(code)
    name = str(names[code])
    if not name or any(ch in name for ch in "-.") or any(ch.isspace() for ch in name):
        raise ValueError(f"group value name {name!r} cannot be part of a metric name (no '-', '.' or spaces)")
    return name


def _top_class_rate(predictions: torch.Tensor) -> float:
    """Share of ``predictions`` equal to their most frequent value."""
    return float(torch.unique(predictions, return_counts=True)[1].max()) / len(predictions)


def _rate(hits: torch.Tensor) -> float:
    """The share of true values in the boolean ``hits``, as an exact ratio of integers (a
    float32 mean is off by up to 1e-8)."""
    return int(hits.sum()) / hits.numel()


def group_metrics(
    predictions: torch.Tensor, targets: torch.Tensor, groups: dict[str, torch.Tensor], binary: bool,
    names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Per-group metrics and gaps for one task (see the module docstring).

    Parameters
    ----------
    predictions, targets : torch.Tensor
        Predicted and true class of every example.
    groups : dict[str, torch.Tensor]
        Attribute name -> integer group of every example.
    binary : bool
        A binary task (positive rates, TPR, FPR and their gaps).
    names : mapping, optional
        Attribute name -> the names of its values (value ``i`` is ``names[g][i]``), used in the
        metric names; the integer code where absent.
    """
    out: dict[str, float] = {}
    correct = predictions == targets
    if groups and len(predictions):
        out["top-class-rate"] = _top_class_rate(predictions)
    for name, membership in groups.items():
        accuracies, positive_rates, tprs, fprs = [], [], [], []
        for code in sorted(int(v) for v in membership.unique()):
            mask = membership == code
            value = value_name(code, (names or {}).get(name))
            count = int(mask.sum())
            out[f"count-{name}-{value}"] = float(count)
            accuracy = _rate(correct[mask])
            out[f"accuracy-{name}-{value}"] = accuracy
            out[f"top-class-rate-{name}-{value}"] = _top_class_rate(predictions[mask])
            accuracies.append(accuracy)
            if not binary:
                continue
            rate = _rate(predictions[mask] == 1)
            out[f"positive-rate-{name}-{value}"] = rate
            out[f"positives-{name}-{value}"] = float((targets[mask] == 1).sum())
            positive_rates.append(rate)
            for label, key, store in ((1, "tpr", tprs), (0, "fpr", fprs)):
                subset = mask & (targets == label)
                if subset.any():
                    value_rate = _rate(predictions[subset] == 1)
                    out[f"{key}-{name}-{value}"] = value_rate
                    store.append(value_rate)
        gaps = {
            f"accuracy-gap-{name}": _gap(accuracies),
            f"demographic-parity-diff-{name}": _gap(positive_rates) if binary else None,
        }
        if binary:
            odds = [g for g in (_gap(tprs), _gap(fprs)) if g is not None]
            gaps[f"equalized-odds-diff-{name}"] = max(odds) if odds else None
        out.update({k: v for k, v in gaps.items() if v is not None})
    return out


GAPS = ("accuracy-gap", "demographic-parity-diff", "equalized-odds-diff")


def _pooled_rate(clients: list[dict[str, float]], rate: str, weight) -> float | None:
    """``Σ w·rate / Σ w`` over the clients where ``rate`` is defined (None if none)."""
    pairs = [(m[rate], weight(m)) for m in clients if rate in m]
    total = sum(w for _, w in pairs)
    return sum(r * w for r, w in pairs) / total if total > 0 else None


def pooled_group_gaps(clients: list[dict[str, float]]) -> dict[str, float]:
    """Gaps of the rates pooled over clients (one task's metrics from each client).

    Group accuracy and positive rate are weighted by the group's test examples, TPR by its
    positives and FPR by its negatives, which gives exactly the rates of all test examples
    taken together.
    """
    out: dict[str, float] = {}
    for g, values in attribute_values(clients).items():
        rates: dict[str, list[float]] = {"accuracy": [], "positive-rate": [], "tpr": [], "fpr": []}
        for v in values:
            def count(m, g=g, v=v):
                return m.get(f"count-{g}-{v}", 0.0)

            def positives(m, g=g, v=v):
                return m.get(f"positives-{g}-{v}", 0.0)

            def negatives(m, count=count, positives=positives):
                return count(m) - positives(m)

            for rate, weight in (("accuracy", count), ("positive-rate", count), ("tpr", positives),
                                 ("fpr", negatives)):
                pooled = _pooled_rate(clients, f"{rate}-{g}-{v}", weight)
                if pooled is not None:
                    rates[rate].append(pooled)
        gaps = {"accuracy-gap": _gap(rates["accuracy"]),
                "demographic-parity-diff": _gap(rates["positive-rate"])}
        if rates["positive-rate"]:
            odds = [x for x in (_gap(rates["tpr"]), _gap(rates["fpr"])) if x is not None]
            gaps["equalized-odds-diff"] = max(odds) if odds else None
        out.update({f"{name}-{g}": value for name, value in gaps.items() if value is not None})
    return out


def summarize_group_gaps(clients: list[dict[str, float]]) -> dict[str, float]:
    """Across-client summary of one task's group gaps.

    Returns ``{"<gap>-<g>.mean": …, "<gap>-<g>.worst": …, "<gap>-<g>.pooled": …}`` for every
    gap that some client or the pooled data defines: the mean and the largest gap over the
    clients where it is defined, and the gap of the pooled rates (:func:`pooled_group_gaps`).
    """
    out: dict[str, float] = {}
    names = sorted({key for m in clients for key in m if key.startswith(GAPS)})
    for name in names:
        values = [m[name] for m in clients if name in m]
        out[f"{name}.mean"] = sum(values) / len(values)
        out[f"{name}.worst"] = max(values)
    for name, value in pooled_group_gaps(clients).items():
        out[f"{name}.pooled"] = value
    return out


def resampled_group_gaps(clients: list[dict[str, float]], rows: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`summarize_group_gaps`'s ``.mean`` and ``.pooled`` gaps of many resamples at once.

    ``rows`` holds one resample of the clients per row (indices into ``clients``, repeats
    allowed); the result has one value per row (NaN where the gap is undefined), equal to
    ``summarize_group_gaps([clients[i] for i in row])`` of each row.
    """
    rows = np.atleast_2d(rows)
    out: dict[str, np.ndarray] = {}

    def column(name: str, default: float = math.nan) -> np.ndarray:
        return np.array([m.get(name, default) for m in clients], dtype=np.float64)

    for name in sorted({key for m in clients for key in m if key.startswith(GAPS)}):
        values = column(name)[rows]
        defined = ~np.isnan(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}.mean"] = np.where(defined.any(axis=1), np.where(defined, values, 0.0).sum(axis=1)
                                           / defined.sum(axis=1), math.nan)
    for g, values in attribute_values(clients).items():
        pooled: dict[str, np.ndarray] = {}
        for rate in ("accuracy", "positive-rate", "tpr", "fpr"):
            per_value = []
            for v in values:
                count, positives = column(f"count-{g}-{v}", 0.0), column(f"positives-{g}-{v}", 0.0)
                weight = {"tpr": positives, "fpr": count - positives}.get(rate, count)
                r = column(f"{rate}-{g}-{v}")
                weight = np.where(np.isnan(r), 0.0, weight)
                total = weight[rows].sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    per_value.append(np.where(total > 0, (weight * np.nan_to_num(r))[rows].sum(axis=1) / total,
                                              math.nan))
            stacked = np.stack(per_value, axis=1)
            enough = np.sum(~np.isnan(stacked), axis=1) >= 2
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as intended
                pooled[rate] = np.where(enough, np.nanmax(stacked, axis=1) - np.nanmin(stacked, axis=1), math.nan)
            pooled[f"{rate}.any"] = np.any(~np.isnan(stacked), axis=1)
        odds = np.fmax(pooled["tpr"], pooled["fpr"])  # the larger where both are defined, else the one
        gaps = {"accuracy-gap": pooled["accuracy"], "demographic-parity-diff": pooled["positive-rate"],
                "equalized-odds-diff": np.where(pooled["positive-rate.any"], odds, math.nan)}
        for name, gap in gaps.items():
            if not np.all(np.isnan(gap)) or f"{name}-{g}.mean" in out:
                out[f"{name}-{g}.pooled"] = gap
    return out


# -- one-class predictions ---------------------------------------------------------------------
ONE_CLASS_MIN_EXAMPLES = 2
"""A group counts as predicted one class only where the client has at least this many of its
examples (one example is always "one class") and, for a binary task, both labels among them
(predicting the one label a group has is no fault)."""


@dataclass
class OneClass:
    """Which client models predict one class for a whole task or group (one task, any clients).

    Attributes
    ----------
    clients : int
        Client models with group metrics for the task.
    whole : int
        Of these, the models that predict one class for every one of their examples.
    groups : dict[str, tuple[int, int]]
        ``"<g>=<v>"`` -> of the models not counted in ``whole`` that hold the group (at least
        :data:`ONE_CLASS_MIN_EXAMPLES` examples; both labels for a binary task): how many
        predict one class for every example of the group, and how many there are.
    pooled_positive_rate : dict[str, float]
        Binary tasks: ``"<g>=<v>"`` -> the positive rate of all the clients' examples of the group
        taken together (count-weighted).
    """

    clients: int = 0
    whole: int = 0
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    pooled_positive_rate: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: OneClass) -> OneClass:
        """The counts of both (e.g. the runs of several seeds); a pooled rate where both agree (NaN
        where they differ)."""
        groups = dict(self.groups)
        for key, (one, held) in other.groups.items():
            a, b = groups.get(key, (0, 0))
            groups[key] = (a + one, b + held)
        pooled = dict(self.pooled_positive_rate)
        for key, rate in other.pooled_positive_rate.items():
            pooled[key] = rate if pooled.get(key, rate) == rate else math.nan
        return OneClass(self.clients + other.clients, self.whole + other.whole, groups, pooled)

    def describe(self) -> str:
        """One line for a report (``""`` when no model predicts one class for a task or group)."""
        if not self.clients:
            return ""
        rates = set(self.pooled_positive_rate.values())
        constant = {1.0: "positive", 0.0: "negative"}.get(next(iter(rates))) if len(rates) == 1 else None
        if self.whole == self.clients:
            if constant:
                return f"degenerate: predicts one class ({constant}) for every example"
            return ("degenerate: predicts one class for every example" if self.clients == 1 else
                    f"degenerate: every client model ({self.clients}) predicts one class for all its examples")
        parts = [f"{self.whole} of {self.clients} client models predict one class for all their examples"] \
            if self.whole else []
        others = " other" if self.whole else ""
        for key, (one, held) in self.groups.items():
            rate = self.pooled_positive_rate.get(key)
            if rate in (0.0, 1.0):
                parts.append(f"{key}: predicts one class ({'positive' if rate else 'negative'}) "
                             "for every example of the group")
            elif one and one == held:
                parts.append(f"{key}: every{others} client model predicts one class for all the group's examples")
            elif one:
                parts.append(f"{key}: {one} of {held}{others} client models predict one class for the group")
        return ("degenerate: " + "; ".join(parts)) if parts else ""


def _is_one(value: float | None) -> bool:
    return value is not None and value >= 1.0 - 1e-12


def one_class_predictions(clients: list[dict[str, float]]) -> OneClass:
    """Which of the client models predict one class for a whole task or group.

    ``clients`` holds one task's metrics of each client (those of :func:`group_metrics`). A
    model predicts one class for a group when ``top-class-rate-<g>-<v>`` is 1 (runs recorded
    before that metric: a binary task's ``positive-rate-<g>-<v>`` is 0 or 1), and for the whole
    task when ``top-class-rate`` is 1 (before: every group's positive rate is the same 0 or 1).
    Only groups (and tasks) of at least :data:`ONE_CLASS_MIN_EXAMPLES` examples count, and for a
    binary task only those with both labels (``positives-<g>-<v>``).
    """
    out = OneClass()
    pooled: dict[str, list[tuple[float, float]]] = {}
    for metrics in clients:
        counts = {key[len("count-"):]: value for key, value in metrics.items() if key.startswith("count-")}
        if not counts:
            continue
        out.clients += 1
        positive = {gv: metrics.get(f"positive-rate-{gv}") for gv in counts}
        whole = metrics.get("top-class-rate")
        if whole is None:  # older runs: binary tasks only
            rates = set(positive.values())
            whole = 1.0 if len(rates) == 1 and next(iter(rates)) in (0.0, 1.0) else 0.0
        attribute = next(iter(counts)).rsplit("-", 1)[0]  # every attribute's groups hold all examples
        mine = [gv for gv in counts if gv.rsplit("-", 1)[0] == attribute]
        total = sum(counts[gv] for gv in mine)
        positives = [metrics.get(f"positives-{gv}") for gv in mine]
        labels_mixed = None in positives or 0 < sum(positives) < total
        degenerate = _is_one(whole) and total >= ONE_CLASS_MIN_EXAMPLES and labels_mixed
        out.whole += degenerate
        for gv, count in counts.items():
            g, v = gv.rsplit("-", 1)
            key = f"{g}={v}"
            top = metrics.get(f"top-class-rate-{gv}")
            if top is None and positive[gv] is not None:
                top = max(positive[gv], 1.0 - positive[gv])
            if positive[gv] is not None:
                pooled.setdefault(key, []).append((positive[gv], count))
            held = metrics.get(f"positives-{gv}")
            eligible = count >= ONE_CLASS_MIN_EXAMPLES and (held is None or 0 < held < count)
            if eligible and top is not None and not degenerate:
                one, held = out.groups.get(key, (0, 0))
                out.groups[key] = (one + _is_one(top), held + 1)
    for key, pairs in pooled.items():
        total = sum(c for _, c in pairs)
        if total > 0:
            rate = sum(r * c for r, c in pairs) / total
            out.pooled_positive_rate[key] = 1.0 if _is_one(rate) else 0.0 if rate <= 1e-12 else rate
    return out
