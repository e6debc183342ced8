"""Booleans and numbers taken as written in configs and options.

Pydantic's lax mode turns ``true`` into 1, ``1`` into ``True`` and ``"0.5"`` into 0.5. A config
that writes ``rounds = true`` or ``lr = "0.5"`` means something else, so the config sections
(:class:`fedmtl.config.Section`), the rules' parameters and the personalization methods'
options refuse them, with one line saying what the key expects and what it got.
"""

from __future__ import annotations

import functools
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationInfo, field_validator

_SCALARS = {bool: "true or false", int: "an integer", float: "a number"}
WIRE_INT = 2**63
"""Integers of config keys are below this in magnitude: every Flower message carries the run
config, whose integers are 64-bit (sint64), so a larger one would fail the run's first message."""


def _members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> ``(int, None)``), else itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


@dataclass(frozen=True)
class _Wanted:
    """What an annotation takes, as far as booleans and numbers go."""

    scalars: tuple[type, ...]
    literals: tuple[Any, ...]
    takes_any_text: bool
    text: str


@functools.lru_cache(maxsize=512)
def _wanted(annotation: Any) -> _Wanted:
    """:class:`_Wanted` of ``annotation``, worked out once per annotation: configs are checked in
    every ClientApp call, and doing it for every field each time cost 0.35 ms a config."""
    members = _members(annotation)
    scalars = tuple(m for m in members if m in _SCALARS)
    literals = tuple(v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m))
    text = " or ".join(dict.fromkeys([_SCALARS[m] for m in scalars] + [repr(v) for v in literals]))
    return _Wanted(scalars, literals, str in members, text)


def scalar_type_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is not a boolean or number where ``annotation`` wants one, or ``None``.

    Pydantic's lax mode would turn ``true`` into 1, ``1`` into ``True`` and ``"0.5"`` into
    0.5; a config that writes them means something else, so they are refused. An integer is a
    number (``lr = 1``), and text is fine where the key also takes it (``parquet = "auto"``).
    An integer key's value must be below :data:`WIRE_INT` in magnitude.
    """
    try:
        wanted = _wanted(annotation)
    except TypeError:  # an annotation that cannot be hashed: worked out now
        wanted = _wanted.__wrapped__(annotation)
    scalars = wanted.scalars
    if not scalars:
        return None
    if isinstance(value, bool):
        return None if bool in scalars else f"expected {wanted.text}, got a boolean"
    if isinstance(value, int | float):
        if scalars == (bool,):
            return f"expected {wanted.text}, got a number"
        if isinstance(value, float) and float not in scalars and math.isfinite(value) and abs(value) >= WIRE_INT:
            return "expected an integer of magnitude below 2**63 (a Flower message carries 64-bit integers)"
        if isinstance(value, int) and abs(value) >= WIRE_INT:
            if float in scalars:
                return (f"an integer of magnitude 2**63 or more, which a Flower message cannot carry; write it as "
                        f"a float ({float(value):.6g})")
            return "expected an integer of magnitude below 2**63 (a Flower message carries 64-bit integers)"
        return None
    if isinstance(value, str) and not wanted.takes_any_text and value not in wanted.literals:
        hint = " (write it without quotes)" if _looks_scalar(value) else ""
        return f"expected {wanted.text}, got the text {value!r}{hint}"
    return None


def _looks_scalar(text: str) -> bool:
    """``text`` reads as a TOML boolean or number (``"0.5"``, ``"true"``)."""
    try:
        return isinstance(tomllib.loads(f"v = {text.strip()}")["v"], bool | int | float)
    except tomllib.TOMLDecodeError:
        return False


class StrictScalars(BaseModel):
    """A pydantic model whose boolean and number fields take only booleans and numbers
    (:func:`scalar_type_problem`); the base of config sections and of rules' and methods' options."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = scalar_type_problem(field.annotation, value) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value
