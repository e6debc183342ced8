"""What ran a run: versions, source commit, host and times (``summary.json``'s ``provenance``).

:func:`collect_provenance` is called once when a run starts (it runs ``git`` at most three
times, each with a short timeout); :func:`finish_provenance` adds the end time. Nothing here
raises: a package that is not installed, a missing ``git`` binary, a package outside a git
checkout or a ``git`` that hangs give ``None`` for what they would have said.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("fedmtl", "torch", "flwr", "ray")
"""Distributions whose installed version is recorded (``None`` when not installed)."""
GIT_TIMEOUT_S = 5.0
"""The longest one ``git`` call may take before the commit is recorded as unknown."""
PACKAGE_DIR = Path(__file__).resolve().parent


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``importlib.metadata``), ``None`` when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(folder: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> str | None:
    """``git -C folder args`` standard output, ``None`` when git is missing, fails or times out."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: str | Path = PACKAGE_DIR, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """``{"commit": ..., "dirty": ...}`` of the git checkout holding ``folder``'s own files.

    ``commit`` is ``HEAD``'s full hash; ``dirty`` whether ``git status --porcelain`` lists any
    change (tracked or untracked, ignored files aside). Both are ``None`` when there is no
    ``git``, ``folder`` is in no checkout, or the checkout that holds it does not track its
    ``__init__.py`` (an installed copy in a folder that happens to be inside some other
    checkout); ``dirty`` alone is ``None`` when ``git status`` fails or times out.
    """
    folder = Path(folder)
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    head = _git(folder, "rev-parse", "HEAD", timeout=timeout)
    if head is None or _git(folder, "ls-files", "--error-unmatch", "__init__.py", timeout=timeout) is None:
        return unknown
    status = _git(folder, "status", "--porcelain", timeout=timeout)
    return {"commit": head.strip() or None, "dirty": None if status is None else bool(status.strip())}


def collect_provenance(package_dir: str | Path = PACKAGE_DIR) -> dict[str, Any]:
    """The ``provenance`` block of a run, as the run starts.

    Returns
    -------
    dict
        ``fedmtl``, ``torch``, ``flwr``, ``ray`` (installed versions or ``None``), ``git_commit``
        and ``git_dirty`` (:func:`git_state` of the fedmtl package's folder), ``python``
        (``platform.python_version()``), ``host`` (``socket.gethostname()``), ``platform``
        (``platform.platform()``), ``started`` (:func:`utc_now`) and ``finished`` (``None``
        until :func:`finish_provenance`).
    """
    git = git_state(package_dir)
    versions = {name: package_version(name) for name in PACKAGES}
    return {
        **versions,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": utc_now(),
        "finished": None,
    }


def finish_provenance(block: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``block`` with ``finished`` set to now (:func:`utc_now`)."""
    return {**block, "finished": utc_now()}
