"""Screening of client updates before aggregation.

Two checks, both applied by the server to every training reply:

- :func:`update_problem`: is the update well formed? Every key of the global model, each with
  its shape, and only finite values. A malformed update is rejected whatever the weighting.
- :func:`norm_outliers`: which updates are far longer than the round's typical one? An update
  whose Euclidean norm exceeds ``factor`` times the median norm of the round is rejected
  (``server.norm-screening``); the median is robust to a minority of outliers. This is the norm
  bound used against model-replacement updates (Sun et al., 2019, "Can you really backdoor
  federated learning?", arXiv:1911.07963), made relative to the round's median.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def update_problem(update: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> str:
    """Why ``update`` cannot be aggregated into a model shaped like ``like`` (``""`` if it can).

    Parameters
    ----------
    update : dict[str, torch.Tensor]
        A client's update (or one task part of it), keyed like the global model.
    like : dict[str, torch.Tensor]
        The global model's state.
    """
    missing = [k for k in like if k not in update]
    if missing:
        return f"missing {len(missing)} tensor(s), e.g. '{missing[0]}'"
    extra = [k for k in update if k not in like]
    if extra:
        return f"unexpected tensor '{extra[0]}'"
    for key, ref in like.items():
        value = update[key]
        if tuple(value.shape) != tuple(ref.shape):
            return f"'{key}' has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"'{key}' has non-finite values (NaN or Inf)"
    return ""


def metrics_problem(values: dict[str, float]) -> str:
    """Why a reply's metrics cannot be used (``""`` if they can): non-finite or missing counts."""
    for key, value in values.items():
        if not math.isfinite(float(value)):
            return f"metric '{key}' is {value}"
    count = values.get("num-examples")
    if count is None or count <= 0:
        return f"num-examples is {count}"
    return ""


def norm_outliers(norms: list[float], factor: float, minimum: int = 3) -> list[bool]:
    """Flag the norms above ``factor`` × their median.

    Parameters
    ----------
    norms : list[float]
        One update norm per reply.
    factor : float
        The bound relative to the median (> 1); ``0`` turns screening off.
    minimum : int
        With fewer norms than this the median says little and nothing is flagged.

    Returns
    -------
    list[bool]
        ``True`` where the update is an outlier.
    """
    if factor == 0 or len(norms) < minimum:
        return [False] * len(norms)
    bound = factor * float(np.median(norms))
    return [n > bound for n in norms]
