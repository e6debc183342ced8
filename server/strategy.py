"""The fedmtl strategy: the server's round loop over Flower's Grid and fedmtl's aggregation.

:meth:`FedMTLStrategy.start` runs rounds ``first_round .. run.rounds`` (a resumed run starts
after its checkpoint's round), each top to bottom:

1. **train**: sample clients with the seeded RNG, send them the global model, the run config
   and what the round needs back (:class:`fedmtl.protocol.TrainCall`); read every reply
   (:mod:`fedmtl.server.replies`) and screen the update norms;
2. **retry** (``server.on-too-few = "retry"``): while too few replies are usable, ask other
   clients, up to ``server.max-retries`` times;
3. **aggregate** the accepted updates with the plan and weightings and take the server step,
   or **skip** the round (stop after ``server.max-failed-rounds`` skips in a row);
4. **evaluate** the personalized models (and, for methods that have one, the global model)
   every ``run.evaluate-every`` rounds and at the last;
5. **record** the ``rounds.csv`` row and **checkpoint** every ``run.checkpoint-every`` rounds.

Each client's participation (rounds trained, last round, rounds aggregated) is kept through
the run (:class:`fedmtl.server.rounds.Participation`) and written to ``participation.csv``
when the last round ends.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import MessageType, log
from flwr.serverapp import Grid

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import LEVEL_KEYS, make_plan, needs_task_parts
from fedmtl.aggregation.rule import NonFiniteObjectives, NonFiniteResult
from fedmtl.aggregation.server_optimizer import ServerOptimizer
from fedmtl.config import ExperimentConfig
from fedmtl.one_line import RULE_ERROR_LIMIT, counted
from fedmtl.personalization import KEPT_FINGERPRINTS
from fedmtl.progress import CLIENT_ERRORS, ClientErrors, Progress
from fedmtl.results import RoundStats, RunRecorder, aggregated_training
from fedmtl.screening import KnownClients, one_line
from fedmtl.seeds import Stream, seeded_global_rng
from fedmtl.server.discovery import ClientDirectory
from fedmtl.server.exchange import (
    build_messages,
    client_failures,
    log_rejections,
    placement_rows,
    read_evaluate_replies,
    send_and_read,
    train_reply_reader,
    unanswered,
)
from fedmtl.server.heads import HeadsLedger
from fedmtl.server.replies import Accepted, Evaluated, Failed
from fedmtl.server.roster import Roster, training_sizes
from fedmtl.server.rounds import (
    ClientsFailed,
    Collected,
    EvaluateRecord,
    Participation,
    RuleFailed,
    RunTally,
    TrainRecord,
    count_screened,
    is_checkpoint_round,
    is_evaluation_round,
    log_settings,
    retry_pool,
    round_row,
)
from fedmtl.server.updates import plan_rows, screen_norms, stepped, train_loss, train_metric_rows, weight_rows
from fedmtl.server.vectors import flatten_state, unfit_problem, unflatten_state
from fedmtl.training.methods import METHODS
from fedmtl.training.setup import server_device


class FedMTLStrategy:
    """Federated multi-task strategy with personalized heads and pluggable weightings.

    Parameters
    ----------
    cfg : ExperimentConfig
        The resolved run config (sent to clients with every message).
    directory : ClientDirectory
        Client (partition) id -> Flower node id, from client discovery.
    recorder : RunRecorder
        Writes the run folder.
    progress : Progress
        Live terminal display.
    """

    def __init__(self, cfg: ExperimentConfig, directory: ClientDirectory, recorder: RunRecorder,
                 progress: Progress) -> None:
        self.cfg, self.recorder, self.progress = cfg, recorder, progress
        self.known = KnownClients(cfg.data, cfg.run.seed, cfg.server.max_examples)  # bounds what replies report
        self.roster = Roster(cfg, directory, training_sizes(self.known))
        self.plan = make_plan(cfg.server, cfg.client.lr)
        self.device = server_device(cfg.server.device)
        """Where update rows are stacked and combined (``server.device``)."""
        server = cfg.server
        self.optimizer = ServerOptimizer(server.optimizer, server.lr, server.momentum, server.beta1,
                                         server.beta2, server.adaptivity)
        self.config_record = ConfigRecord(cfg.to_flat())
        """The run config every message carries (one record: Flower checks every value of a new one)."""
        self.needs = wire.TrainCall(
            needs_losses_before=any(w.needs_losses for w in self.plan.weightings().values()),
            task_parts=needs_task_parts(server.plan))
        """What every training reply must carry (the round values are filled in per message)."""
        self.state: dict[str, torch.Tensor] = {}
        """The global federated state (what ``arrays`` carries)."""
        self.arrays = ArrayRecord()
        self.first_round = 1
        self.last_stats: RoundStats | None = None
        self.tally = RunTally()
        self.participation = Participation()
        """Per client, the rounds it trained in (``participation.csv``; in the checkpoint)."""
        self.views = METHODS.get(cfg.personalization.method).views
        """The views evaluation replies may report: the method's (a one-model method's ``test-global`` is rejected)."""
        self.keeps_state = METHODS.get(cfg.personalization.method).keeps_state
        """The personalization method keeps state of its own between rounds (checked with the heads)."""
        self.heads = HeadsLedger(cfg.model.heads != "global" or self.keeps_state, cfg.client.head_store == "disk")
        """The heads each client must start from (named in every call; a client with others refuses)."""
        self.errors = ClientErrors(recorder.run_dir / CLIENT_ERRORS, progress.notice)
        """The run's client errors: each distinct one once on the console, all in ``client-errors.log``."""

    # -- the round loop -------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        """Run rounds :attr:`first_round` .. ``run.rounds`` from ``initial_arrays``."""
        log(INFO, "Starting %s, rounds %d to %d:", type(self).__name__, self.first_round, self.cfg.run.rounds)
        log_settings(self.cfg, len(self.roster.clients))
        self.arrays, self.state = initial_arrays, initial_arrays.to_torch_state_dict()
        with self.progress.rounds(self.first_round - 1):
            for server_round in range(self.first_round, self.cfg.run.rounds + 1):
                self.run_round(grid, server_round)
        self.recorder.record_participation(self.participation.rows(range(self.cfg.data.num_clients)))

    def run_round(self, grid: Grid, server_round: int) -> None:
        """Train (and evaluate, when due) one round; record it, show it, checkpoint it."""
        log(INFO, "[ROUND %s/%s]", server_round, self.cfg.run.rounds)
        train = self.train_round(grid, server_round)
        evaluation, stats = None, None
        if is_evaluation_round(self.cfg.run, server_round):
            evaluation, stats = self.evaluate_round(grid, server_round)
        row = round_row(server_round, train, evaluation)
        if stats is not None:
            self.progress.round(stats, self.recorder.elapsed, row)
        self.recorder.log_round(row, stats)
        self.progress.advance(server_round, self.recorder.elapsed, row, evaluated=stats is not None)
        if is_checkpoint_round(self.cfg.run, server_round):
            self.recorder.save_checkpoint(server_round, self.checkpoint_state(server_round))

    def train_round(self, grid: Grid, server_round: int) -> TrainRecord:
        """Ask clients, retry while too few replies are usable, then aggregate or skip."""
        server, collected = self.cfg.server, Collected()
        self.tally.train_rounds += 1
        self.roster.follow_reconnections(grid)
        self.exchange(grid, server_round, self.roster.sample_train(server.fraction_train, server.min_train_clients),
                      collected)
        accepted = screen_norms(collected.formed, server.norm_screening, self.local_steps(collected.formed))
        while pool := retry_pool(server, collected, len(accepted), list(self.roster.clients)):
            collected.retries += 1
            clients = self.roster.sample_train(server.fraction_train, server.min_train_clients, pool)
            log(INFO, "round %d: %s < server.min-replies = %d; retry %d with %s",
                server_round, counted(len(accepted), "usable reply", "usable replies"), server.min_replies,
                collected.retries, counted(len(clients), "other client"))
            self.exchange(grid, server_round, clients, collected)
            accepted = screen_norms(collected.formed, server.norm_screening, self.local_steps(collected.formed))
        self.errors.flush()  # the stage's errors, every attempt's, on the console
        self.heads.commit()
        # trained: every accepted reply, screened or not, aggregated or not, and every reply
        # rejected for its update alone (the client trained and saved its personal state all the same)
        self.participation.note_trained(server_round, set(collected.formed) | self.heads.saved())
        # every accepted reply's rows: the heads' in/out chain runs through them
        self.recorder.log_metrics([row for c in sorted(collected.formed)
                                   for row in train_metric_rows(server_round, collected.formed[c])])
        screened = count_screened(server_round, list(collected.formed), accepted, server.norm_screening)
        record = TrainRecord(collected.sampled, len(collected.formed) + collected.rejected, collected.failures,
                             collected.rejected + screened, collected.retries, len(accepted), skipped=0)
        if len(accepted) < server.min_replies:
            return self.skip(server_round, record, collected.reasons)
        aggregated = self.aggregate_train(server_round, [collected.formed[c] for c in accepted])
        if isinstance(aggregated, str):  # a combined update that is not finite: skip the round
            return self.skip(server_round, record, [aggregated], why=aggregated)
        self.participation.note_aggregated(accepted)
        return dataclasses.replace(record, fallbacks=aggregated[0], train_loss=aggregated[1])

    def local_steps(self, clients: Iterable[int]) -> dict[int, int] | None:
        """Each client's local steps per epoch, ``⌈n_k / client.batch-size⌉`` for its training
        split of ``n_k`` examples, where this server knows the splits (``server.max-examples =
        0``); ``None`` where it does not (a client's own count is not trusted for the bound)."""
        if self.cfg.server.max_examples:
            return None
        batch = self.cfg.client.batch_size
        return {c: max(1, math.ceil(self.known(c).max_train / batch)) for c in clients}

    def configure_train(self, server_round: int, clients: list[int], attempt: int) -> list[Message]:
        """The training messages of one attempt: the global model and what to reply."""
        call = dataclasses.replace(self.needs, server_round=server_round, attempt=attempt)
        return build_messages(self.arrays, self.config_record, self.roster, clients, MessageType.TRAIN, call,
                              lambda c: self.heads.expected(c, training=True))

    def exchange(self, grid: Grid, server_round: int, clients: list[int], collected: Collected) -> None:
        """Send one training attempt and read its replies into ``collected``."""
        messages = self.configure_train(server_round, clients, collected.retries)
        replies, outcomes = send_and_read(grid, messages, self.cfg.server.timeout, lambda: train_reply_reader(
            messages, self.state, self.needs.task_parts, set(collected.formed), self.known))
        collected.sampled += len(clients)
        self.heads.observe(server_round, clients, outcomes)
        missing = unanswered(messages, replies, outcomes)
        collected.failures += self.count_failures(server_round, "training", outcomes, missing, collected)
        self.recorder.log_placement(placement_rows(server_round, "train", messages, replies, outcomes))
        rejected = log_rejections(server_round, "training", outcomes)
        collected.rejected += len(rejected)
        for o in rejected:  # the reason a round ends up skipped names its clients
            collected.note_failure(f"client {o.client if o.client is not None else '?'}'s update rejected: {o.problem}")
        collected.formed.update({o.client: o for o in outcomes if isinstance(o, Accepted)})

    def count_failures(self, server_round: int, stage: str, outcomes: list, missing: int,
                       collected: Collected | None = None) -> int:
        """Report (:attr:`errors`) and count the errors among ``outcomes`` and the ``missing`` replies."""
        failures = client_failures(outcomes, missing, self.cfg.server.timeout)
        self.errors.report(server_round, stage, failures)
        for client, reason in failures:
            said = reason if client is None else f"client {client}: {reason}"
            self.tally.note_error(said)
            if collected is not None:
                collected.note_failure(said)
        return sum(isinstance(o, Failed) for o in outcomes) + max(missing, 0)

    def aggregate_train(self, server_round: int, accepted: list[Accepted]) -> tuple[int, float] | str:
        """Weight the accepted updates, take the server step; return the fallbacks and the loss,
        or why the round must be skipped (a combined update or a new model that is not finite).
        A skipped round leaves the server's weightings and optimizer as they were before it."""
        before = self.server_state(server_round)
        rows = [row for reply in accepted for row in plan_rows(reply, self.device)]
        server = self.cfg.server
        try:
            with seeded_global_rng(Stream.SERVER_ROUND, self.cfg.run.seed, server_round, exclusive=True):
                result = self.plan(rows)  # a plugin rule's torch.rand: the same draws in every run with the seed
        except (NonFiniteResult, NonFiniteObjectives) as exc:  # numbers, not code: the round is skipped
            self.load_server_state(before)
            return f"{one_line(exc, RULE_ERROR_LIMIT)} (plan '{server.plan}', {self.failed_rule()})"
        except Exception as exc:  # noqa: BLE001 - a rule's own failure (a plugin's): one line, the run stops
            raise RuleFailed(f"round {server_round}: plan '{server.plan}' with {self.failed_rule()} "
                             f"failed: {type(exc).__name__}: {one_line(exc, RULE_ERROR_LIMIT)}") from exc
        for fallback in result.fallbacks:
            log(WARNING, "round %d: weighting fallback %s", server_round, fallback)
        keys = list(self.state)
        new = stepped(flatten_state(self.state, keys), result.direction, self.optimizer)
        problem = new if isinstance(new, str) else unfit_problem(new, self.state, keys)
        if problem:  # not finite, or outside a tensor's dtype (an integer buffer would wrap around)
            self.load_server_state(before)
            return f"{problem} (plan '{self.cfg.server.plan}', weighting '{self.cfg.server.weighting}')"
        self.recorder.log_metrics(weight_rows(server_round, result))
        self.tally.failed_streak, self.tally.aggregated_rounds = 0, self.tally.aggregated_rounds + 1
        self.state = unflatten_state(new, self.state, keys)
        self.arrays = ArrayRecord(self.state)
        return len(result.fallbacks), train_loss(accepted)

    def failed_rule(self) -> str:
        """The rule of the plan's level that raised, as its ``[server]`` key names it
        (``weighting 'fedavg'``, ``task-weighting 'mgda'``: :attr:`fedmtl.aggregation.plans.AggregationPlan.level`)."""
        key = LEVEL_KEYS[self.plan.level]
        return f"{key} '{getattr(self.cfg.server, key.replace('-', '_'))}'"

    def server_state(self, server_round: int) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
        """Copies of the server optimizer's and the weightings' states (what aggregating changes)."""
        return copy.deepcopy(self.optimizer.state_dict()), self.weighting_states(server_round)

    def weighting_states(self, server_round: int) -> dict[str, dict[str, object]]:
        """Copies of the weightings' states, by level (:meth:`fedmtl.aggregation.rule.Rule.state_dict`).

        Raises
        ------
        RuleFailed
            A rule's state cannot be copied (a plugin's rule that keeps a lock or a file in a
            state attribute): one line naming its ``[server]`` key, as for a rule that raises.
        """
        try:
            return self.plan.state_dict()
        except Exception as exc:  # noqa: BLE001 - a plugin's rule: whatever it raises, in one line
            level = self.plan.level
            raise RuleFailed(f"round {server_round}: server.{LEVEL_KEYS[level]} = "
                             f"'{self.plan.weightings()[level].name}' failed: "
                             f"{type(exc).__name__}: {one_line(exc, RULE_ERROR_LIMIT)}") from exc

    def load_server_state(self, state: tuple[dict[str, object], dict[str, dict[str, object]]]) -> None:
        """Restore :meth:`server_state` output."""
        optimizer, weightings = state
        self.optimizer.load_state_dict(optimizer)
        self.plan.load_state_dict(weightings)

    def skip(self, server_round: int, record: TrainRecord, reasons: list[str], why: str = "") -> TrainRecord:
        """Leave the model as it is, or stop the run after ``server.max-failed-rounds`` skips in a
        row; the round's record says ``skipped = 1`` and ``aggregated = 0`` (no update reached the
        model; its usable replies are ``replies - rejected``)."""
        server = self.cfg.server
        self.tally.failed_streak += 1
        why = why or (f"{counted(record.aggregated, 'usable reply', 'usable replies')} < server.min-replies = "
                      f"{server.min_replies} "
                      f"({record.failures} failed, {record.rejected} rejected)")
        record = dataclasses.replace(record, aggregated=0, skipped=1)
        log(WARNING, "round %d skipped: %s; the model is unchanged", server_round, why)
        self.tally.last_skip = why
        if server.max_failed_rounds and self.tally.failed_streak >= server.max_failed_rounds:
            self.recorder.log_round(round_row(server_round, record, None), None)
            raise ClientsFailed.in_a_row(server_round, self.tally.failed_streak, server.max_failed_rounds, why, reasons)
        return record

    def evaluate_round(self, grid: Grid, server_round: int) -> tuple[EvaluateRecord, RoundStats | None]:
        """Ask sampled clients to evaluate their personalized model (and the global one, for a
        method that has both); record their metrics."""
        self.roster.follow_reconnections(grid)
        clients = self.roster.sample(self.cfg.server.fraction_evaluate, 1)
        messages = build_messages(self.arrays, self.config_record, self.roster, clients, MessageType.EVALUATE,
                                  wire.Call(server_round), lambda c: self.heads.expected(c, training=False))
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.server.timeout))
        outcomes = read_evaluate_replies(messages, replies, self.known, self.views)
        failures = self.count_failures(server_round, "evaluation", outcomes, unanswered(messages, replies, outcomes))
        self.errors.flush()
        self.recorder.log_placement(placement_rows(server_round, "evaluate", messages, replies, outcomes))
        rejected = log_rejections(server_round, "evaluation", outcomes)
        failures += len(rejected)
        self.tally.evaluate_rounds += 1
        for o in rejected:
            self.tally.note_rejection(f"client {o.client}: {o.problem}" if o.client is not None else o.problem)
        evaluated = {o.client: o for o in outcomes if isinstance(o, Evaluated)}
        if not evaluated:
            return EvaluateRecord(failures, 0), None
        self.last_stats = self.recorder.record_evaluation(
            server_round, {c: o.per_task for c, o in evaluated.items()},
            {c: o.num_examples for c, o in evaluated.items()},
            {c: o.global_per_task for c, o in evaluated.items() if o.global_per_task},
            {c: (self.participation.trained.get(c, 0), self.participation.last_round.get(c)) for c in evaluated})
        return EvaluateRecord(failures, len(evaluated)), self.last_stats

    def check_progress(self) -> None:
        """Raise :class:`ClientsFailed` when this process ran rounds but none moved the model,
        when it resumed a run that has no round left and none of whose rounds moved it (it
        would otherwise end as a finished run, its failure forgotten), or when the run has no
        accepted evaluation at all (it would end with no results: every evaluation reply
        rejected, e.g. by a task kind or method that reports what it does not declare)."""
        # the whole run's rounds count: a resume whose rounds were all skipped after earlier
        # rounds moved the model ends as the uninterrupted run does (participation is checkpointed)
        if self.tally.train_rounds and not self.tally.aggregated_rounds and not any(
                self.participation.aggregated.values()):
            raise ClientsFailed.none_aggregated(self.tally, self.cfg.server.min_replies)
        if not self.tally.train_rounds and not any(self.participation.aggregated.values()):
            raise ClientsFailed.none_left(self.cfg.run.rounds)
        if self.last_stats is None:
            raise ClientsFailed.none_evaluated(self.tally)

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, server_round: int) -> dict[str, object]:
        """What a resumed run needs besides the heads and the run folder: the global model, the
        server optimizer, the weightings, the sampling RNG, the last evaluation's statistics, the
        heads each client must start from (:meth:`fedmtl.server.heads.HeadsLedger.state_dict`),
        the clients' participation (:meth:`fedmtl.server.rounds.Participation.state_dict`) and
        the rounds skipped in a row up to now (``server.max-failed-rounds``)."""
        return {
            "backbone": self.state,
            "server_optimizer": self.optimizer.state_dict(),
            "weightings": self.weighting_states(server_round),
            "rng": self.roster.rng.bit_generator.state,
            "last_stats": dataclasses.asdict(self.last_stats) if self.last_stats else None,
            "heads": self.heads.state_dict(),
            "heads-fingerprints": KEPT_FINGERPRINTS,
            "participation": self.participation.state_dict(),
            "failed-streak": self.tally.failed_streak,
        }

    def restore(self, checkpoint: dict) -> None:
        """Continue after the checkpointed round (see :meth:`checkpoint_state`)."""
        self.first_round = int(checkpoint["round"]) + 1
        self.errors.resume_after(int(checkpoint["round"]))  # the rounds after it are redone: their errors too
        self.optimizer.load_state_dict(checkpoint["server_optimizer"])
        self.plan.load_state_dict(checkpoint["weightings"])
        self.roster.rng.bit_generator.state = checkpoint["rng"]
        self.state = dict(checkpoint["backbone"])
        heads = checkpoint.get("heads")
        if heads is not None and self.keeps_state and checkpoint.get("heads-fingerprints") != KEPT_FINGERPRINTS:
            # an older fedmtl's fingerprints are of the heads alone, not of the method's state too:
            # not comparable; each client is checked again from its next readable training reply
            heads = dict.fromkeys(heads)
        self.heads.load_state_dict(heads)
        # rounds skipped in a row up to the checkpoint (server.max-failed-rounds counts on from
        # them, as in the uninterrupted run); a checkpoint written before it was kept: 0
        self.tally.failed_streak = int(checkpoint.get("failed-streak", 0))
        recorded = checkpoint.get("participation")
        self.participation.load_state_dict(
            recorded, None if recorded is not None else aggregated_training(self.recorder.run_dir))
        if checkpoint.get("last_stats"):
            self.last_stats = RoundStats.from_dict(checkpoint["last_stats"])
