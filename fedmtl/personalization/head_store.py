"""Where a client's personal heads live between rounds.

Heads never leave the client. Any :class:`HeadStore` keeps them across rounds; the core
has the one that knows nothing of Flower (the ClientApp adds one in the node's Flower
``Context.state``, :mod:`fedmtl.clients.context_store`):

- :class:`DiskHeadStore`: files per client id under a folder, written atomically; it
  survives process and node restarts. Saved with the round that produced them
  (``client-<id>.r<round>.pt``), it keeps the versions a resumed run may need: a run resumed
  from its checkpoint of round C re-runs round C + 1 from the heads of round ≤ C, even for
  clients that already trained in round C + 1 before the run was killed.

On a client's first visit the store is empty and heads are initialised deterministically
from the run seed and the client id (:func:`init_heads`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import torch

from fedmtl.atomic import torch_save
from fedmtl.models import MultiTaskModel
from fedmtl.seeds import Stream, seeded_torch_init

HeadState = dict[str, torch.Tensor]
WEIGHTING_KEY = "__weighting_state__"


class HeadStore(Protocol):
    """Load and save the head state of a client."""

    def load(self, client_id: int, until_round: int | None = None) -> HeadState | None:
        """The heads saved last (in a round ≤ ``until_round``), or ``None`` on a first visit."""

    def save(self, client_id: int, state: HeadState, server_round: int | None = None,
             checkpoint_every: int = 1) -> None:
        """Persist the heads trained in ``server_round``."""


class DiskHeadStore:
    """Head files per client under ``root``: ``client-<id>.r<round>.pt`` (or
    ``client-<id>.pt`` when saved without a round).

    A save in round R keeps, besides the new file, the newest older version of a round ≤ C,
    the last checkpoint round before R (``checkpoint_every`` · ⌊(R − 1)/checkpoint_every⌋),
    and any newer one; older versions are deleted.

    Parameters
    ----------
    root : str or Path
        Folder of the store (created on first save).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, client_id: int, server_round: int | None = None) -> Path:
        """File of client ``client_id`` (of the heads trained in ``server_round``)."""
        suffix = "" if server_round is None else f".r{server_round}"
        return self.root / f"client-{client_id}{suffix}.pt"

    def versions(self, client_id: int) -> dict[int, Path]:
        """``{round: file}`` of the client's versioned files."""
        out = {}
        for path in self.root.glob(f"client-{client_id}.r*.pt"):
            tag = path.name[len(f"client-{client_id}.r"):-len(".pt")]
            if tag.isdigit():
                out[int(tag)] = path
        return out

    def load(self, client_id: int, until_round: int | None = None) -> HeadState | None:
        versions = {r: p for r, p in self.versions(client_id).items()
                    if until_round is None or r <= until_round}
        path = versions[max(versions)] if versions else self.path(client_id)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, client_id: int, state: HeadState, server_round: int | None = None,
             checkpoint_every: int = 1) -> None:
        torch_save({k: v.detach().cpu() for k, v in state.items()}, self.path(client_id, server_round))
        if server_round is None:
            return
        checkpoint = checkpoint_every * ((server_round - 1) // checkpoint_every)
        older = [r for r in self.versions(client_id) if r <= checkpoint]
        keep = max(older) if older else None
        for r, path in self.versions(client_id).items():
            if r <= checkpoint and r != keep:
                path.unlink(missing_ok=True)


def init_heads(model: MultiTaskModel, seed: int, client_id: int) -> None:
    """Re-initialise ``model``'s heads from ``(seed, client_id)`` alone (deterministic)."""
    with seeded_torch_init(Stream.HEAD_INIT, seed, client_id):
        for head in model.heads.values():
            for module in head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def restore_heads(model: MultiTaskModel, store: HeadStore, seed: int, client_id: int) -> bool:
    """Load the client's heads into ``model``; initialise them on a first visit.

    Returns
    -------
    bool
        ``True`` when heads were found in the store.
    """
    found, _ = restore_client(model, store, seed, client_id)
    return found


def restore_client(
    model: MultiTaskModel, store: HeadStore, seed: int, client_id: int, until_round: int | None = None
) -> tuple[bool, torch.Tensor | None]:
    """Like :func:`restore_heads`, reading the store once (the version of a round ≤
    ``until_round``); also return the packed local weighting state saved with the heads
    (``None`` if there is none; :func:`unpack_state`)."""
    state = store.load(client_id, until_round)
    if state is None:
        init_heads(model, seed, client_id)
        return False, None
    packed = state.pop(WEIGHTING_KEY, None)
    model.heads.load_state_dict(state)
    return True, packed


def pack_state(state: dict[str, Any]) -> torch.Tensor:
    """A weighting's ``state_dict`` as a uint8 tensor (it travels with the heads)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def unpack_state(packed: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`pack_state`."""
    return torch.load(io.BytesIO(packed.numpy().tobytes()), weights_only=True)


def save_client_state(
    store: HeadStore, client_id: int, model: MultiTaskModel, weighting_state: dict[str, Any],
    server_round: int | None = None, checkpoint_every: int = 1,
) -> None:
    """Save the heads and (when not empty) the local weighting's state, trained in ``server_round``."""
    state = dict(model.heads_state())
    if weighting_state:
        state[WEIGHTING_KEY] = pack_state(weighting_state)
    store.save(client_id, state, server_round, checkpoint_every)


def load_weighting_state(store: HeadStore, client_id: int) -> dict[str, Any] | None:
    """The local weighting's state saved with the heads, if any."""
    state = store.load(client_id)
    if state is None or WEIGHTING_KEY not in state:
        return None
    return unpack_state(state[WEIGHTING_KEY])


def heads_fingerprint(model: MultiTaskModel) -> float:
    """A float64 checksum of the heads' parameters (for continuity checks in logs/tests)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.heads.parameters()):
        flat = p.detach().to(torch.float64).flatten()
        ramp = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64)
        total += (i + 1) * (flat * ramp).sum()
    return float(total)
