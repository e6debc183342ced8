"""Fault injection: client dropout, stragglers and corrupted updates, drawn reproducibly.

A simulation configured with ``[faults]`` (see :class:`fedmtl.config.FaultsSection`) makes
its clients fail on purpose, so that a study can measure what the server's defences
(:mod:`fedmtl.screening`, ``server.min-replies``, ``server.on-too-few``) let through and what
the faults cost. Every draw depends only on (run seed, round, attempt, client), so a run with
faults is as reproducible as one without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedmtl import seeds
from fedmtl.config import FaultsSection

HUGE_SCALE = 1e6
"""Factor of a 'huge' corruption."""


def _fill_nan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _first_tensor(state, lambda t: torch.full_like(t, float("nan")))


def _fill_inf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _first_tensor(state, lambda t: torch.full_like(t, float("inf")))


def _scale_huge(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v * HUGE_SCALE if v.is_floating_point() else v for k, v in state.items()}


def _drop_element(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _first_tensor(state, lambda t: t.reshape(-1)[:-1].clone())


CORRUPTIONS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "nan": _fill_nan,
    "inf": _fill_inf,
    "huge": _scale_huge,
    "shape": _drop_element,
}
"""Corruption kinds: each maps an update (a state dict of tensors) to a corrupted copy."""


def _first_tensor(
    state: dict[str, torch.Tensor], change: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose first floating-point tensor is replaced by ``change`` of it."""
    out = dict(state)
    for key, value in state.items():
        if value.is_floating_point() and value.numel() > 0:
            out[key] = change(value)
            break
    return out


@dataclass(frozen=True)
class Fault:
    """What happens to one client in one training attempt.

    Attributes
    ----------
    dropout : bool
        The client drops out: it does not train, and the server gets an error in place of
        its reply.
    delay : float
        Seconds the client waits after training before it replies (0 = none).
    corruption : str
        A key of :data:`CORRUPTIONS`, or ``""`` when its update is sent intact.
    """

    dropout: bool = False
    delay: float = 0.0
    corruption: str = ""


def draw_fault(faults: FaultsSection, seed: int, server_round: int, attempt: int, client: int) -> Fault:
    """The fault of ``client`` in one training attempt of ``server_round``.

    The draws are independent across clients, rounds and attempts and seeded by all four, so
    a retried round draws afresh and a rerun draws the same.
    """
    if faults.dropout == 0 and faults.straggler == 0 and faults.corrupt == 0:
        return Fault()
    rng = seeds.rng(seed, server_round, attempt, client, seeds.Stream.FAULTS)
    u_drop, u_straggle, u_corrupt = rng.random(3)
    if u_drop < faults.dropout:
        return Fault(dropout=True)
    delay = faults.straggler_delay if u_straggle < faults.straggler else 0.0
    corruption = ""
    if u_corrupt < faults.corrupt:
        kinds = [k.strip() for k in faults.corrupt_kinds.split(",") if k.strip()]
        corruption = kinds[int(rng.integers(len(kinds)))]
    return Fault(dropout=False, delay=delay, corruption=corruption)


def corrupt(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """A copy of the update ``state`` corrupted by ``kind`` (a key of :data:`CORRUPTIONS`)."""
    return CORRUPTIONS[kind](state)
