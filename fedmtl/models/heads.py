"""Task heads: small networks on top of the shared representation."""

from __future__ import annotations

from torch import nn


def make_head(in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    """A linear head, or ``Linear -> ReLU -> Linear`` when ``hidden > 0``.

    Parameters
    ----------
    in_dim : int
        Representation size.
    out_dim : int
        Output size of the task (classes, or 1).
    hidden : int
        Hidden width; 0 gives a linear head.
    """
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
