"""The federated state as one flat vector, the form updates are combined in."""

from __future__ import annotations

from collections.abc import Iterator

import torch

FLOAT32_MAX = torch.finfo(torch.float32).max


def flatten_state(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Concatenate the tensors of ``keys`` into one float32 vector."""
    return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in keys])


def _parts(
    vector: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each key of ``keys`` with its slice of ``vector``, shaped as ``like``'s tensor (a view)."""
    offset = 0
    for k in keys:
        n = like[k].numel()
        yield k, vector[offset : offset + n].reshape(like[k].shape)
        offset += n


def unflatten_state(
    vector: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state`, with ``like``'s shapes and dtypes."""
    return {k: part.to(like[k].dtype) for k, part in _parts(vector, like, keys)}


def unfit_problem(vector: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]) -> str:
    """Why :func:`unflatten_state` cannot hold ``vector`` in ``like``'s dtypes (``""`` when it can):
    a value outside an integer tensor's range (a BatchNorm's ``num_batches_tracked``, int64,
    would wrap around to a negative count) or one that is not finite in a floating tensor's
    dtype narrower than float32 (float16 ends at 65504). ``vector`` must be finite (float32):
    a float32 or float64 tensor then holds it, and is not read again."""
    for k, part in _parts(vector, like, keys):
        dtype = like[k].dtype
        if dtype == torch.bool or (dtype.is_floating_point and torch.finfo(dtype).max >= FLOAT32_MAX):
            continue  # any number is a truth value; a finite float32 stays finite
        if dtype.is_floating_point:
            bad = ~torch.isfinite(part.to(dtype))
        else:
            info = torch.iinfo(dtype)
            bad = ~torch.isfinite(part) | (part.double() < info.min) | (part.double() > info.max)
        if bool(bad.any()):
            value, name = float(part[bad][0]), str(dtype).removeprefix("torch.")
            return f"the model after the server step does not fit tensor '{k}' ({name}): {value:g}"
    return ""
