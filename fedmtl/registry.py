"""A small name -> object registry so configs can name things by string."""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")
"""What a registered name is made of: letters, digits, '+', '.', '_' and '-', starting with a
letter or digit (a config or a ``--grid`` list names it: no spaces, commas or quotes)."""

_REGISTRIES: list[Registry[Any]] = []
"""Every registry made, in order (for :func:`undone_on_error`)."""


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` (a choice that differs
    from ``name`` in letter case only is the closest: ``[Run]`` is ``[run]``)."""
    same_letters = [c for c in choices if str(c).lower() == str(name).lower()]
    close = same_letters or difflib.get_close_matches(str(name), choices, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


class UnknownNameError(KeyError):
    """Raised when a registry has no entry of the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


PLUGIN_MODULE_PREFIX = "fedmtl_plugin_"
"""The start of the ``sys.modules`` name a plugin file is imported under (:mod:`fedmtl.plugins`)."""

REGISTERING_HELPERS = frozenset({"fedmtl.registry", "fedmtl.aggregation.registry", "fedmtl.training.methods.base"})
"""Modules whose functions register on their caller's behalf (``fedmtl.aggregation.register``)."""


def _registering_module() -> str:
    """The module whose code registers a name: the first caller outside :data:`REGISTERING_HELPERS`,
    a plugin file by its path (its module's name is fedmtl's internal one)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "") in REGISTERING_HELPERS:
        frame = frame.f_back
    if frame is None:
        return ""
    name = str(frame.f_globals.get("__name__", ""))
    if name.startswith(PLUGIN_MODULE_PREFIX) and frame.f_globals.get("__file__"):
        return f"plugin file {frame.f_globals['__file__']}"
    return name


class Registry(Generic[T]):
    """Map names to objects (classes or factories) of one kind.

    Parameters
    ----------
    kind : str
        What the registry holds, used in error messages (e.g. ``"weighting"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        """Per name, the module that registered it (named when a second one registers it)."""
        _REGISTRIES.append(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Raises
        ------
        ValueError
            ``name`` is not made of :data:`NAME`'s characters, or is registered already.
        """
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{self.kind} name {name!r}: a name is letters, digits, '+', '.', '_' or '-', starting "
                             "with a letter or digit (configs and --grid lists name it)")
        caller = _registering_module()

        def decorator(obj: T) -> T:
            if name in self._entries:
                where = self._origins.get(name, "")
                owner = "fedmtl's own" if self.is_own(name) else (
                    f"registered by {where}" if where else "registered elsewhere")
                raise ValueError(f"{self.kind} '{name}' is registered twice (the first is {owner}); "
                                 "give yours another name")
            self._entries[name] = obj
            self._origins[name] = caller
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name``.

        Raises
        ------
        UnknownNameError
            Naming the bad value, the allowed names and the closest match.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown ``name``: the closest name when one is close, else
        a reminder that a plugin's names exist only once it is loaded."""
        allowed = ", ".join(f"'{n}'" for n in self.names())
        close = did_you_mean(name, self.names())
        hint = "" if close else (f" (a plugin's {self.kind} is known once its file or module is in run.plugins, "
                                 "or given with --plugin)")
        return f"unknown {self.kind} '{name}'{close}; allowed: {allowed}{hint}"

    def is_own(self, name: str) -> bool:
        """Whether fedmtl itself registered ``name`` (not a plugin, not a caller's script)."""
        where = self._origins.get(name, "")
        return where == "fedmtl" or where.startswith("fedmtl.")

    def forget(self, name: str) -> None:
        """Drop the entry called ``name`` (a plugin file imported again after an edit
        registers its new version: :mod:`fedmtl.plugins`); no entry is no error."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def entry_and_origin(self, name: str) -> tuple[T, str]:
        """The entry called ``name`` (registered) and the module that registered it."""
        return self._entries[name], self._origins.get(name, "")

    def restore(self, name: str, entry: T, origin: str) -> None:
        """Put back an entry that :meth:`forget` dropped, as ``origin`` registered it (a plugin
        file's names, when its new text does not replace them: :mod:`fedmtl.plugins`)."""
        self._entries[name] = entry
        self._origins[name] = origin

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def option_errors(model: type[Any], values: dict[str, Any], owner: str, noun: str = "parameter",
                  qualify: bool = True) -> tuple[Any, list[str]]:
    """Check ``values`` against the pydantic ``model`` of a registered thing's options.

    Parameters
    ----------
    model : type[pydantic.BaseModel]
        The options model (``extra="forbid"``).
    values : dict
        The options as given.
    owner : str
        How messages name the thing, e.g. ``"weighting 'fairgrad'"``.
    noun : str
        What an option is called in messages (``"parameter"``, ``"option"``).
    qualify : bool
        Whether a bad value's line starts with ``owner``.

    Returns
    -------
    tuple
        ``(instance, [])`` when valid, else ``(None, lines)``: one line per bad option, naming it,
        its value and what is allowed (an unknown name gets the closest known one).
    """
    from pydantic import ValidationError

    allowed = [_shown_spelling(n, f) for n, f in model.model_fields.items()]
    unknown = _unknown_options(model, values)  # pydantic's default (extra="ignore") would drop them silently
    lines = [f"{owner} has no {noun} '{key}'{did_you_mean(key, allowed)}; its {noun}s: {', '.join(allowed) or 'none'}"
             for key in unknown]
    try:
        instance = model(**{k: v for k, v in values.items() if k not in unknown})
        return (None, lines) if lines else (instance, [])
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{owner} has no {noun} '{key}'{did_you_mean(key, allowed)}; "
                             f"its {noun}s: {', '.join(allowed) or 'none'}")
                continue
            message = err["msg"].removeprefix("Value error, ")
            line = f"{key} = {err.get('input')!r}: {message}" if key else message
            lines.append(f"{owner}: {line}" if qualify else line)
        return None, lines


def _unknown_options(model: type[Any], values: dict[str, Any]) -> list[str]:
    """The keys of ``values`` that pydantic would not take for a field of ``model`` (by its
    alias, its validation alias or one of its alias choices, or its own name where the model
    accepts it), unless ``model`` declares ``extra="allow"``."""
    if model.model_config.get("extra") == "allow":
        return []
    known = {key for name, f in model.model_fields.items() for key in _spellings(model, name, f)}
    return [key for key in values if key not in known]


def _shown_spelling(name: str, field: Any) -> str:
    """How messages name field ``name``: its alias, else its (first) validation alias, else its name."""
    from pydantic import AliasChoices

    validation = field.validation_alias
    first = validation.choices[0] if isinstance(validation, AliasChoices) and validation.choices else validation
    return field.alias or (first if isinstance(first, str) else name)


def _spellings(model: type[Any], name: str, field: Any) -> set[str]:
    """The keys pydantic takes for field ``name`` of ``model`` (top-level keys only)."""
    from pydantic import AliasChoices, AliasPath

    config = model.model_config
    validation = field.validation_alias
    choices = validation.choices if isinstance(validation, AliasChoices) else [validation]
    keys = {c for c in choices if isinstance(c, str)}
    keys |= {c.path[0] for c in choices if isinstance(c, AliasPath) and c.path and isinstance(c.path[0], str)}
    if validation is None and field.alias:
        keys.add(field.alias)
    if not keys or config.get("populate_by_name") or config.get("validate_by_name"):
        keys.add(name)
    return keys


@contextlib.contextmanager
def undone_on_error() -> Iterator[None]:
    """Undo every registration made inside the block when it raises.

    A plugin that registers a name and then fails can be fixed and imported again in the same
    process (a notebook): its names are not left behind, half registered.
    """
    before = _snapshot()
    try:
        yield
    except BaseException:
        for registry, name in _added_since(before):
            registry.forget(name)
        raise


@contextlib.contextmanager
def registered_in() -> Iterator[list[tuple[Registry[Any], str]]]:
    """Collect the ``(registry, name)`` pairs registered inside the block (in the yielded
    list, filled when the block ends without an error)."""
    before = _snapshot()
    made: list[tuple[Registry[Any], str]] = []
    yield made
    made.extend(_added_since(before))


def _snapshot() -> list[tuple[Registry[Any], set[str]]]:
    """Every registry with the names it holds now."""
    return [(registry, set(registry._entries)) for registry in _REGISTRIES]


def _added_since(snapshot: list[tuple[Registry[Any], set[str]]]) -> list[tuple[Registry[Any], str]]:
    """The ``(registry, name)`` pairs registered since ``snapshot`` (:func:`_snapshot`)."""
    return [(registry, name) for registry, names in snapshot for name in set(registry._entries) - names]
