"""Euclidean projections onto the probability simplex (with optional box bounds)."""

from __future__ import annotations

import torch


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Closest point of ``{x ≥ 0, Σ x = 1}`` to ``v`` (sort-based, Held et al. 1974)."""
    n = len(v)
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, dim=0) - 1
    index = torch.arange(1, n + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - cumulative / index > 0).max())
    theta = cumulative[rho] / (rho + 1)
    return (v - theta).clamp_min(0)


def project_simplex_box(v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Closest point of ``{lower ≤ x ≤ upper, Σ x = 1}`` to ``v``.

    The projection is ``clip(v − θ, lower, upper)`` for the θ that makes it sum to one. The
    sum is piecewise linear and non-increasing in θ with breakpoints ``v − lower`` and
    ``v − upper``: we evaluate it at every breakpoint at once and interpolate linearly
    inside the bracketing segment (exact). Requires ``Σ lower ≤ 1 ≤ Σ upper``.
    """
    if float(lower.sum()) > 1 + 1e-12 or float(upper.sum()) < 1 - 1e-12:
        raise ValueError("the box does not intersect the simplex")
    points = torch.sort(torch.cat([v - lower, v - upper])).values
    sums = torch.clamp(v[None, :] - points[:, None], lower, upper).sum(dim=1)  # non-increasing
    above = int((sums >= 1).sum())  # sums[:above] >= 1 > sums[above:]
    if above == 0:
        theta = points[0]
    elif above == len(points):
        theta = points[-1]
    else:
        t0, t1, s0, s1 = points[above - 1], points[above], sums[above - 1], sums[above]
        theta = t0 if s0 == s1 else t0 + (s0 - 1) * (t1 - t0) / (s0 - s1)
    return torch.clamp(v - theta, lower, upper)
