"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    """This process's umask (read by setting it and back: once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""The mode of the files written: as ``open`` would make them (a temporary file is made 0600)."""


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode a plain ``open`` would give it (readable by others where the umask
    allows: colleagues sharing a results folder read every file of a run). An error names
    ``path`` (``OSError.filename``), not the temporary file: a full disk while writing a
    checkpoint says which.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic with :func:`write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Within the block, an ``OSError`` that names no file (a full disk while appending rows)
    is raised again naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
