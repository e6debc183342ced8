"""The configs shipped with fedmtl, usable by name from any folder.

The repository's ``configs/`` folder is installed as the package ``fedmtl.configs``
(setuptools' ``package-dir``, as the apps are), its ``*.toml`` files as package data. A
config path that does not exist is looked up there by name: ``quickstart``,
``quickstart.toml``, ``configs/quickstart.toml`` and ``studies/qffl_paper`` name
``configs/quickstart.toml`` and ``configs/studies/qffl_paper.toml``. A path that exists
always wins, so a checkout or a user's own file of the same name is read first.
:func:`fedmtl.config.read_values` (hence :func:`fedmtl.validation.load_config`) resolves
every config path this way.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path, PurePosixPath

PACKAGE = "fedmtl.configs"
"""The package holding the shipped configs."""

FOLDER = "configs"
"""The configs' folder in the repository (a leading ``configs/`` in a name is dropped)."""


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by name (its path under ``configs/`` without ``.toml``), sorted.

    Returns
    -------
    dict of str to Path
        ``{"quickstart": .../configs/quickstart.toml, "studies/qffl_paper": ..., ...}``;
        empty when the package is not installed as files.
    """
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return {}
    if not isinstance(root, Path):  # e.g. a zipped install: configs cannot be opened as files
        return {}
    found = {p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*.toml")}
    return dict(sorted(found.items()))


def config_name(path: str | Path) -> str | None:
    """The shipped name ``path`` may mean (``None`` for an absolute path).

    ``quickstart``, ``quickstart.toml`` and ``configs/quickstart.toml`` all mean
    ``quickstart``; ``studies/qffl_paper`` means ``studies/qffl_paper``.
    """
    posix = PurePosixPath(Path(path).as_posix())
    if posix.is_absolute():
        return None
    parts = posix.parts[1:] if posix.parts[:1] == (FOLDER,) else posix.parts
    name = "/".join(parts)
    return name.removesuffix(".toml") or None


def resolve_config(path: str | Path) -> Path:
    """``path`` itself when it is a file (or is absolute), else the shipped config it names (a
    folder ``smoke`` in the working directory does not hide the shipped ``smoke``), else
    ``path`` unchanged (reading it then fails with :func:`missing_config`)."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    name = config_name(path)
    return shipped_configs().get(name, path) if name else path


def missing_config(path: str | Path) -> str:
    """The one-line error for a config path that is not a file and names no shipped config."""
    if Path(path).is_dir():
        line = f"config file '{path}' is a folder, not a TOML file"
    elif Path(path).exists():
        line = f"config file '{path}' is not a regular file"
    else:
        line = f"config file '{path}' does not exist"
    if config_name(path) is None:
        return line
    names = list(shipped_configs())
    if not names:
        return line
    return f"{line}, nor is it a shipped config ({', '.join(names)}; see `fedmtl list configs`)"


_SENTENCE_END = re.compile(r"\.(?:\s+(?=[A-Z0-9`])|$)")
_CLAUSE_END = re.compile(r"[:;]\s")
LONG = 160
"""A first sentence longer than this is cut at its first ``:`` or ``;`` after :data:`SHORT` characters."""
SHORT = 40


def describe_config(path: str | Path) -> str:
    """The first sentence of a config file's leading comment block (``""`` without one); a
    long one up to a colon or semicolon."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    match = _SENTENCE_END.search(text)
    sentence = text[: match.start() + 1] if match else text
    clause = _CLAUSE_END.search(sentence, SHORT)
    return sentence[: clause.start()] if len(sentence) > LONG and clause else sentence
