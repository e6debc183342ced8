"""The registry of aggregation rules: every rule is registered once, under its config name."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, get_args

from fedmtl.aggregation.properties import PROPERTIES, guaranteed, unknown_claims
from fedmtl.aggregation.rule import Kind, Rule, RuleContext, Scope
from fedmtl.registry import Registry

R = TypeVar("R", bound=type[Rule])

RULE_NAME = re.compile(r"[a-z][a-z0-9+_-]*")
"""What a rule's config name is made of (``fedmgda+``, ``imtl-g``, ``trimmed-mean``)."""

RULES: Registry[type[Rule]] = Registry("weighting")
"""Every rule, weighting or aggregator, by config name (``server.weighting = "..."``)."""

WEIGHTINGS = RULES
"""The historical name of :data:`RULES` (it held weightings only)."""


def register(name: str) -> Callable[[R], R]:
    """Class decorator: register a rule under ``name`` (its only spelling) and set its ``name``.

    Parameters
    ----------
    name : str
        The rule's config name (``client.weighting``, ``server.weighting``).

    Returns
    -------
    Callable
        The decorator, which returns the class unchanged but for its ``name``.

    Raises
    ------
    ValueError
        ``name`` is taken, or the rule claims a property fedmtl does not know
        (:data:`fedmtl.aggregation.properties.PROPERTIES`: a misspelt claim would be listed as a
        guarantee that nothing checks).
    """

    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise ValueError(f"register({name!r}): a rule's name is lowercase letters, digits, '-', '+' or '_', "
                         "starting with a letter (configs name it: server.weighting = \"my-rule\")")

    def decorator(cls: R) -> R:
        for attribute, allowed in (("scope", get_args(Scope)), ("kind", get_args(Kind))):
            if getattr(cls, attribute, None) not in allowed:
                raise ValueError(f"rule '{name}' has {attribute} = {getattr(cls, attribute, None)!r}: one of "
                                 + ", ".join(map(repr, allowed)))
        if isinstance(cls.claims, str):
            raise ValueError(f"rule '{name}' has claims = {cls.claims!r}: give a tuple of property names, e.g. "
                             f"claims = ({cls.claims!r},)")
        if unknown := unknown_claims(cls):
            raise ValueError(f"rule '{name}' claims unknown propert{'ies' if len(unknown) > 1 else 'y'} "
                             f"{', '.join(map(repr, unknown))}; the known ones: {', '.join(PROPERTIES)}")
        cls.name = name
        RULES.register(name)(cls)
        return cls

    return decorator


def make_rule(name: str, context: RuleContext | None = None, **params: Any) -> Rule:
    """Instantiate the rule registered as ``name`` with its parameters.

    Parameters
    ----------
    name : str
        A registered rule name (``fedmtl list weightings``).
    context : RuleContext, optional
        What the run tells its rules (the clients' learning rate).
    **params
        The rule's parameters (dash or underscore spelling).
    """
    return RULES.get(name)(context, **params)


def make_weighting(name: str, context: RuleContext | None = None, **params: Any) -> Rule:
    """:func:`make_rule` under its historical name (it may return an aggregator too)."""
    return make_rule(name, context, **params)


def describe_params(cls: type[Rule]) -> str:
    """``"alpha=1.0, warm-start=True"``: the parameters and their defaults."""
    fields = cls.Params.model_fields
    return ", ".join(f"{f.alias or k}={f.default!r}" for k, f in fields.items()) or "-"


def summary(cls: type[Rule]) -> str:
    """The first line of the rule's docstring, without reST markup."""
    lines = (cls.__doc__ or "").strip().splitlines()
    return lines[0].replace("``", "") if lines else "(no description: the rule's class has no docstring)"


def describe_rule(cls: type[Rule]) -> list[str]:
    """Lines describing a rule for ``fedmtl list weightings``: name, kind, where it runs,
    what it reads, its parameters and the properties it guarantees."""
    where = {"client": "clients (across tasks)", "server": "the server", "both": "clients and the server"}[cls.scope]
    reads = [n for n, flag in (("update rows", cls.needs_updates), ("losses", cls.needs_losses)) if flag]
    return [
        f"{cls.name}  ({cls.kind}; runs on {where}; reads {', '.join(reads) or 'counts only'})",
        f"    {summary(cls)}",
        f"    parameters: {describe_params(cls)}",
        f"    guarantees: {', '.join(guaranteed(cls))}",
    ]
