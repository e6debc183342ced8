"""Per-task update parts as they travel: one flat float32 vector per task.

Local training keeps the parts as a ``(T, P)`` tensor over the backbone's *parameters*
(``named_parameters`` order). The server flattens its federated state in state-dict order,
buffers included; :func:`flat_parts` lays each part out that way (buffers as zeros, see
:func:`fedmtl.protocol.flat_layout`), so the server stacks the vectors as they arrive.
"""

from __future__ import annotations

import torch

from fedmtl.models import MultiTaskModel
from fedmtl.protocol import flat_layout


def flat_parts(
    parts: torch.Tensor, model: MultiTaskModel, like: dict[str, torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """``(T, P)`` parameter parts -> ``{task: flat float32 vector}`` in the layout of ``like``.

    Parameters
    ----------
    parts : torch.Tensor
        ``(T, P)`` per-task parts, parameters flattened in ``named_parameters`` order.
    model : MultiTaskModel
        The client's model (for the parameters' order and sizes).
    like : dict[str, torch.Tensor]
        The global federated state the message carried (its keys' order is the layout).
    names : list[str]
        The task of each row of ``parts``.
    """
    offsets, offset = {}, 0
    for key, p in model.backbone.named_parameters():
        offsets[key] = offset
        offset += p.numel()
    layout = flat_layout(((k, v.numel()) for k, v in like.items()), offsets)
    columns = [parts[:, offsets[key] : offsets[key] + size] if trained
               else parts.new_zeros(parts.shape[0], size)
               for key, size, trained in layout]
    flat = torch.cat(columns, dim=1).to(torch.float32)
    return {name: flat[i] for i, name in enumerate(names)}
