"""Deterministic GPU kernels (``run.deterministic``).

A run on the CPU gives the same numbers bit for bit each time. On a GPU some kernels sum in an
order that varies from call to call (cuDNN's convolution backward passes, atomic additions):
two runs of one config on an H200 differed by up to 4e-8 of a tensor's norm
(``benchmarks/results/gpu_agreement.md``). With ``run.deterministic = true`` every process of
the run asks PyTorch for deterministic kernels (`PyTorch's notes on reproducibility
<https://pytorch.org/docs/stable/notes/randomness.html>`_):

- :func:`torch.use_deterministic_algorithms`: an operation with no deterministic kernel raises
  a ``RuntimeError`` naming it, rather than giving numbers that vary;
- ``torch.backends.cudnn.deterministic`` on and ``torch.backends.cudnn.benchmark`` off, for
  cuDNN's convolution algorithms (timing algorithms against each other could pick another one
  in each run);
- the ``CUBLAS_WORKSPACE_CONFIG`` environment variable (``:4096:8``, unless already set), which
  cuBLAS needs for deterministic matrix products on CUDA 10.2 and later. PyTorch reads it when
  the process first uses cuBLAS: a client process sets it before its first CUDA work, but a
  Python session that used CUDA before calling :func:`fedmtl.run`, or a sweep whose runs on the
  GPU are not all deterministic, should set it itself (in the environment fedmtl starts in).

The settings are process-wide. ``run.deterministic = false`` leaves a process's own settings
alone (a notebook that turned them on keeps them); it turns off only what an earlier
``run.deterministic = true`` of fedmtl's turned on in that process (a Ray worker that ran a
deterministic run of a sweep, then runs another). A simulation puts the caller's settings back
on exit (:func:`preserved_determinism`); a client process sets them at each message.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch

CUBLAS_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_SETTING = ":4096:8"
"""The workspace setting PyTorch's reproducibility notes give for deterministic cuBLAS."""


class Settings(NamedTuple):
    """torch's process-wide settings that decide whether its kernels are deterministic."""

    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool

    @classmethod
    def now(cls) -> Settings:
        return cls(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                   bool(torch.backends.cudnn.deterministic), bool(torch.backends.cudnn.benchmark))

    def apply(self) -> None:
        """Make these the process's settings (cuDNN's first: they are the ones that can be
        refused, under ``torch.backends.disable_global_flags``, before anything changed)."""
        if Settings.now() != self:
            torch.backends.cudnn.deterministic = self.cudnn_deterministic
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            torch.use_deterministic_algorithms(self.algorithms, warn_only=self.warn_only)


DETERMINISTIC = Settings(algorithms=True, warn_only=False, cudnn_deterministic=True, cudnn_benchmark=False)
"""``run.deterministic = true``: an operation with no deterministic kernel raises; cuDNN picks
deterministic convolutions and does not time algorithms against each other."""

_LOCK = threading.RLock()
"""In-process clients call :func:`use_deterministic` from several threads at once."""

_before_ours: Settings | None = None
"""The settings before :func:`use_deterministic` turned them on in this process (None: it did not,
or it has turned them off again)."""


def is_deterministic() -> bool:
    """Whether this process computes with deterministic kernels (:data:`DETERMINISTIC`)."""
    return Settings.now() == DETERMINISTIC


def use_deterministic(enabled: bool) -> None:
    """Turn deterministic kernels on (``run.deterministic = true``), or turn off what an earlier
    call turned on in this process (``false``; the process's own settings are left alone).

    Parameters
    ----------
    enabled : bool
        ``run.deterministic``. On also sets ``CUBLAS_WORKSPACE_CONFIG`` when it is unset.
    """
    global _before_ours
    with _LOCK:
        if enabled:
            os.environ.setdefault(CUBLAS_VARIABLE, CUBLAS_SETTING)
            if _before_ours is None and not is_deterministic():
                _before_ours = Settings.now()
            DETERMINISTIC.apply()
        elif _before_ours is not None:
            _before_ours.apply()
            _before_ours = None


@contextlib.contextmanager
def preserved_determinism() -> Iterator[None]:
    """Put torch's settings (:class:`Settings`) back as they were on exit: a run in this process,
    or its in-process clients, may change them."""
    global _before_ours
    with _LOCK:
        settings, ours = Settings.now(), _before_ours
    try:
        yield
    finally:
        with _LOCK:
            try:
                settings.apply()
            finally:
                _before_ours = ours
