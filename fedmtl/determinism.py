"""Deterministic GPU kernels (``run.deterministic``).

A run on the CPU gives the same numbers bit for bit each time. On a GPU some kernels sum in an
order that varies from call to call (cuDNN's convolution backward passes, atomic additions):
two runs of one config on an H200 differed by up to 4e-8 of a tensor's norm
(``benchmarks/results/gpu_agreement.md``). With ``run.deterministic = true`` every process of
the run asks PyTorch for deterministic kernels (`PyTorch's notes on reproducibility
<https://pytorch.org/docs/stable/notes/randomness.html>`_):

- :func:`torch.use_deterministic_algorithms`: an operation with no deterministic kernel raises
  a ``RuntimeError`` naming it, rather than giving numbers that vary;
- ``torch.backends.cudnn.deterministic``, for cuDNN's convolution algorithms;
- the ``CUBLAS_WORKSPACE_CONFIG`` environment variable (``:4096:8``, unless already set), which
  cuBLAS needs for deterministic matrix products on CUDA 10.2 and later. PyTorch reads it when
  the process first uses cuBLAS: a client process sets it before its first CUDA work, but a
  Python session that used CUDA before calling :func:`fedmtl.run` should set it itself.

The settings are process-wide: a simulation restores the caller's on exit
(:func:`preserved_determinism`), and a client process sets them at each message only when they
differ (runs sharing an engine may differ).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_SETTING = ":4096:8"
"""The workspace setting PyTorch's reproducibility notes give for deterministic cuBLAS."""


def is_deterministic() -> bool:
    """Whether this process computes with deterministic kernels (both of torch's switches on)."""
    return torch.are_deterministic_algorithms_enabled() and bool(torch.backends.cudnn.deterministic)


def use_deterministic(enabled: bool) -> None:
    """Turn deterministic kernels on or off in this process (changed only when they differ).

    Parameters
    ----------
    enabled : bool
        ``run.deterministic``. Off leaves ``CUBLAS_WORKSPACE_CONFIG`` as it is.
    """
    if torch.are_deterministic_algorithms_enabled() == enabled and bool(torch.backends.cudnn.deterministic) == enabled:
        return
    if enabled:
        os.environ.setdefault(CUBLAS_VARIABLE, CUBLAS_SETTING)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled


@contextlib.contextmanager
def preserved_determinism() -> Iterator[None]:
    """Put torch's two determinism switches back as they were on exit (a run in this process,
    or its in-process clients, may change them)."""
    algorithms, cudnn = torch.are_deterministic_algorithms_enabled(), bool(torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        if torch.are_deterministic_algorithms_enabled() != algorithms:
            torch.use_deterministic_algorithms(algorithms)
        torch.backends.cudnn.deterministic = cudnn
