"""Group fairness of one client's predictions: per-group rates and the gaps between groups.

For a sensitive attribute ``g`` (e.g. ``colour`` of the ``arrests`` data) with values ``v``:

- ``accuracy-<g>-<v>`` and ``count-<g>-<v>``: accuracy and number of test examples per group;
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
"""

from __future__ import annotations

import torch


def _gap(values: list[float]) -> float | None:
    return max(values) - min(values) if len(values) >= 2 else None


def group_metrics(
    predictions: torch.Tensor, targets: torch.Tensor, groups: dict[str, torch.Tensor], binary: bool
) -> dict[str, float]:
    """Per-group metrics and gaps for one task (see the module docstring)."""
    out: dict[str, float] = {}
    correct = (predictions == targets).float()
    for name, membership in groups.items():
        accuracies, positive_rates, tprs, fprs = [], [], [], []
        for value in sorted(int(v) for v in membership.unique()):
            mask = membership == value
            count = int(mask.sum())
            out[f"count-{name}-{value}"] = float(count)
            accuracy = float(correct[mask].mean())
            out[f"accuracy-{name}-{value}"] = accuracy
            accuracies.append(accuracy)
            if not binary:
                continue
            rate = float((predictions[mask] == 1).float().mean())
            out[f"positive-rate-{name}-{value}"] = rate
            out[f"positives-{name}-{value}"] = float((targets[mask] == 1).sum())
            positive_rates.append(rate)
            for label, key, store in ((1, "tpr", tprs), (0, "fpr", fprs)):
                subset = mask & (targets == label)
                if subset.any():
                    value_rate = float((predictions[subset] == 1).float().mean())
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
    attributes = sorted({key[len("count-"):].rsplit("-", 1)[0] for m in clients for key in m
                         if key.startswith("count-")})
    for g in attributes:
        values = sorted({key.rsplit("-", 1)[1] for m in clients for key in m
                         if key.startswith(f"count-{g}-")}, key=int)
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
