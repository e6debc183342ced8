"""From accepted training replies to the aggregation plan's rows and ``metrics.csv`` rows."""

from __future__ import annotations

import numpy as np
import torch

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import WHOLE, PlanResult, Row
from fedmtl.aggregation.server_optimizer import ServerOptimizer
from fedmtl.results import CLIENT_LEVEL
from fedmtl.screening import norm_outliers, work_allowances
from fedmtl.server.replies import Accepted

MetricRow = tuple[int, int, str, str, str, float]
"""``(round, client, task, split, metric, value)``."""


def plan_rows(reply: Accepted, device: torch.device) -> list[Row]:
    """The update rows of one reply, each with the loss its weighting sees: the task's loss
    before local training when reported, else after (the mean over tasks for a whole update)."""
    per_task = wire.parse_metric_keys(reply.metrics, wire.TRAIN)
    task_loss = {t: v.get(wire.LOSS_BEFORE, v[wire.LOSS]) for t, v in per_task.items()}
    count = reply.metrics[wire.NUM_EXAMPLES]
    rows = []
    for task, vector in reply.rows.items():
        loss = float(np.mean(list(task_loss.values()))) if task == WHOLE else task_loss[task]
        rows.append(Row(reply.client, task, without_subnormals(vector).to(device), loss, count))
    return rows


def without_subnormals(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` with its subnormal entries (below the dtype's smallest normal number, about
    1.2e-38 in float32) set to 0: such an entry changes no model weight, but a row made of them
    has a squared norm that underflows to 0, and rules that divide by norms (FedMGDA+, PCGrad,
    FedFV) then return NaN: one client could make every round be skipped."""
    if not vector.is_floating_point():
        return vector
    tiny = torch.finfo(vector.dtype).tiny
    return torch.where(vector.abs() < tiny, torch.zeros((), dtype=vector.dtype), vector)


def reply_loss(reply: Accepted) -> float:
    """The client's mean training loss over its tasks."""
    per_task = wire.parse_metric_keys(reply.metrics, wire.TRAIN)
    return float(np.mean([v[wire.LOSS] for v in per_task.values()]))


def train_metric_rows(server_round: int, reply: Accepted) -> list[MetricRow]:
    """The ``metrics.csv`` rows of one accepted training reply."""
    rows: list[MetricRow] = []
    for task, values in wire.parse_metric_keys(reply.metrics, wire.TRAIN).items():
        rows += [(server_round, reply.client, task, "train", m, v) for m, v in values.items()]
    for key in (wire.NUM_EXAMPLES, wire.HEADS_IN, wire.HEADS_OUT):
        rows.append((server_round, reply.client, CLIENT_LEVEL, "train", key, reply.metrics[key]))
    return rows


def weight_rows(server_round: int, result: PlanResult) -> list[MetricRow]:
    """The ``aggregation-weight`` rows of the plan's result."""
    return [(server_round, client, CLIENT_LEVEL if task == WHOLE else task, "train", "aggregation-weight", w)
            for (client, task), w in sorted(result.row_weights.items())]


def train_loss(replies: list[Accepted]) -> float:
    """The example-weighted mean of the clients' training losses."""
    losses = [reply_loss(r) for r in replies]
    return float(np.average(losses, weights=[r.metrics[wire.NUM_EXAMPLES] for r in replies]))


def screen_norms(formed: dict[int, Accepted], factor: float, steps: dict[int, int] | None = None) -> list[int]:
    """The clients whose update passes the norm screen (:func:`fedmtl.screening.norm_outliers`
    with ``server.norm-screening``), sorted. With ``steps`` (each client's local steps, as the
    server counts them from its training split) a client with more steps than the median
    client gets a proportionally larger bound (:func:`fedmtl.screening.work_allowances`).

    The screen compares each client's whole update (the sum of its rows) with the others', and
    the root-mean-square length of its rows times √k for its k rows (``√(k Σ ‖row‖²)``; the
    update's length for a whole update): two parts that cancel in the sum (+v and −v) would
    otherwise pass, and a plan that weights the parts unequally would step along one of them.
    A client's part of a task is about that task's gradient over the k tasks it holds, so
    ``√(k Σ ‖row‖²)`` is about the root-mean-square length of its tasks' gradients whatever k:
    a client holding 1 of 20 tasks is not screened out for sending one part 20 times a full
    client's."""
    clients = sorted(formed)
    screens = [[float(torch.linalg.vector_norm(sum(formed[c].rows.values()))) for c in clients]]
    if any(len(formed[c].rows) > 1 for c in clients):  # for whole updates it is the same length
        screens.append([_rows_length(formed[c]) for c in clients])
    allowances = work_allowances([steps[c] for c in clients]) if steps is not None else None
    out = dict.fromkeys(clients, False)
    for lengths in screens:
        for client, flagged in zip(clients, norm_outliers(lengths, factor, allowances=allowances), strict=True):
            out[client] = out[client] or flagged
    return [c for c in clients if not out[c]]


def _rows_length(reply: Accepted) -> float:
    """``√(k Σ ‖row‖²)`` over a reply's k rows (in float64)."""
    lengths = torch.stack([torch.linalg.vector_norm(r, dtype=torch.float64) for r in reply.rows.values()])
    return float(torch.sqrt(len(lengths) * (lengths**2).sum()))


def stepped(flat: torch.Tensor, direction: torch.Tensor, optimizer: ServerOptimizer) -> torch.Tensor | str:
    """The flat federated state after the server step along the combined ``direction``, or
    why not: the direction, the optimizer's state after the step or the new state is not
    finite (the round is then skipped, and the caller restores the optimizer's state; it
    takes no step on a direction that is not finite)."""
    if not bool(torch.isfinite(direction).all()):
        return "the combined update is not finite"
    new = flat + optimizer.step(direction.to("cpu", torch.float32))
    if not optimizer.finite():
        return f"the server optimizer's state is not finite after the step (server.optimizer = '{optimizer.kind}')"
    return new if bool(torch.isfinite(new).all()) else "the model after the server step is not finite"
