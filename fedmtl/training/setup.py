"""Small helpers shared by clients, the server and the centralized baseline: devices."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("fedmtl")


def select_device(requested: str) -> torch.device:
    """``"auto"``/``"cuda"`` give CUDA when this process sees a GPU, else the CPU.

    Asking for ``"cuda"`` without a visible GPU falls back to the CPU with a warning, the first
    time in this process.
    """
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda" and not _warned:
        _warn_once()
    return torch.device("cpu")


_warned = False
"""Whether this process has said that ``"cuda"`` fell back to the CPU (said once, not per client)."""


def _warn_once() -> None:
    global _warned
    _warned = True
    log.warning("client.device = 'cuda' but no GPU is visible here; using the CPU (said once per process)")


def server_device(requested: str) -> torch.device:
    """The device the server aggregates on (``server.device``).

    ``"auto"`` gives CUDA when this process sees a GPU, else the CPU. ``"cuda"`` without a
    visible GPU is an error: the server's host is the one the user chose.

    Raises
    ------
    ValueError
        For ``"cuda"`` when torch sees no GPU, naming the key.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "server.device = 'cuda' but torch sees no CUDA GPU on the server's host; "
            "use 'auto' (a GPU when present) or 'cpu'"
        )
    return select_device(requested)
