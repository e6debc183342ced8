"""The fedmtl strategy: Flower's message-based ``Strategy`` over fedmtl's aggregation.

Each round:

1. ``configure_train`` samples clients with the strategy's own seeded RNG and sends them
   the global backbone and the round's config (the resolved run config travels with it);
2. ``aggregate_train`` turns every valid reply's backbone update (or its per-task parts)
   into update rows, combines them with the configured aggregation plan and weightings
   (:mod:`fedmtl.aggregation.plans`), and moves the backbone with the server optimizer;
3. ``configure_evaluate`` asks clients to evaluate their personalized model (global
   backbone + own heads) on their local test split; ``aggregate_evaluate`` records the
   per-client, per-task metrics and the across-client statistics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType, log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmtl.aggregation.plans import WHOLE, Row, make_plan, needs_task_parts, uses_task_weighting
from fedmtl.aggregation.server_optimizer import ServerOptimizer
from fedmtl.config import ExperimentConfig
from fedmtl.progress import Progress
from fedmtl.results import CLIENT_LEVEL, RoundStats, RunRecorder
from fedmtl.screening import metrics_problem, norm_outliers, update_problem
from fedmtl.training.setup import server_device
from fedmtl.server.discovery import ClientDirectory, shared_supernodes


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


def parse_metrics(record: MetricRecord | dict[str, float], prefix: str) -> dict[str, dict[str, float]]:
    """``{"test.left.accuracy": v}`` -> ``{"left": {"accuracy": v}}`` for one prefix."""
    out: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == prefix:
            out.setdefault(parts[1], {})[parts[2]] = float(value)
    return out


def client_error_message(reason: str) -> str:
    """The client's own exception message out of the engine's wrapped error text."""
    marker = "Message: "
    if marker in reason:
        reason = reason[reason.rindex(marker) + len(marker) :]
    return reason.strip().removesuffix("'>").strip()


class ClientsFailed(RuntimeError):
    """Too many rounds in a row had too few valid replies (``server.max-failed-rounds``)."""


class FedMTLStrategy(Strategy):
    """Federated multi-task strategy with personalized heads and pluggable weightings.

    Parameters
    ----------
    cfg : ExperimentConfig
        The resolved run config (sent to clients with every message).
    clients : dict[int, int]
        Client (partition) id -> Flower node id, from client discovery.
    recorder : RunRecorder
        Writes the run folder.
    progress : Progress
        Live terminal display.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        directory: ClientDirectory,
        recorder: RunRecorder,
        progress: Progress,
    ) -> None:
        self.cfg = cfg
        self.directory = directory
        self.shared = shared_supernodes(cfg)
        """SuperNodes taking turns playing the clients (0: each client has its own)."""
        self.clients: dict[int, int] = {}
        """Client id -> its node id (the node of its first turn with shared SuperNodes)."""
        self._map_clients()
        self.recorder = recorder
        self.progress = progress
        self.plan = make_plan(cfg.server, cfg.client.lr)
        self.device = server_device(cfg.server.device)
        """Where update rows are stacked and combined (``server.device``)."""
        self.optimizer = ServerOptimizer(
            cfg.server.optimizer, cfg.server.lr, cfg.server.momentum,
            cfg.server.beta1, cfg.server.beta2, cfg.server.adaptivity,
        )
        self.rng = np.random.default_rng([cfg.run.seed, 0x5A3])
        self.client_config = cfg.to_flat()
        self.config_record = ConfigRecord(self.client_config)
        """The run config every message carries (``"config"``); per-message values travel in
        ``"call"``: server-round, server-attempt and client-id."""
        self.global_state: dict[str, torch.Tensor] = {}
        self.keys: list[str] = []
        self.round_row: dict[str, float | int] = {}
        self.last_stats: RoundStats | None = None
        self.round_offset = 0
        """Rounds done before this process started (a resumed run)."""
        self.current_state: dict[str, torch.Tensor] = {}
        self.sent: list[int] = []
        self.failures, self.rejected = 0, 0
        self.failure_reasons: list[str] = []
        """Errors of the current round's clients (the first few)."""
        self.failed_streak = 0
        """Consecutive rounds skipped for too few valid replies."""
        self.aggregated_rounds = 0
        """Rounds of this process that moved the model."""
        self.sent_evaluate: list[int] = []
        self.train_rounds = 0
        """Training rounds of this process."""
        self.first_failure = ""
        """The first client error of this process."""
        self.evaluation_reasons: list[str] = []

    # -- helpers ------------------------------------------------------------------------
    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├── clients: %d, train fraction %.2f, evaluate fraction %.2f",
            len(self.clients), self.cfg.server.fraction_train, self.cfg.server.fraction_evaluate)
        server = self.cfg.server
        levels = f"'{server.weighting}'"
        if uses_task_weighting(server.plan):
            levels += f" across clients, '{server.task_weighting}' across tasks"
        log(INFO, "\t└── plan '%s', server weighting %s, optimizer %s (lr %g), client weighting '%s'",
            server.plan, levels, server.optimizer, server.lr, self.cfg.client.weighting)

    def follow_reconnections(self, grid: Grid) -> None:
        """Map clients whose SuperNode reconnected (a new node id) to their new node."""
        for client in self.directory.update(grid, self.cfg.server.connect_timeout, strict=False):
            log(INFO, "client %d reconnected: now served by node %d", client, self.directory.clients[client])
        self._map_clients()

    def _map_clients(self) -> None:
        nodes = dict(sorted(self.directory.clients.items()))
        if self.shared:
            self.nodes = [nodes[slot] for slot in range(self.shared)]
            self.clients = {c: self.nodes[c % self.shared] for c in range(self.cfg.data.num_clients)}
        else:
            self.nodes = list(nodes.values())
            self.clients = nodes

    def sample(self, fraction: float, minimum: int, pool: list[int] | None = None) -> list[int]:
        """Sample client ids (from ``pool``, default all) without replacement with the
        strategy's RNG."""
        ids = list(self.clients) if pool is None else list(pool)
        k = min(len(ids), max(minimum, math.ceil(fraction * len(ids))))
        if k == len(ids):
            return ids
        return sorted(int(i) for i in self.rng.choice(ids, size=k, replace=False))

    def _messages(
        self, server_round: int, arrays: ArrayRecord, client_ids: list[int], kind: str, attempt: int = 0
    ) -> list[Message]:
        messages = []
        for i, client in enumerate(client_ids):
            # with shared SuperNodes, the i-th message of an exchange goes to the i-th node
            node = self.nodes[i % self.shared] if self.shared else self.clients[client]
            call = ConfigRecord({"server-round": server_round, "server-attempt": attempt, "client-id": client})
            # the run config is one record shared by every message (built once: Flower checks
            # every value of a new record)
            content = RecordDict({"arrays": arrays, "config": self.config_record, "call": call})
            messages.append(Message(content=content, message_type=kind, dst_node_id=node))
        return messages

    def _count_failures(self, replies: list[Message], sent: list[int], server_round: int, stage: str) -> list[Message]:
        """The replies without errors; errors and missing replies are counted and logged."""
        ok = []
        for reply in replies:
            if reply.has_error():
                self._note_failure(client_error_message(reply.error.reason))
                log(WARNING, "round %d %s: a client failed: %s", server_round, stage, self.failure_reasons[-1])
            else:
                ok.append(reply)
        missing = len(sent) - len(replies)
        if missing > 0:
            self._note_failure(f"{missing} client(s) sent no reply within server.timeout = {self.cfg.server.timeout:g} s")
            log(WARNING, "round %d %s: %s", server_round, stage, self.failure_reasons[-1])
        self.failures += len(replies) - len(ok) + max(missing, 0)
        return ok

    def _log_placement(self, replies: list[Message], server_round: int, stage: str) -> None:
        """Record where each reply was computed (``placement.csv``)."""
        rows = []
        for reply in replies:
            if "placement" in reply.content.config_records and "metrics" in reply.content.metric_records:
                where = reply.content["placement"]
                rows.append((server_round, int(reply.content["metrics"].get("partition-id", -1)), stage,
                             str(where.get("host", "")), str(where.get("node", "")), str(where.get("device", ""))))
        self.recorder.log_placement(sorted(rows))

    def _note_failure(self, reason: str) -> None:
        if len(self.failure_reasons) < 20:
            self.failure_reasons.append(reason)
        self.first_failure = self.first_failure or reason

    def _well_formed(
        self, replies: list[Message], sent: list[int], server_round: int, formed: dict[int, dict[str, torch.Tensor]],
        meta: dict[int, dict[str, float]],
    ) -> None:
        """Add each usable training reply's update rows to ``formed`` (client -> {task or
        WHOLE: flat vector}) and its metrics to ``meta``; count and log the rejected ones."""
        parts = needs_task_parts(self.cfg.server.plan)
        ok = self._count_failures(replies, sent, server_round, "training")
        self._log_placement(ok, server_round, "train")
        for reply in ok:
            problem, client, rows, values = self._read_update(reply, sent, formed, parts)
            if problem:
                self.rejected += 1
                who = f"client {client}" if client is not None else "a client"
                log(WARNING, "round %d: rejected the update of %s: %s", server_round, who, problem)
                continue
            formed[client], meta[client] = rows, values
        return None

    def _read_update(
        self, reply: Message, sent: list[int], formed: dict[int, object], parts: bool
    ) -> tuple[str, int | None, dict[str, torch.Tensor], dict[str, float]]:
        """``(problem, client, rows, metrics)`` of one reply; ``problem`` is ``""`` when usable."""
        content = reply.content
        if "metrics" not in content.metric_records:
            return "no metrics", None, {}, {}
        values = {k: float(v) for k, v in content["metrics"].items()}
        client = int(values.get("partition-id", -1))
        if client not in sent:
            return f"partition-id {client} was not asked this round", None, {}, {}
        if client in formed:
            return "a second reply from the same client", client, {}, {}
        problem = metrics_problem(values)
        if problem:
            return problem, client, {}, {}
        keys = [f"part.{t}" for t in sorted(parse_metrics(content["metrics"], "train"))] if parts else ["update"]
        rows = {}
        for key in keys:
            if key not in content.array_records:
                return f"no '{key}' arrays", client, {}, {}
            state = content[key].to_torch_state_dict()
            problem = update_problem(state, self.global_state)
            if problem:
                return f"{key}: {problem}", client, {}, {}
            rows[key.removeprefix("part.") if parts else WHOLE] = flatten_state(state, self.keys)
        return "", client, rows, values

    def _screen_norms(self, formed: dict[int, dict[str, torch.Tensor]]) -> list[int]:
        """The clients whose update passes ``server.norm-screening`` (all when it is off)."""
        clients = sorted(formed)
        norms = [float(torch.linalg.vector_norm(sum(formed[c].values()))) for c in clients]
        outlier = norm_outliers(norms, self.cfg.server.norm_screening)
        return [c for c, out in zip(clients, outlier, strict=True) if not out]

    # -- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send them the global backbone and the config."""
        server_round += self.round_offset
        self.grid, self.arrays = grid, arrays
        self.global_state = arrays.to_torch_state_dict()
        self.keys = list(self.global_state)
        self.follow_reconnections(grid)
        self.sent = self.sample(self.cfg.server.fraction_train, self.cfg.server.min_train_clients)
        self.round_row = {"round": server_round, "sampled": len(self.sent)}
        self.failures, self.rejected, self.failure_reasons = 0, 0, []
        return self._messages(server_round, arrays, self.sent, MessageType.TRAIN)

    def _gather(self, server_round: int, replies: Iterable[Message]) -> tuple[list[int], dict, dict]:
        """Screen the round's replies, retrying with other clients while too few are usable
        (``server.on-too-few = "retry"``); return the accepted clients, their rows and metrics."""
        server = self.cfg.server
        formed: dict[int, dict[str, torch.Tensor]] = {}
        meta: dict[int, dict[str, float]] = {}
        self._well_formed(list(replies), self.sent, server_round, formed, meta)
        accepted, attempt = self._screen_norms(formed), 0
        while len(accepted) < server.min_replies and server.on_too_few == "retry" and attempt < server.max_retries:
            pool = [c for c in self.clients if c not in formed]
            if not pool:
                break
            attempt += 1
            sent = self.sample(server.fraction_train, server.min_train_clients, pool)
            log(INFO, "round %d: %d usable replies < server.min-replies = %d; retry %d with %d other clients",
                server_round, len(accepted), server.min_replies, attempt, len(sent))
            self.round_row["sampled"] += len(sent)
            messages = self._messages(server_round, self.arrays, sent, MessageType.TRAIN, attempt)
            self._well_formed(list(self.grid.send_and_receive(messages, timeout=server.timeout)),
                              sent, server_round, formed, meta)
            accepted = self._screen_norms(formed)
        screened = len(formed) - len(accepted)
        if screened:
            log(WARNING, "round %d: norm screening rejected %d update(s) longer than %g × the median",
                server_round, screened, server.norm_screening)
        self.round_row.update({
            "replies": len(formed) + self.rejected, "failures": self.failures,
            "rejected": self.rejected + screened, "retries": attempt,
        })
        return accepted, formed, meta

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the clients' backbone updates, weight them and take the server step."""
        server_round += self.round_offset
        self.train_rounds += 1
        accepted, formed, meta = self._gather(server_round, replies)
        self.round_row["aggregated"] = len(accepted)
        if len(accepted) < self.cfg.server.min_replies:
            return self._skip(server_round, len(accepted))
        self.failed_streak = 0
        self.aggregated_rounds += 1
        self.round_row["skipped"] = 0
        rows, metric_rows, losses, counts = [], [], [], []
        for client in accepted:
            metrics = meta[client]
            count = metrics["num-examples"]
            task_values = parse_metrics(metrics, "train")
            task_loss = {t: v.get("loss-before", v["loss"]) for t, v in task_values.items()}
            for task, vector in formed[client].items():
                loss = float(np.mean(list(task_loss.values()))) if task == WHOLE else task_loss[task]
                rows.append(Row(client, task, vector.to(self.device), loss, count))
            losses.append(float(np.mean([v["loss"] for v in task_values.values()])))
            counts.append(count)
            for task, values in task_values.items():
                metric_rows += [(server_round, client, task, "train", m, v) for m, v in values.items()]
            for key in ("num-examples", "heads-fingerprint-in", "heads-fingerprint-out"):
                metric_rows.append((server_round, client, CLIENT_LEVEL, "train", key, metrics[key]))
        result = self.plan(rows)
        for (client, task), w in sorted(result.row_weights.items()):
            level = CLIENT_LEVEL if task == WHOLE else task
            metric_rows.append((server_round, client, level, "train", "aggregation-weight", w))
        self.recorder.log_metrics(metric_rows)
        self.round_row["fallbacks"] = len(result.fallbacks)
        for fallback in result.fallbacks:
            log(WARNING, "round %d: weighting fallback %s", server_round, fallback)
        if not torch.isfinite(result.direction).all():
            raise FloatingPointError(
                f"round {server_round}: the combined update is not finite "
                f"(plan '{self.cfg.server.plan}', weighting '{self.cfg.server.weighting}')"
            )
        step = self.optimizer.step(result.direction.to("cpu", torch.float32))
        new_vector = flatten_state(self.global_state, self.keys) + step
        new_state = unflatten_state(new_vector, self.global_state, self.keys)
        self.current_state = new_state
        self.round_row["train_loss"] = float(np.average(losses, weights=counts))
        return ArrayRecord(new_state), MetricRecord({"train-loss": self.round_row["train_loss"]})

    def _skip(self, server_round: int, usable: int) -> tuple[None, None]:
        """Leave the model as it is for a round with too few usable replies, or stop the run
        after ``server.max-failed-rounds`` such rounds in a row."""
        self.round_row["skipped"] = 1
        self.failed_streak += 1
        server = self.cfg.server
        why = (f"{usable} usable replies < server.min-replies = {server.min_replies} "
               f"({self.failures} failed, {self.round_row['rejected']} rejected)")
        log(WARNING, "round %d skipped: %s; the model is unchanged", server_round, why)
        if server.max_failed_rounds and self.failed_streak >= server.max_failed_rounds:
            self.recorder.log_round(dict(self.round_row), None)
            raise ClientsFailed(
                f"round {server_round}: {self.failed_streak} rounds in a row without enough valid replies "
                f"(server.max-failed-rounds = {server.max_failed_rounds}); last round: {why}"
                + (f"; first error: {self.failure_reasons[0]}" if self.failure_reasons else "")
            )
        self.current_state = self.current_state or dict(self.global_state)
        return None, None

    def check_progress(self) -> None:
        """Raise :class:`ClientsFailed` when this process ran rounds but none moved the model."""
        if self.train_rounds and not self.aggregated_rounds:
            raise ClientsFailed(
                f"none of the {self.train_rounds} round(s) had server.min-replies = "
                f"{self.cfg.server.min_replies} valid replies"
                + (f"; first error: {self.first_failure}" if self.first_failure else "")
            )

    def aggregation_state(self) -> dict[str, object]:
        """Server optimizer and weighting states (for checkpoints)."""
        return {
            "server_optimizer": self.optimizer.state_dict(),
            "weightings": {level: w.state_dict() for level, w in self.plan.weightings().items()},
        }

    # -- checkpoints ----------------------------------------------------------------------
    def is_checkpoint_round(self, server_round: int) -> bool:
        """Checkpoint every ``run.checkpoint-every`` rounds and at the last round."""
        return server_round % self.cfg.run.checkpoint_every == 0 or server_round == self.cfg.run.rounds

    def checkpoint_state(self) -> dict[str, object]:
        """Everything a resumed run needs besides the clients' heads and the run folder's files:
        the global model, the server optimizer, the weightings, the sampling RNG, the last
        evaluation's statistics."""
        return {
            "backbone": self.current_state,
            **self.aggregation_state(),
            "rng": self.rng.bit_generator.state,
            "last_stats": dataclasses.asdict(self.last_stats) if self.last_stats else None,
        }

    def restore(self, checkpoint: dict[str, object]) -> None:
        """Continue after the checkpointed round (see :meth:`checkpoint_state`)."""
        self.round_offset = int(checkpoint["round"])
        self.optimizer.load_state_dict(checkpoint["server_optimizer"])
        for level, weighting in self.plan.weightings().items():
            weighting.load_state_dict(checkpoint["weightings"][level])
        self.rng.bit_generator.state = checkpoint["rng"]
        self.current_state = dict(checkpoint["backbone"])
        if checkpoint.get("last_stats"):
            self.last_stats = RoundStats(**checkpoint["last_stats"])

    # -- evaluation ---------------------------------------------------------------------
    def is_evaluation_round(self, server_round: int) -> bool:
        """Evaluate every ``run.evaluate-every`` rounds and at the last round."""
        return server_round % self.cfg.run.evaluate_every == 0 or server_round == self.cfg.run.rounds

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask sampled clients to evaluate their personalized model."""
        server_round += self.round_offset
        self.current_state = self.current_state or arrays.to_torch_state_dict()
        if not self.is_evaluation_round(server_round):
            return []
        self.follow_reconnections(grid)
        self.sent_evaluate = self.sample(self.cfg.server.fraction_evaluate, 1)
        return self._messages(server_round, arrays, self.sent_evaluate, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record per-client metrics and the round's across-client statistics; checkpoint."""
        server_round += self.round_offset
        replies = list(replies)
        stats, per_client, counts = None, {}, {}
        if self.is_evaluation_round(server_round):
            train_failures, train_reasons = self.failures, self.failure_reasons
            self.failures, self.failure_reasons = 0, []
            ok = self._count_failures(replies, self.sent_evaluate, server_round, "evaluation")
            self._log_placement(ok, server_round, "evaluate")
            for reply in ok:
                metrics = reply.content["metrics"]
                client = int(metrics["partition-id"])
                per_client[client] = parse_metrics(metrics, "test")
                counts[client] = int(metrics["num-examples"])
            self.round_row["evaluate_failures"] = self.failures
            self.evaluation_reasons = self.failure_reasons
            self.failures, self.failure_reasons = train_failures, train_reasons
        if per_client:
            stats = self.recorder.record_evaluation(server_round, per_client, counts)
            self.last_stats = stats
            self.round_row["evaluated"] = len(per_client)
            self.progress.round(stats, self.recorder.elapsed, self.round_row)
        self.recorder.log_round(dict(self.round_row), stats)
        if self.is_checkpoint_round(server_round):
            self.recorder.save_checkpoint(server_round, self.checkpoint_state())
        if stats is None:
            return None
        return MetricRecord({f"{t}.{stats.metric[t]}.mean": v["mean"] for t, v in stats.stats.items()})
