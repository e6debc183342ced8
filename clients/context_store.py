"""A head store in the Flower node's ``Context.state`` (the ClientApp's own store).

Fine for small heads: in simulation the context travels with every message to the worker
that runs the client, so large heads belong on disk
(:class:`fedmtl.personalization.DiskHeadStore`). It keeps one version per client: a node's
context does not outlive its process, so there is no resumed run to serve.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict

CONTEXT_KEY = "fedmtl.heads"
"""Prefix of the ``Context.state`` records holding heads: ``"fedmtl.heads.<client id>"``."""


class ContextHeadStore:
    """Heads kept in a Flower node ``Context.state`` (a :class:`fedmtl.personalization.HeadStore`).

    Parameters
    ----------
    state : flwr.app.RecordDict
        The node context's ``state``.
    """

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def key(self, client_id: int) -> str:
        """Record name of client ``client_id``'s heads."""
        return f"{CONTEXT_KEY}.{client_id}"

    def load(self, client_id: int, until_round: int | None = None) -> dict[str, torch.Tensor] | None:
        """The latest heads (one version only, whatever ``until_round``)."""
        record = self.state.array_records.get(self.key(client_id))
        if record is None:
            return None
        return record.to_torch_state_dict()

    def save(self, client_id: int, state: dict[str, torch.Tensor], server_round: int | None = None,
             checkpoint_every: int = 1) -> None:
        """Replace the client's heads (``server_round`` and ``checkpoint_every`` are unused)."""
        self.state[self.key(client_id)] = ArrayRecord({k: v.detach().cpu() for k, v in state.items()})
