"""The typed state of one server round, its ``rounds.csv`` row, the clients' participation,
and the rules on rounds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.common import log

from fedmtl.aggregation.plans import uses_task_weighting
from fedmtl.config import ExperimentConfig, RunSection, ServerSection
from fedmtl.server.replies import Accepted


class ClientsFailed(RuntimeError):
    """The clients failed the run: too many rounds in a row had too few valid replies
    (``server.max-failed-rounds``), or no round had enough."""

    @classmethod
    def in_a_row(cls, server_round: int, streak: int, limit: int, why: str, reasons: list[str]) -> ClientsFailed:
        """``streak`` skipped rounds in a row reached ``server.max-failed-rounds``."""
        return cls(f"round {server_round}: {streak} rounds in a row without enough valid replies "
                   f"(server.max-failed-rounds = {limit}); last round: {why}"
                   + (f"; first problem: {reasons[0]}" if reasons else ""))

    @classmethod
    def none_aggregated(cls, tally: RunTally, min_replies: int) -> ClientsFailed:
        """None of this process's rounds had ``server.min-replies`` valid replies."""
        return cls(f"none of the {tally.train_rounds} round(s) moved the model (each needs server.min-replies = "
                   f"{min_replies} valid replies and a finite update); last round: {tally.last_skip or 'skipped'}"
                   + (f"; first error: {tally.first_error}" if tally.first_error else ""))

    @classmethod
    def none_evaluated(cls, tally: RunTally) -> ClientsFailed:
        """The run ends without one accepted evaluation reply: it has no results."""
        problem = tally.first_rejection or tally.first_error
        return cls(f"no evaluation reply was accepted in any of the run's {tally.evaluate_rounds} evaluation "
                   "round(s) here, so the run has no results" + (f"; first problem: {problem}" if problem else ""))

    @classmethod
    def none_left(cls, rounds: int) -> ClientsFailed:
        """A resumed run with no round left, none of whose ``rounds`` moved the model."""
        return cls(f"all {rounds} rounds of this run are done and none of them moved the model; "
                   f"a resume has no round left to run")


class RuleFailed(RuntimeError):
    """A server rule raised while it combined a round's updates (a plugin's rule, or a bug):
    the run stops there, its checkpoints kept, with one line naming the rule and the error."""


MAX_REASONS = 20
"""Client errors kept per round (the first ones)."""


@dataclass
class Collected:
    """The training replies of one round so far, over all its attempts."""

    formed: dict[int, Accepted] = field(default_factory=dict)
    """Well-formed replies by client (before norm screening)."""
    sampled: int = 0
    failures: int = 0
    rejected: int = 0
    """Replies rejected when read (norm screening is counted apart)."""
    retries: int = 0
    reasons: list[str] = field(default_factory=list)
    """The round's client errors and rejected replies, each naming its client (the first
    :data:`MAX_REASONS`)."""

    def note_failure(self, reason: str) -> None:
        """Keep the reason of one failed client or rejected reply (``client 3: ...``)."""
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


@dataclass(frozen=True)
class TrainRecord:
    """The training half of a ``rounds.csv`` row."""

    sampled: int
    replies: int
    failures: int
    rejected: int
    retries: int
    aggregated: int
    skipped: int
    fallbacks: int | None = None
    """Weighting fallbacks (``None`` for a skipped round)."""
    train_loss: float | None = None
    """Example-weighted mean training loss (``None`` for a skipped round)."""


@dataclass(frozen=True)
class EvaluateRecord:
    """The evaluation half of a ``rounds.csv`` row."""

    failures: int
    evaluated: int


def round_row(server_round: int, train: TrainRecord, evaluation: EvaluateRecord | None) -> dict[str, Any]:
    """The ``rounds.csv`` counts of a round, in column order; values a round does not have
    (a skipped round's loss, a round without evaluation) are left out."""
    row: dict[str, Any] = {"round": server_round}
    row.update({k: v for k, v in vars(train).items() if v is not None})
    if evaluation is not None:
        row["evaluate_failures"] = evaluation.failures
        if evaluation.evaluated:
            row["evaluated"] = evaluation.evaluated
    return row


@dataclass
class Participation:
    """Per client, the rounds it trained in: the server accepted its training reply (well
    formed, of the client's own tasks; the client trained and saved its personal state), or
    rejected only its update while its metrics were usable (it trained and saved its state all
    the same), and
    the rounds its update was aggregated (it also passed the norm screen, and the round was not
    skipped). Written to ``participation.csv`` (:meth:`rows`) and part of the server's checkpoint
    (:meth:`state_dict`), so a resumed run's record equals an uninterrupted run's.
    """

    trained: dict[int, int] = field(default_factory=dict)
    """Client -> rounds it trained in (absent: none): an accepted training reply, or one rejected
    for its update alone (the client saved its state all the same)."""
    last_round: dict[int, int] = field(default_factory=dict)
    """Client -> the last of those rounds."""
    aggregated: dict[int, int] = field(default_factory=dict)
    """Client -> rounds its update entered the model."""

    def note_trained(self, server_round: int, clients: Iterable[int]) -> None:
        """``clients`` trained in ``server_round`` (each counted once a round)."""
        for client in set(clients):
            if self.last_round.get(client) != server_round:
                self.trained[client] = self.trained.get(client, 0) + 1
                self.last_round[client] = server_round

    def note_aggregated(self, clients: Iterable[int]) -> None:
        """The updates of ``clients`` entered the model this round."""
        for client in set(clients):
            self.aggregated[client] = self.aggregated.get(client, 0) + 1

    def rows(self, clients: Iterable[int]) -> list[tuple[int, int, int | None, int]]:
        """``(client, rounds_trained, last_round, rounds_aggregated)`` of each of ``clients``
        (every client of the federation; ``last_round`` is ``None`` for one that never trained)."""
        return [(c, self.trained.get(c, 0), self.last_round.get(c), self.aggregated.get(c, 0)) for c in clients]

    def state_dict(self) -> dict[str, dict[int, int]]:
        """For the checkpoint."""
        return {"trained": dict(self.trained), "last_round": dict(self.last_round),
                "aggregated": dict(self.aggregated)}

    def load_state_dict(self, state: Mapping[str, Mapping[int, int]] | None,
                        aggregated_rounds: Mapping[int, list[int]] | None = None) -> None:
        """Restore :meth:`state_dict`; for a checkpoint written before participation was
        recorded (``state`` ``None``), rebuild it from ``aggregated_rounds`` (per client, the
        rounds ``metrics.csv`` has its aggregated training of): exact but for the rounds in which
        a client trained and its update was not aggregated."""
        if state is None:
            rounds = {int(c): sorted(set(r)) for c, r in (aggregated_rounds or {}).items() if r}
            state = {"trained": {c: len(r) for c, r in rounds.items()},
                     "last_round": {c: r[-1] for c, r in rounds.items()},
                     "aggregated": {c: len(r) for c, r in rounds.items()}}
        self.trained, self.last_round, self.aggregated = (
            {int(c): int(n) for c, n in state.get(key, {}).items()} for key in ("trained", "last_round", "aggregated"))


@dataclass
class RunTally:
    """What this process's rounds add up to (for the end-of-run check)."""

    train_rounds: int = 0
    aggregated_rounds: int = 0
    failed_streak: int = 0
    """Consecutive rounds skipped for too few valid replies."""
    first_error: str = ""
    """The first client error of this process (training or evaluation)."""
    last_skip: str = ""
    """Why the last skipped round was skipped."""
    evaluate_rounds: int = 0
    """Evaluation rounds this process ran."""
    first_rejection: str = ""
    """The first evaluation reply this process rejected, and why."""

    def note_error(self, reason: str) -> None:
        """Remember ``reason`` if it is the first error."""
        self.first_error = self.first_error or reason

    def note_rejection(self, reason: str) -> None:
        """Remember ``reason`` if it is the first rejected evaluation reply."""
        self.first_rejection = self.first_rejection or reason


def is_evaluation_round(run: RunSection, server_round: int) -> bool:
    """Evaluate every ``run.evaluate-every`` rounds and at the last round."""
    return server_round % run.evaluate_every == 0 or server_round == run.rounds


def is_checkpoint_round(run: RunSection, server_round: int) -> bool:
    """Checkpoint every ``run.checkpoint-every`` rounds and at the last round."""
    return server_round % run.checkpoint_every == 0 or server_round == run.rounds


def retry_pool(server: ServerSection, collected: Collected, usable: int, clients: list[int]) -> list[int]:
    """The clients a retry may ask: those without a well-formed reply this round, when
    ``usable`` replies are too few, ``server.on-too-few = "retry"`` and retries are left
    (else none)."""
    if usable >= server.min_replies or server.on_too_few != "retry" or collected.retries >= server.max_retries:
        return []
    return [c for c in clients if c not in collected.formed]


def count_screened(server_round: int, formed: list[int], accepted: list[int], factor: float) -> int:
    """How many of the clients with ``formed`` (well-formed) updates norm screening rejected,
    logged with their ids (the clients not in ``accepted``)."""
    screened = sorted(set(formed) - set(accepted))
    if screened:
        log(WARNING, "round %d: norm screening rejected the update of client(s) %s: longer than %g × the median "
            "(its update, or its task parts together; times its local steps over the median client's where "
            "it takes more; server.norm-screening)",
            server_round, ", ".join(map(str, screened)), factor)
    return len(screened)


def log_settings(cfg: ExperimentConfig, num_clients: int) -> None:
    """Log the server's settings at the start of a run."""
    server = cfg.server
    log(INFO, "\t├── clients: %d, train fraction %.2f, evaluate fraction %.2f",
        num_clients, server.fraction_train, server.fraction_evaluate)
    levels = f"'{server.weighting}'"
    if uses_task_weighting(server.plan):
        levels += f" across clients, '{server.task_weighting}' across tasks"
    log(INFO, "\t└── plan '%s', server weighting %s, optimizer %s (lr %g), client weighting '%s'",
        server.plan, levels, server.optimizer, server.lr, cfg.client.weighting)
