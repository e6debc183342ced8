"""Strict JSON for the files a run writes: a number that is not finite is written as ``null``.

Python's :func:`json.dumps` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which
RFC 8259 does not allow: ``jq``, a browser's ``JSON.parse`` and most other readers refuse the
whole file. A statistic can be NaN for good reasons (Jain's index of values that are all 0, a
Gini index of negative values), so ``summary.json`` writes it as ``null``;
:func:`nan_for_null` reads the statistics' ``null`` back as NaN
(:func:`fedmtl.results.read_summary`).
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``, in nested dicts,
    lists and tuples (tuples become lists, as JSON writes them); NumPy scalars become Python
    numbers."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # a NumPy or torch scalar
        try:
            value = value.item()
        except (ValueError, TypeError):  # an array of more than one value: left to json's error
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **options: Any) -> str:
    """``value`` as strict JSON (:func:`finite_or_null`, then :func:`json.dumps` with
    ``allow_nan=False``); ``options`` go to :func:`json.dumps`."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)


def nan_for_null(value: Any) -> Any:
    """The inverse of :func:`finite_or_null` for a table of statistics: every ``None`` in
    nested dicts and lists NaN (a statistic written as ``null`` was not finite)."""
    if isinstance(value, dict):
        return {key: nan_for_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [nan_for_null(item) for item in value]
    return math.nan if value is None else value
