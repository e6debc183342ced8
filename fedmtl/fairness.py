"""Fairness summaries of a metric across clients.

``summarize(values)`` returns the statistics recorded per task and round in ``rounds.csv``:
mean, example-weighted mean, population std and variance, worst and best client, worst-10%
and worst-20% mean (mean of the ``max(1, ⌊k·n⌋)`` worst values), best-10% mean, the gap
``|best − worst|``, Jain's index ``(Σa)² / (n Σa²)`` (Jain, Chiu & Hawe 1984), the Gini
coefficient ``Σ_i Σ_j |a_i − a_j| / (2 n² ā)`` and the entropy of the normalised values
``p_i = (a_i + 1e-9) / Σ (a + 1e-9)``, ``−Σ p_i log p_i`` (at most ``log n``; FederatedScope's
definition). For metrics where lower is better pass ``higher_is_better=False``: "worst" then
means highest (Jain, Gini and entropy do not depend on the direction).

Uncertainty of a mean, for reports: :func:`t_interval` (Student's t over a few values, such as
one statistic over seeds; the quantile from :func:`t_quantile`, exact for whole degrees of
freedom) and :func:`bootstrap_interval` (percentile bootstrap of any statistic of a resample of
n units, such as the clients of one run; fixed seed, so a report is reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedmtl.seeds import rng

STATISTICS = ("mean", "wmean", "std", "worst", "best", "worst10", "jain", "var", "worst20",
              "best10", "gap", "gini", "entropy")


def worst_fraction_mean(values: np.ndarray, fraction: float, higher_is_better: bool = True) -> float:
    """Mean of the ``max(1, ⌊fraction·n⌋)`` worst values (NaN when a value is NaN, as the mean
    and the worst value are: a NaN is neither worst nor best)."""
    if len(values) == 0 or bool(np.isnan(values).any()):
        return math.nan
    k = max(1, math.floor(fraction * len(values)))
    ordered = np.sort(values)
    worst = ordered[:k] if higher_is_better else ordered[::-1][:k]
    return float(worst.mean())


def _negative(values: np.ndarray) -> bool:
    """Whether a value is below 0: Jain's index, the Gini coefficient and the entropy share
    out a non-negative quantity (an accuracy, a loss), and are NaN otherwise."""
    return bool((values < 0).any())


def jain_index(values: np.ndarray) -> float:
    """Jain's fairness index ``(Σa)² / (n Σa²)`` in ``[1/n, 1]``; 1 when all equal (NaN if all 0
    or one is negative). Computed on ``a / max a``, the same index, so that squares of very
    small or very large values neither underflow nor overflow."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or _negative(values):
        return math.nan
    largest = float(values.max())
    if not largest > 0 or not math.isfinite(largest):
        return math.nan
    scaled = values / largest
    return float(np.sum(scaled) ** 2 / (len(scaled) * float(np.sum(scaled**2))))


def gini_coefficient(values: np.ndarray) -> float:
    """``Σ_i Σ_j |a_i − a_j| / (2 n² ā)``; 0 when all equal, NaN when the mean is 0 or a value is negative."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else 0.0
    if mean == 0 or _negative(values):
        return math.nan
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * mean))


def normalised_entropy(values: np.ndarray) -> float:
    """Entropy ``−Σ p log p`` of ``p = (a + 1e-9) / Σ (a + 1e-9)`` (``log n`` when all equal;
    NaN when a value is negative)."""
    values = np.asarray(values, dtype=np.float64)
    if _negative(values):
        return math.nan
    values = values + 1e-9
    p = values / values.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one client's 0, not −0.0


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


# -- intervals -------------------------------------------------------------------------------
CONFIDENCE = 0.95
"""The level of every interval of a report."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of :func:`bootstrap_interval`."""
BOOTSTRAP_SEED = 0
"""Seed of :func:`bootstrap_interval`'s resampling (the same resamples for every call)."""


def t_two_sided_probability(t: float, df: int) -> float:
    """``P(|T| ≤ t)`` for Student's t with ``df`` whole degrees of freedom.

    The closed forms of Abramowitz & Stegun (1964), 26.7.3 (odd ``df``) and 26.7.4 (even
    ``df``), with ``θ = atan(t / √df)``.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a whole number >= 1, not {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # 2/π [θ + sin θ (cos θ + 2/3 cos³θ + … + (2·4…(ν−3))/(3·5…(ν−2)) cos^(ν−2) θ)]
        series, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return 2.0 / math.pi * (theta + s * series)
    series, term = 0.0, 1.0  # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … + (1·3…(ν−3))/(2·4…(ν−2)) cos^(ν−2) θ)
    for k in range(1, df // 2 + 1):
        series += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * series


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` whole degrees of freedom.

    Found by bisection on :func:`t_two_sided_probability` (over ``θ = atan(t/√df)``), to
    machine precision; e.g. ``t_quantile(0.975, 1) = 12.706…``, ``t_quantile(0.975, 9) = 2.262…``.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), not {probability}")
    if probability == 0.5:
        return 0.0
    target = abs(2.0 * probability - 1.0)  # P(|T| ≤ t)
    low, high = 0.0, math.pi / 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if t_two_sided_probability(math.sqrt(df) * math.tan(middle), df) < target:
            low = middle
        else:
            high = middle
    value = math.sqrt(df) * math.tan((low + high) / 2)
    return value if probability > 0.5 else -value


def t_interval(values: np.ndarray | list[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval ``x̄ ± t_{(1+level)/2, n−1} · s/√n`` of the
    finite ``values`` (``s`` the sample standard deviation); ``low``, ``high`` NaN with fewer
    than two values (and everything NaN with none)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if len(array) == 0:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan
    half = t_quantile((1.0 + level) / 2.0, len(array) - 1) * float(array.std(ddof=1)) / math.sqrt(len(array))
    return mean, mean - half, mean + half


def row_statistics(values: np.ndarray, higher_is_better: bool = True) -> dict[str, np.ndarray]:
    """``mean``, ``worst10``, ``jain`` and ``gini`` of every row of ``values`` at once, NaNs left
    out (the same as :func:`summarize` of each row's finite values; NaN for a row without any).

    For bootstrap resamples: row ``b`` holds the values of the ``b``-th resample's units.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if values.shape[1] == 0:
        return {name: np.full(len(values), math.nan) for name in ("mean", "worst10", "jain", "gini")}
    count = np.sum(~np.isnan(values), axis=1)
    ordered = np.sort(values if higher_is_better else -values, axis=1)  # worst first, NaN last
    ordered = ordered if higher_is_better else -ordered
    filled = np.where(np.isnan(ordered), 0.0, ordered)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = filled.sum(axis=1)
        mean = np.where(count > 0, total / np.maximum(count, 1), math.nan)
        k = np.maximum(1, np.floor(0.1 * count)).astype(int)
        worst = np.take_along_axis(np.cumsum(filled, axis=1), (k - 1)[:, None], axis=1)[:, 0] / k
        worst = np.where(count > 0, worst, math.nan)
        shares = (count > 0) & ~np.any(filled < 0, axis=1)  # Jain and Gini share out non-negative values
        largest = filled.max(axis=1)
        scaled = filled / np.where(largest > 0, largest, 1.0)[:, None]  # as jain_index: no under- or overflow
        jain = np.where(shares & (largest > 0) & np.isfinite(largest),
                        scaled.sum(axis=1) ** 2 / (count * (scaled**2).sum(axis=1)), math.nan)
        # Σ_i Σ_j |a_i − a_j| = 2 Σ_i (2i − n − 1) a_(i) over the values in ascending order
        ascending = np.sort(values, axis=1)
        rank = np.arange(1, values.shape[1] + 1)[None, :]
        weights = np.where(rank <= count[:, None], 2 * rank - count[:, None] - 1, 0)
        pairs = 2.0 * (weights * np.where(np.isnan(ascending), 0.0, ascending)).sum(axis=1)
        gini = np.where(shares & (mean != 0), pairs / (2.0 * count**2 * mean), math.nan)
    return {"mean": mean, "worst10": worst, "jain": jain, "gini": gini}


def bootstrap_interval(
    statistic: Callable[..., np.ndarray], n: int | tuple[int, ...], *, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED, level: float = CONFIDENCE, batched: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of a (vector) statistic of ``n`` units (Efron & Tibshirani
    1993, ch. 13).

    ``statistic(indices)`` computes the statistics of the units ``indices`` (``n`` indices drawn
    with replacement from ``0 … n−1``; pass the same indices to two configurations for a
    *paired* bootstrap). With ``batched`` it gets every resample at once, a ``(resamples, n)``
    array, and returns one row of statistics per resample; the resamples are the same either
    way. The interval of each component is the ``(1 ∓ level)/2`` quantiles of its finite
    resampled values; NaN when fewer than half the resamples are finite (or ``n < 2``).

    With ``n`` a tuple of sizes, every group of units is resampled apart (an *unpaired*
    bootstrap of, e.g., two runs that evaluated different clients): ``statistic`` gets one
    array of indices per group, each drawn from its own ``0 … n_g−1`` (the first group's draws
    are those an int ``n`` gives).

    Returns
    -------
    tuple of np.ndarray
        ``(low, high)``, each of the statistic's shape.
    """
    sizes = (n,) if isinstance(n, int | np.integer) else tuple(int(g) for g in n)
    generator = rng(seed)
    groups = [generator.integers(0, max(size, 1), size=(resamples, size)) for size in sizes]
    if batched:
        draws = np.asarray(statistic(*groups), dtype=np.float64).reshape(resamples, -1)
    else:
        draws = np.stack([np.atleast_1d(np.asarray(statistic(*(g[r] for g in groups)), dtype=np.float64))
                          for r in range(resamples)])
    shape = draws.shape[1:]
    low, high = np.full(shape, math.nan), np.full(shape, math.nan)
    if min(sizes) < 2:
        return low, high
    tail = (1.0 - level) / 2.0
    for i in np.ndindex(shape):
        finite = draws[(slice(None), *i)]
        finite = finite[np.isfinite(finite)]
        if len(finite) >= resamples / 2:
            low[i], high[i] = np.quantile(finite, [tail, 1.0 - tail])
    return low, high
