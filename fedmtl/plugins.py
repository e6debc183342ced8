"""Plugins: the user's modules that register weightings, aggregators, datasets, backbones,
partitioners or personalization methods, imported in every process that builds a config.

A config names its plugins in ``run.plugins``: module names (importable from ``sys.path``,
e.g. an installed package) or ``.py`` files. Files are resolved to absolute paths when the
config is loaded (relative to the config file's folder, :func:`resolve_plugin_files`) and
imported by path (:func:`import_plugin`), so a Ray worker, a ``flwr run`` ServerApp or
ClientApp and a ``deploy local`` SuperNode import them without any ``PYTHONPATH`` change.
Installed packages may instead declare Python entry points of the group
:data:`ENTRY_POINT_GROUP`; each is loaded once per process (:func:`load_entry_points`).

:func:`fedmtl.validation.build_config` calls :func:`load_plugins` before it checks any
registered name, so every loader (``load_config``, ``config_from_flat``, ``build_config``)
sees the plugins' registrations. ``docs/extending.md`` walks through writing one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from fedmtl.config import ConfigError, names_list
from fedmtl.one_line import described
from fedmtl.registry import PLUGIN_MODULE_PREFIX, Registry, registered_in, undone_on_error

KEY = "run.plugins"
"""The config key listing the plugins."""
ENTRY_POINT_GROUP = "fedmtl.plugins"
"""The entry-point group whose entries are loaded in every process that builds a config."""

_entry_points_loaded = False
"""Whether :func:`load_entry_points` ran in this process."""


class PluginError(ConfigError):
    """A plugin that cannot be imported (the message names the key, the plugin and the error)."""


class PluginNotFound(PluginError):
    """A plugin that is not there: no such file, or no such module."""


def is_file(entry: str) -> bool:
    """Whether a ``run.plugins`` entry names a ``.py`` file (else a module)."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def plugin_entries(values: dict[str, Any]) -> list[str]:
    """The ``run.plugins`` entries of nested config values (a list, its JSON text as in
    Flower's flat form, or comma-separated names: :func:`fedmtl.config.names_list`, as the schema
    reads them); ``[]`` when unset or malformed (the schema then reports it)."""
    run = values.get("run")
    entries = run.get("plugins", []) if isinstance(run, dict) else []
    if isinstance(entries, str):
        try:
            entries = names_list(entries, "")
        except ValueError:
            return []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return []
    return entries


def resolve_plugin_files(values: dict[str, Any], folder: str | Path | None) -> dict[str, Any]:
    """``values`` with every relative ``.py`` entry of ``run.plugins`` made absolute, relative
    to ``folder`` (the config file's folder; ``None``: the working directory). Module names
    and absolute paths are kept; other values are left for the schema to check."""
    entries = plugin_entries(values)
    if not any(is_file(e) and not Path(e).is_absolute() for e in entries):
        return values
    base = Path(folder) if folder is not None else Path.cwd()
    resolved = [str((base / e).resolve()) if is_file(e) and not Path(e).is_absolute() else e for e in entries]
    return {**values, "run": {**values["run"], "plugins": resolved}}


_imported: dict[str, tuple[str, list[tuple[Registry[Any], str]]]] = {}
"""Per plugin file's module name: the digest of the text it was imported from, and the names it
registered (dropped when the file is imported again after an edit)."""
_import_lock = threading.RLock()
"""One import at a time (the in-process engine's client threads build their configs at once)."""
_on_edit: list[Callable[[], None]] = []
"""What to forget when an edited plugin file is imported again (:func:`forget_on_edit`)."""


def forget_on_edit(clear: Callable[[], None]) -> Callable[[], None]:
    """Call ``clear`` whenever an edited plugin file is imported again: a cache of things a
    plugin may have built (a federation, a model's initial state, a parsed config) clears
    itself so that the next run uses the new text. Returns ``clear``."""
    _on_edit.append(clear)
    return clear


def _module_name(path: Path) -> str:
    """The ``sys.modules`` name a plugin file is imported under: its stem and a hash of its path,
    so that two files of the same name do not clash."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"{PLUGIN_MODULE_PREFIX}{stem}_{digest}"


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a plugin file's bytes (what a run records)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


_Forgotten = list[tuple[Registry[Any], str, Any, str]]
"""The names an edited plugin file's old text registered, each ``(registry, name, entry, origin)``."""


def _import_file(path: Path) -> ModuleType:
    """Import a plugin file, once per version of its text: unchanged, a second import is a
    no-op; edited since (a notebook), its old module and the names it registered are dropped and
    the new text is imported, so the next run uses what the file says now. A new text that does
    not import leaves the old module and its names as they were, for the next attempt."""
    if not path.is_file():
        raise FileNotFoundError(f"no file '{path}'")
    with _import_lock:
        name, digest = _module_name(path), file_digest(path)
        old: tuple[ModuleType, tuple[str, list[tuple[Registry[Any], str]]], _Forgotten] | None = None
        if name in sys.modules:
            known = _imported.get(name)
            if known is None or known[0] == digest:
                return sys.modules[name]
            old = (sys.modules.pop(name), _imported.pop(name), _forget(known[1]))
            for clear in _on_edit:
                clear()
        try:
            module, made = _exec_file(name, path)
        except BaseException:
            if old is not None:
                _put_back(name, *old)
            raise
        # names that a module the file imports registered (not the file's own) are not registered
        # again by the new text (that module is imported already): they stay
        for registry, registered, entry, origin in old[2] if old is not None else []:
            if registered not in registry and not _defined_in(entry, name):
                registry.restore(registered, entry, origin)
                made.append((registry, registered))
        _imported[name] = (digest, made)
        return module


def _forget(names: list[tuple[Registry[Any], str]]) -> _Forgotten:
    """Drop the registered ``names`` (an edited file's old text's); return what they were."""
    forgotten: _Forgotten = []
    for registry, registered in names:
        if registered in registry:
            forgotten.append((registry, registered, *registry.entry_and_origin(registered)))
            registry.forget(registered)
    return forgotten


def _exec_file(name: str, path: Path) -> tuple[ModuleType, list[tuple[Registry[Any], str]]]:
    """Import the file at ``path`` as the module ``name``; return it and the names it registered.
    A file that raises leaves neither its module nor a name it registered."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"'{path}' cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        with undone_on_error(), registered_in() as made:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module, made


def _put_back(name: str, module: ModuleType, known: tuple[str, list[tuple[Registry[Any], str]]],
              forgotten: _Forgotten) -> None:
    """Undo :func:`_import_file`'s forgetting of an edited file's old text when the new text
    failed: its module, its record and its names (a helper's included) are as before."""
    sys.modules[name] = module
    _imported[name] = known
    for registry, registered, entry, origin in forgotten:
        if registered not in registry:
            registry.restore(registered, entry, origin)


def _defined_in(entry: object, module: str) -> bool:
    """Whether a registry ``entry`` comes from ``module``: a class or function defined there,
    or an object (a ``DatasetEntry``) holding a function defined there."""
    if getattr(entry, "__module__", None) == module and (callable(entry) or isinstance(entry, type)):
        return True
    fields = vars(entry).values() if hasattr(entry, "__dict__") else ()
    return any(callable(v) and getattr(v, "__module__", None) == module for v in fields)


def plugin_digests(entries: list[str]) -> dict[str, str]:
    """``{entry: digest}`` of the ``run.plugins`` entries that are files: the digest of the text
    this process imported (:func:`file_digest`; of the file now when not imported here, and
    ``"missing"`` without a file). Modules are not listed (their packages' versions name them)."""
    out = {}
    for entry in entries:
        if is_file(entry):
            path = Path(entry).resolve()
            known = _imported.get(_module_name(path))
            out[entry] = known[0] if known else file_digest(path) if path.is_file() else "missing"
    return out


def import_plugin(entry: str) -> ModuleType:
    """Import one ``run.plugins`` entry: a ``.py`` file by path (absolute, or relative to the
    working directory), else a module by name. Importing it again is a no-op, but for a file
    edited since: its new text replaces the old (:func:`_import_file`).

    Raises
    ------
    PluginError
        One line naming ``run.plugins``, the entry and the exception it raised.
    """
    try:
        with undone_on_error():  # a failed plugin leaves no name registered: fixed, it imports again
            if is_file(entry):
                return _import_file(Path(entry).resolve())
            return importlib.import_module(entry)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of user code becomes one config error
        what = "file" if is_file(entry) else "module"
        missing = (isinstance(exc, FileNotFoundError) and not Path(entry).is_file()) if is_file(entry) else (
            isinstance(exc, ModuleNotFoundError) and exc.name == entry)
        raise (PluginNotFound if missing else PluginError)(
            f"{KEY}: cannot import {what} {entry!r}: {_failure(exc)}") from exc


def _failure(exc: BaseException) -> str:
    """What a plugin's import did wrong, in words (a ``sys.exit`` is no success, whatever its code)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while being imported"
    return described(exc, limit=None)


def load_entry_points() -> list[str]:
    """Load every entry point of the group :data:`ENTRY_POINT_GROUP` (once per process); return
    the names of those loaded now.

    Raises
    ------
    PluginError
        Naming the entry point, its package and the exception it raised.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    loaded = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            with undone_on_error():  # as a plugin of run.plugins: fixed, it loads again in this process
                point.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            package = f" of package '{point.dist.name}'" if getattr(point, "dist", None) is not None else ""
            raise PluginError(f"entry point '{point.name} = {point.value}'{package} (group {ENTRY_POINT_GROUP}): "
                              f"cannot import it: {_failure(exc)}") from exc
        loaded.append(point.name)
    _entry_points_loaded = True  # only when all loaded: a failure is reported again next time
    return loaded


def load_plugins(entries: list[str]) -> None:
    """Load the installed entry points (:func:`load_entry_points`), then import every
    ``run.plugins`` entry (:func:`import_plugin`), in order."""
    load_entry_points()
    for entry in entries:
        import_plugin(entry)
