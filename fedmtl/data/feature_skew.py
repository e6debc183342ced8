"""Feature skew: each client sees its inputs through its own transformation.

``data.feature-skew`` (strength s = ``data.feature-skew-strength``; client k of N gets
level ``k / (N − 1)``, so client 0 is untouched and the last client gets the full strength):

``none``
    No change (default).
``rotation``
    Images rotated by ``s · level`` degrees about their centre (bilinear, border fill), as in
    rotated-MNIST federations (e.g. the feature-shift setting of FedBN, Li et al., ICLR 2021).
``noise``
    Fixed Gaussian noise of standard deviation ``s · level`` added once to every input
    (seeded per client), so each client's inputs have their own noise level.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fedmtl.data.federation import ClientData, Split
from fedmtl.seeds import Stream, torch_generator

if TYPE_CHECKING:
    from fedmtl.config import DataSection

FEATURE_SKEWS = ("none", "rotation", "noise")


def level(client_id: int, num_clients: int) -> float:
    """Client ``client_id``'s skew level in [0, 1]."""
    return client_id / (num_clients - 1) if num_clients > 1 else 0.0


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images ``(n, c, h, w)`` by ``degrees`` (counter-clockwise)."""
    if degrees == 0:
        return x
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(matrix.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _apply(split: Split, kind: str, amount: float, generator: torch.Generator) -> Split:
    if kind == "rotation":
        x = rotate(split.x, amount)
    else:
        x = split.x + amount * torch.randn(split.x.shape, generator=generator, dtype=split.x.dtype)
    return Split(x, split.targets, split.groups, split.group_names)


def skew_client(data: ClientData, num_clients: int, cfg: DataSection, seed: int) -> ClientData:
    """``data`` with client ``data.client_id``'s feature skew applied to train and test."""
    if cfg.feature_skew == "none":
        return data
    amount = cfg.feature_skew_strength * level(data.client_id, num_clients)
    generator = torch_generator(Stream.FEATURE_SKEW, seed, data.client_id)
    return ClientData(
        data.client_id,
        _apply(data.train, cfg.feature_skew, amount, generator),
        _apply(data.test, cfg.feature_skew, amount, generator),
        _apply(data.validation, cfg.feature_skew, amount, generator) if data.validation is not None else None,
    )
