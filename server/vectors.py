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


def unfit_problem(vector: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]) -> str:
    """Why :func:`unflatten_state` cannot hold ``vector`` in ``like``'s dtypes (``""`` when it can):
    a value outside an integer tensor's range (a BatchNorm's ``num_batches_tracked``, int64,
    would wrap around to a negative count) or one that is not finite in a floating tensor's
    dtype (float16 ends at 65504; the vector is checked finite in float32 before)."""
    offset = 0
    for k in keys:
        n = like[k].numel()
        part, offset = vector[offset : offset + n], offset + n
        dtype = like[k].dtype
        if dtype.is_floating_point:
            bad = ~torch.isfinite(part.to(dtype))
        elif dtype == torch.bool:
            continue  # any number is a truth value
        else:
            info = torch.iinfo(dtype)
            bad = ~torch.isfinite(part) | (part.double() < info.min) | (part.double() > info.max)
        if bool(bad.any()):
            value, name = float(part[bad][0]), str(dtype).removeprefix("torch.")
            return f"the model after the server step does not fit tensor '{k}' ({name}): {value:g}"
    return ""
