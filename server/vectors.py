"""The federated state as one flat vector, the form updates are combined in."""

from __future__ import annotations

import torch


def flatten_state(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate the tensors of ``keys`` into one float32 vector."""
    return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in keys])


def unflatten_state(
    vector: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state`, with ``like``'s shapes and dtypes."""
    out, offset = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = vector[offset : offset + n].reshape(like[k].shape).to(like[k].dtype)
        offset += n
    return out
