"""How config values are written in run labels and ``--set`` overrides: one line of TOML."""

from __future__ import annotations

import json
import re
from typing import Any

import tomli_w


def toml_inline(value: Any) -> str:
    """``value`` as one line of TOML: ``"qffl"``, ``0.5``, ``[1, 2]``, ``{q = 1}``."""
    if isinstance(value, dict):
        items = (f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', k) else json.dumps(k)} = {toml_inline(v)}"
                 for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def format_value(value: Any) -> str:
    """A value for labels: strings bare (``qffl``), anything else as inline TOML (``{q = 1}``)."""
    return value if isinstance(value, str) else toml_inline(value)
