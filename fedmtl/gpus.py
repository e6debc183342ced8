"""The GPUs in-process clients can use (``engine.backend = "inprocess"``)."""

from __future__ import annotations


def in_process_gpus() -> int:
    """The GPUs clients running in this process can use: 1 when torch sees any, else 0.

    Every client here picks ``"cuda"`` (:func:`fedmtl.training.setup.select_device`), the
    current device, so clients in threads of one process share one GPU however many the
    machine has.
    """
    import torch  # imported on use: the run header needs it only with a GPU fraction

    return min(torch.cuda.device_count(), 1)
