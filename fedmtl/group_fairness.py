"""Group fairness of one client's predictions: per-group rates and the gaps between groups.

For a sensitive attribute ``g`` (e.g. ``colour`` of the ``arrests`` data) with values ``v``:

- ``accuracy-<g>-<v>`` and ``count-<g>-<v>``: accuracy and number of test examples per group;
- ``accuracy-gap-<g>``: max − min of the group accuracies (accuracy parity);
- binary tasks also: ``positive-rate-<g>-<v>`` = P(ŷ = 1 | g = v), ``tpr-<g>-<v>``,
  ``fpr-<g>-<v>``; ``demographic-parity-diff-<g>`` = max − min positive rate, and
  ``equalized-odds-diff-<g>`` = max(TPR gap, FPR gap) — the "between groups" differences of
  fairlearn's ``demographic_parity_difference`` / ``equalized_odds_difference``.

Rates that are undefined for a client (no example of a group, no positive or negative label)
are left out, and gaps use the groups where the rate is defined (at least two).
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
