"""Fairness summaries of a metric across clients.

``summarize(values)`` returns the statistics recorded per task and round in ``rounds.csv``:
mean, example-weighted mean, population std and variance, worst and best client, worst-10%
and worst-20% mean (mean of the ``max(1, ⌊k·n⌋)`` worst values), best-10% mean, the gap
``|best − worst|``, Jain's index ``(Σa)² / (n Σa²)`` (Jain, Chiu & Hawe 1984), the Gini
coefficient ``Σ_i Σ_j |a_i − a_j| / (2 n² ā)`` and the entropy of the normalised values
``p_i = (a_i + 1e-9) / Σ (a + 1e-9)``, ``−Σ p_i log p_i`` (at most ``log n``; FederatedScope's
definition). For metrics where lower is better pass ``higher_is_better=False``: "worst" then
means highest (Jain, Gini and entropy do not depend on the direction).
"""

from __future__ import annotations

import math

import numpy as np

STATISTICS = ("mean", "wmean", "std", "worst", "best", "worst10", "jain", "var", "worst20",
              "best10", "gap", "gini", "entropy")


def worst_fraction_mean(values: np.ndarray, fraction: float, higher_is_better: bool = True) -> float:
    """Mean of the ``max(1, ⌊fraction·n⌋)`` worst values."""
    if len(values) == 0:
        return math.nan
    k = max(1, math.floor(fraction * len(values)))
    ordered = np.sort(values)
    worst = ordered[:k] if higher_is_better else ordered[::-1][:k]
    return float(worst.mean())


def jain_index(values: np.ndarray) -> float:
    """Jain's fairness index ``(Σa)² / (n Σa²)`` in ``[1/n, 1]``; 1 when all equal (NaN if all 0)."""
    values = np.asarray(values, dtype=np.float64)
    denom = len(values) * float(np.sum(values**2))
    return float(np.sum(values) ** 2 / denom) if denom > 0 else math.nan


def gini_coefficient(values: np.ndarray) -> float:
    """``Σ_i Σ_j |a_i − a_j| / (2 n² ā)``; 0 when all equal, NaN when the mean is 0."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else 0.0
    if mean == 0:
        return math.nan
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * mean))


def normalised_entropy(values: np.ndarray) -> float:
    """Entropy ``−Σ p log p`` of ``p = (a + 1e-9) / Σ (a + 1e-9)`` (``log n`` when all equal)."""
    values = np.asarray(values, dtype=np.float64) + 1e-9
    p = values / values.sum()
    return float(-(p * np.log(p)).sum())


def summarize(
    values: np.ndarray, weights: np.ndarray | None = None, higher_is_better: bool = True
) -> dict[str, float]:
    """Across-client statistics of one metric.

    Parameters
    ----------
    values : np.ndarray
        One value per client.
    weights : np.ndarray, optional
        Example counts for the weighted mean.
    higher_is_better : bool
        Direction of the metric (decides what "worst" means).
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {k: math.nan for k in STATISTICS}
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    worst, best = (values.min(), values.max()) if higher_is_better else (values.max(), values.min())
    return {
        "mean": float(values.mean()),
        "wmean": float(np.average(values, weights=w)) if w.sum() > 0 else math.nan,
        "std": float(values.std()),
        "worst": float(worst),
        "best": float(best),
        "worst10": worst_fraction_mean(values, 0.1, higher_is_better),
        "jain": jain_index(values),
        "var": float(values.var()),
        "worst20": worst_fraction_mean(values, 0.2, higher_is_better),
        "best10": worst_fraction_mean(values, 0.1, not higher_is_better),
        "gap": float(abs(best - worst)),
        "gini": gini_coefficient(values),
        "entropy": normalised_entropy(values),
    }


def delta_m(
    results: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool]
) -> float:
    """Δm% against a reference: ``(100/T) Σ_k (−1)^{s_k} (M_k − B_k) / B_k``.

    ``s_k = 1`` when higher is better for metric k, so an improvement lowers Δm (lower is
    better; Maninis, Radosavovic & Kokkinos, CVPR 2019; the sign convention of FairGrad's
    code). Keys are metric names (e.g. ``"left.accuracy"``); every key of ``reference`` must
    be in ``results``.
    """
    if not reference:
        raise ValueError("delta_m needs at least one reference metric")
    missing = [k for k in reference if k not in results]
    if missing:
        raise KeyError(f"results lack reference metric(s): {', '.join(missing)}")
    total = 0.0
    for key, base in reference.items():
        if base == 0:
            raise ValueError(f"reference value of '{key}' is 0; Δm is undefined")
        sign = -1.0 if higher_is_better[key] else 1.0
        total += sign * (results[key] - base) / base
    return 100.0 * total / len(reference)
