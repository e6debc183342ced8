"""What the server knows of each client's personal heads: heads deleted or replaced during a
run are refused, never silently re-initialised.

Every training reply says which heads the client started from and which it saved
(``heads-fingerprint-in`` and ``heads-fingerprint-out``). :class:`HeadsLedger` keeps, per
client, the heads its last training left (the round and its ``heads-fingerprint-out``), or
that it has not trained in this run, and the server names them in every call
(:attr:`fedmtl.protocol.Call.heads_in`, :attr:`fedmtl.protocol.Call.fresh_heads`). A client
whose heads differ refuses the call, and the server counts the refusal as a rejected reply
(:class:`fedmtl.server.replies.Refused`).

A client whose heads may have moved without the server learning to what (an error in place
of its reply, no reply in time, a reply whose metrics cannot be read) is not checked in its
next call; the check starts again from its next readable training reply. The ledger is part
of the server's checkpoint (:meth:`HeadsLedger.state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedmtl import protocol as wire
from fedmtl.server.replies import Accepted, Contradicted, Failed, Ignored, Refused, Rejected


@dataclass(frozen=True)
class Trained:
    """The heads a client's training left: the round it saved them in and their fingerprint."""

    round: int
    heads_out: float



FRESH = "fresh"
"""The client has not trained in this run: it has no saved heads."""
UNKNOWN = "unknown"
"""The client's heads may have moved without the server learning to what: not checked."""
Heads = Trained | str
"""What the server knows of a client's heads: :class:`Trained`, :data:`FRESH` or :data:`UNKNOWN`."""


class HeadsLedger:
    """Per client, the heads it must start its next call from.

    Parameters
    ----------
    personal : bool
        The clients keep something between rounds: personal heads (``model.heads`` is not
        ``"global"``), or their method's own state (``Method.keeps_state``: Ditto's and APFL's
        personal model); without either nothing is checked.
    retry_from_earlier_rounds : bool
        A client asked again within a round starts from the heads of earlier rounds (the disk
        head store: training in round R reads the newest version of a round ≤ R − 1); else
        from what its previous attempt saved (the context store keeps one version).
    """

    def __init__(self, personal: bool, retry_from_earlier_rounds: bool) -> None:
        self.personal = personal
        self.retry_from_earlier_rounds = retry_from_earlier_rounds
        self.left: dict[int, Heads] = {}
        """Per client, as the last finished round left it (absent: :attr:`default`)."""
        self.default: Heads = FRESH
        """What a client not in :attr:`left` has: :data:`FRESH` (:data:`UNKNOWN` after a
        checkpoint written without a ledger)."""
        self.now: dict[int, Heads] = {}
        """The clients asked to train in the current round, as their latest attempt left them."""
        self.late: set[int] = set()
        """The clients of the current round with an attempt that got no reply: they may still save heads."""
        self.saving: set[int] = set()
        """The clients of the current round with an attempt known to have saved heads."""
        self.last_saved: set[int] = set()
        """:attr:`saving` of the round :meth:`commit` ended last."""

    def heads(self, client: int, training: bool) -> Heads:
        """What ``client`` must start a training (or an evaluation) call from."""
        if training and not self.retry_from_earlier_rounds and client in self.now:
            return self.now[client]
        return self.left.get(client, self.default)

    def expected(self, client: int, training: bool) -> dict[str, float | bool]:
        """The :class:`fedmtl.protocol.Call` fields that name ``client``'s heads (empty: not checked)."""
        if not self.personal:
            return {}
        heads = self.heads(client, training)
        if isinstance(heads, Trained):
            return {"heads_in": heads.heads_out}
        return {"fresh_heads": True} if heads == FRESH else {}

    def observe(self, server_round: int, asked: Iterable[int],
                outcomes: list[Accepted | Rejected | Failed | Ignored]) -> None:
        """Note what one training attempt of ``server_round`` says of the heads of the clients it ``asked``."""
        for client in asked:
            mine = [o for o in outcomes if o.client == client and not isinstance(o, Ignored)]
            if not mine:
                self.late.add(client)
            heads = attempt_heads(server_round, mine)
            if heads is not None:
                self.now[client] = heads
            if isinstance(heads, Trained):
                self.saving.add(client)

    def commit(self) -> None:
        """End the training of a round: its clients' heads are what their last attempt left
        (:data:`UNKNOWN` for a client with a missing reply, which may save heads late)."""
        for client, heads in self.now.items():
            self.left[client] = UNKNOWN if client in self.late else heads
        self.last_saved, self.saving = self.saving, set()
        self.now.clear()
        self.late.clear()

    def saved(self) -> set[int]:
        """After :meth:`commit`: the clients known to have trained and saved their personal
        state in the round it ended, in any of its attempts: an accepted reply, or one rejected
        for its update alone (its metrics usable, ``heads-fingerprint-out`` known)."""
        return set(self.last_saved)

    def state_dict(self) -> dict[int, tuple[int, float] | None]:
        """For the checkpoint: per client that trained ``(round, heads-fingerprint-out)``, or
        ``None`` when unknown (a client absent has not trained)."""
        return {c: (h.round, h.heads_out) if isinstance(h, Trained) else None
                for c, h in sorted(self.left.items()) if h != FRESH}

    def load_state_dict(self, state: Mapping[int, tuple[int, float] | None] | None) -> None:
        """Restore :meth:`state_dict` (``None``: a checkpoint without a ledger; nothing is checked
        until each client's next readable training reply)."""
        self.now.clear()
        self.late.clear()
        self.saving.clear()
        self.last_saved = set()
        if state is None:
            self.left, self.default = {}, UNKNOWN
            return
        self.default = FRESH
        self.left = {int(c): UNKNOWN if h is None else Trained(int(h[0]), float(h[1])) for c, h in state.items()}


def attempt_heads(server_round: int, outcomes: list[Accepted | Rejected | Failed]) -> Heads | None:
    """What one attempt's outcomes for a client say of its heads (``None``: unchanged: it
    refused the call and did not train, or its reply did not start from the heads named:
    :class:`fedmtl.server.replies.Contradicted`)."""
    if not outcomes:
        return UNKNOWN
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            return Trained(server_round, outcome.metrics[wire.HEADS_OUT])
    if all(isinstance(o, Refused | Contradicted) for o in outcomes):
        return None  # it did not train from the heads the server knows of: those are still its
    saved = [o.heads_out for o in outcomes if isinstance(o, Rejected) and o.heads_out is not None]
    return Trained(server_round, saved[0]) if len(saved) == len(outcomes) else UNKNOWN
