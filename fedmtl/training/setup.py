"""Small helpers shared by clients and the centralized baseline: device and seeds."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("fedmtl")


def select_device(requested: str) -> torch.device:
    """``"auto"``/``"cuda"`` give CUDA when this process sees a GPU, else the CPU.

    Asking for ``"cuda"`` without a visible GPU falls back to the CPU with a warning.
    """
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        log.warning("client.device = 'cuda' but no GPU is visible here; using the CPU")
    return torch.device("cpu")


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


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, round, client id, ...)."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed ^ (int(part) + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) % (2**63)
    return seed


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(*parts))
