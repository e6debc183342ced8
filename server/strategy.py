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
from server.discovery import ClientDirectory


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


def parse_metrics(record: MetricRecord, prefix: str) -> dict[str, dict[str, float]]:
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
    """Every client of a round failed."""


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
        self.clients = dict(sorted(directory.clients.items()))
        self.recorder = recorder
        self.progress = progress
        self.plan = make_plan(cfg.server, cfg.client.lr)
        self.optimizer = ServerOptimizer(
            cfg.server.optimizer, cfg.server.lr, cfg.server.momentum,
            cfg.server.beta1, cfg.server.beta2, cfg.server.adaptivity,
        )
        self.rng = np.random.default_rng([cfg.run.seed, 0x5A3])
        self.client_config = cfg.to_flat()
        self.global_state: dict[str, torch.Tensor] = {}
        self.keys: list[str] = []
        self.round_row: dict[str, float | int] = {}
        self.last_stats: RoundStats | None = None
        self.round_offset = 0
        """Rounds done before this process started (a resumed run)."""
        self.current_state: dict[str, torch.Tensor] = {}

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
        self.clients = dict(sorted(self.directory.clients.items()))

    def sample(self, fraction: float, minimum: int) -> list[int]:
        """Sample client ids without replacement with the strategy's RNG."""
        ids = list(self.clients)
        k = min(len(ids), max(minimum, math.ceil(fraction * len(ids))))
        if k == len(ids):
            return ids
        return sorted(int(i) for i in self.rng.choice(ids, size=k, replace=False))

    def _messages(
        self, server_round: int, arrays: ArrayRecord, client_ids: list[int], kind: str
    ) -> list[Message]:
        config = ConfigRecord({**self.client_config, "server-round": server_round})
        content = RecordDict({"arrays": arrays, "config": config})
        return [
            Message(content=content, message_type=kind, dst_node_id=self.clients[c])
            for c in client_ids
        ]

    def _valid(self, replies: Iterable[Message], server_round: int, stage: str) -> tuple[list[Message], int]:
        """Split replies into valid ones and a failure count.

        Raises
        ------
        ClientsFailed
            When every client of a non-empty round failed (the run cannot progress).
        """
        valid, reasons = [], []
        for reply in replies:
            if reply.has_error():
                reasons.append(client_error_message(reply.error.reason))
                log(WARNING, "round %d %s: a client failed: %s", server_round, stage, reasons[-1])
            else:
                valid.append(reply)
        if reasons and not valid:
            raise ClientsFailed(
                f"round {server_round} {stage}: all {len(reasons)} clients failed; first error: {reasons[0]}"
            )
        # replies arrive in any order; aggregate in client order so float sums are reproducible
        valid.sort(key=lambda reply: int(reply.content["metrics"]["partition-id"]))
        return valid, len(reasons)

    # -- training -----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients and send them the global backbone and the config."""
        server_round += self.round_offset
        self.global_state = arrays.to_torch_state_dict()
        self.keys = list(self.global_state)
        self.follow_reconnections(grid)
        sampled = self.sample(self.cfg.server.fraction_train, self.cfg.server.min_train_clients)
        self.round_row = {"round": server_round, "sampled": len(sampled)}
        return self._messages(server_round, arrays, sampled, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weight the clients' backbone updates and take the server step."""
        server_round += self.round_offset
        valid, failures = self._valid(replies, server_round, "training")
        self.round_row.update({"replies": len(valid), "failures": failures})
        if not valid:
            return None, None
        rows, metric_rows, losses, counts = [], [], [], []
        parts = needs_task_parts(self.cfg.server.plan)
        for reply in valid:
            metrics = reply.content["metrics"]
            client = int(metrics["partition-id"])
            count = float(metrics["num-examples"])
            task_values = parse_metrics(metrics, "train")
            task_loss = {t: v.get("loss-before", v["loss"]) for t, v in task_values.items()}
            if parts:
                for task in sorted(task_values):
                    part = reply.content[f"part.{task}"].to_torch_state_dict()
                    rows.append(Row(client, task, flatten_state(part, self.keys), task_loss[task], count))
            else:
                update = reply.content["update"].to_torch_state_dict()
                rows.append(Row(client, WHOLE, flatten_state(update, self.keys),
                                float(np.mean(list(task_loss.values()))), count))
            losses.append(float(np.mean([v["loss"] for v in task_values.values()])))
            counts.append(count)
            for task, values in task_values.items():
                metric_rows += [(server_round, client, task, "train", m, v) for m, v in values.items()]
            for key in ("num-examples", "heads-fingerprint-in", "heads-fingerprint-out"):
                metric_rows.append((server_round, client, CLIENT_LEVEL, "train", key, float(metrics[key])))
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
        step = self.optimizer.step(result.direction.to(torch.float32))
        new_vector = flatten_state(self.global_state, self.keys) + step
        new_state = unflatten_state(new_vector, self.global_state, self.keys)
        self.current_state = new_state
        self.round_row["train_loss"] = float(np.average(losses, weights=counts))
        return ArrayRecord(new_state), MetricRecord({"train-loss": self.round_row["train_loss"]})

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
        sampled = self.sample(self.cfg.server.fraction_evaluate, 1)
        return self._messages(server_round, arrays, sampled, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record per-client metrics and the round's across-client statistics; checkpoint."""
        server_round += self.round_offset
        valid, failures = self._valid(replies, server_round, "evaluation")
        stats = None
        if valid:
            per_client, counts = {}, {}
            for reply in valid:
                metrics = reply.content["metrics"]
                client = int(metrics["partition-id"])
                per_client[client] = parse_metrics(metrics, "test")
                counts[client] = int(metrics["num-examples"])
            stats = self.recorder.record_evaluation(server_round, per_client, counts)
            self.last_stats = stats
            self.round_row["evaluated"] = len(valid)
            self.round_row["evaluate_failures"] = failures
            self.progress.round(stats, self.recorder.elapsed, int(self.round_row.get("replies", 0)),
                                int(self.round_row.get("failures", 0)))
        self.recorder.log_round(dict(self.round_row), stats)
        if self.is_checkpoint_round(server_round):
            self.recorder.save_checkpoint(server_round, self.checkpoint_state())
        if stats is None:
            return None
        return MetricRecord({f"{t}.{stats.metric[t]}.mean": v["mean"] for t, v in stats.stats.items()})
