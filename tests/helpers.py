"""Test helpers: PNG validity and cleaning up Flower's detached local SuperLink."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    """``True`` when ``path`` is a non-trivial PNG file."""
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return out


def stop_local_superlink(flwr_home: Path) -> None:
    """Kill the local SuperLink that ``flwr`` started for ``flwr_home`` and its children.

    ``flwr run`` launches it detached (its own session), so it outlives the command.
    """
    procs = _cmdlines()
    links = [pid for pid, cmd in procs.items() if "flower-superlink" in cmd and str(flwr_home) in cmd]
    groups = set()
    for link in links:
        groups.add(os.getpgid(link))
        for pid, cmd in procs.items():
            if f"--parent-pid {link}" in cmd:
                groups.add(os.getpgid(pid))
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(2)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
