"""Weightings driven by losses (and gradient norms) rather than by gradient geometry.

RLW, DWA and FAMO run on clients (every local step) and on the server; uncertainty weighting
and GradNorm learn per-task parameters during local training and run on clients only;
DB-MTL keeps an average of gradients of log-losses and needs full parameter rows. Stateful
ones keep their state per row key (task, client or ``client/task``) and expose it through
``state_dict``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.base import WEIGHTINGS, NoParams, Weighting
from fedmtl.aggregation.objectives import Objectives

EPS = 1e-8


def _losses(objectives: Objectives, name: str) -> torch.Tensor:
    if objectives.losses is None:
        raise ValueError(f"weighting '{name}' needs each objective's loss")
    return objectives.losses.to(torch.float64).clamp_min(EPS)


@WEIGHTINGS.register("rlw")
class RLW(Weighting):
    """Random loss weighting: ``w = softmax(ε)``, ``ε ~ N(0, I)`` drawn at every call.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022. Drawn from the weighting's own seeded generator.
    """
    state_attributes = ("generator",)

    name = "rlw"
    deterministic = False

    class Params(NoParams):
        seed: int = Field(0, ge=0, description="Seed of the random weights.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def weights(self, objectives: Objectives) -> torch.Tensor:
        eps = torch.randn(len(objectives), generator=self.generator, dtype=torch.float64)
        return torch.softmax(eps, dim=0)


@WEIGHTINGS.register("dwa")
class DWA(Weighting):
    """Dynamic weight average: ``w ∝ exp(r_k / τ)``, ``r_k = L_k(t−1) / L_k(t−2)``.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. ``L_k``
    are epoch means (on a client: local epochs; on the server: rounds, one call per round);
    uniform until every row has two epochs of history. The paper's weights sum to T; here
    they sum to one (relative to ``mean``).
    """
    state_attributes = ("history", "current")

    name = "dwa"
    needs_losses = True

    class Params(NoParams):
        temperature: float = Field(2.0, gt=0, description="Softmax temperature τ.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.history: dict[str, list[float]] = {}
        self.current: dict[str, list[float]] = {}

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = _losses(objectives, self.name)
        for key, loss in zip(keys, losses.tolist(), strict=True):
            self.current.setdefault(key, [0.0, 0.0])
            self.current[key][0] += loss
            self.current[key][1] += 1
        if not all(len(self.history.get(k, [])) == 2 for k in keys):
            return torch.full((len(keys),), 1.0 / len(keys), dtype=torch.float64)
        ratios = torch.tensor([self.history[k][1] / self.history[k][0] for k in keys], dtype=torch.float64)
        return torch.softmax(ratios / self.params.temperature, dim=0)

    def end_epoch(self) -> None:
        for key, (total, count) in self.current.items():
            self.history[key] = (self.history.get(key, []) + [max(total / count, EPS)])[-2:]
        self.current = {}


@WEIGHTINGS.register("famo")
class FAMO(Weighting):
    """FAMO: fast adaptive multitask optimisation, balancing the rates of loss decrease.

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023. Logits ``ξ``
    give ``z = softmax(ξ)``; the step descends ``Σ z_i log L_i``, i.e. weights
    ``w_i = (z_i / L_i) / Σ_j (z_j / L_j)``. After each call, Adam updates ``ξ`` with the
    gradient ``J_softmaxᵀ (log L_prev − log L_now)``. The paper measures ``L_now`` on the same
    batch after the step; here it is the next call's loss (no extra forward pass).
    """
    state_attributes = ("logits", "moments", "previous", "steps")

    name = "famo"
    needs_losses = True
    scaling = "invariant"

    class Params(NoParams):
        lr: float = Field(0.025, gt=0, description="Adam learning rate of the logits.")
        weight_decay: float = Field(1e-5, ge=0, description="Weight decay of the logits.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.logits: dict[str, float] = {}
        self.moments: dict[str, tuple[float, float]] = {}
        self.previous: dict[str, float] = {}
        self.steps = 0

    def _update_logits(self, keys: list[str], log_losses: torch.Tensor) -> None:
        if not all(k in self.previous for k in keys):
            return
        xi = torch.tensor([self.logits[k] for k in keys], dtype=torch.float64)
        z = torch.softmax(xi, dim=0)
        delta = torch.tensor([self.previous[k] for k in keys], dtype=torch.float64) - log_losses
        # J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ); plus decoupled weight decay
        grad = z * (delta - z @ delta) + self.params.weight_decay * xi
        self.steps += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for i, key in enumerate(keys):
            m, v = self.moments.get(key, (0.0, 0.0))
            g = float(grad[i])
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            self.moments[key] = (m, v)
            m_hat, v_hat = m / (1 - b1**self.steps), v / (1 - b2**self.steps)
            self.logits[key] -= self.params.lr * m_hat / (math.sqrt(v_hat) + eps)

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = _losses(objectives, self.name)
        for key in keys:
            self.logits.setdefault(key, 0.0)
        self._update_logits(keys, losses.log())
        self.previous.update(zip(keys, losses.log().tolist(), strict=True))
        z = torch.softmax(torch.tensor([self.logits[k] for k in keys], dtype=torch.float64), dim=0)
        scaled = z / losses
        return scaled / scaled.sum()


@WEIGHTINGS.register("uncertainty")
class Uncertainty(Weighting):
    """Uncertainty weighting: learnable ``s_k = log σ_k²`` with loss ``½ Σ (e^(−s_k) L_k + s_k)``.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR
    2018. The task weight is ``e^(−s_k) / T`` (``s = 0`` gives ``mean``); after each step
    ``s_k`` takes an SGD step on the same objective, ``∂/∂s_k = (1 − e^(−s_k) L_k) / T``.
    """
    state_attributes = ("log_vars",)

    name = "uncertainty"
    scope = "client"
    needs_losses = True

    class Params(NoParams):
        lr: float = Field(0.05, gt=0, description="SGD learning rate of the log-variances s_k.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.log_vars: dict[str, float] = {}

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = _losses(objectives, self.name)
        s = torch.tensor([self.log_vars.get(k, 0.0) for k in keys], dtype=torch.float64)
        weights = torch.exp(-s) / len(keys)
        grad = (1 - torch.exp(-s) * losses) / len(keys)
        self.log_vars.update(zip(keys, (s - self.params.lr * grad).tolist(), strict=True))
        return weights


@WEIGHTINGS.register("gradnorm")
class GradNorm(Weighting):
    """GradNorm: learn weights so that the weighted gradient norms train at equal rates.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing", ICML 2018.
    With ``G_i = w_i ‖g_i‖``, ``L̃_i = L_i / L_i(0)``, ``r_i = L̃_i / mean(L̃)``, the weights take
    a gradient step on ``Σ_i |G_i − mean(G) r_i^a|`` (target held constant) and are
    renormalised to sum to T. ``g_i`` is the gradient at the shared representation (the
    output of the last shared layer). Returned as ``w / T`` (relative to ``mean``).
    """
    state_attributes = ("task_weights", "initial_losses")

    name = "gradnorm"
    scope = "client"
    needs_updates = True
    needs_losses = True
    scaling = "none"

    class Params(NoParams):
        asymmetry: float = Field(1.5, ge=0, description="Restoring-force strength a.")
        lr: float = Field(0.025, gt=0, description="Learning rate of the weights.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.task_weights: dict[str, float] = {}
        self.initial_losses: dict[str, float] = {}

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        t = len(keys)
        losses = _losses(objectives, self.name)
        for key, loss in zip(keys, losses.tolist(), strict=True):
            self.initial_losses.setdefault(key, loss)
            self.task_weights.setdefault(key, 1.0)
        w = torch.tensor([self.task_weights[k] for k in keys], dtype=torch.float64)
        norms = torch.diagonal(objectives.gramian).clamp_min(0).sqrt()
        ratio = losses / torch.tensor([self.initial_losses[k] for k in keys], dtype=torch.float64)
        target = (w * norms).mean() * (ratio / ratio.mean()) ** self.params.asymmetry
        grad = torch.sign(w * norms - target) * norms
        new = (w - self.params.lr * grad).clamp_min(1e-6)
        new = new * t / new.sum()
        self.task_weights.update(zip(keys, new.tolist(), strict=True))
        return w / t


@WEIGHTINGS.register("db-mtl")
class DBMTL(Weighting):
    """DB-MTL: dual balancing of log-loss gradients.

    Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029 (2023). Rows are
    gradients (updates) of ``log L_i`` (``u_i / L_i``); their running averages
    ``ĝ_i ← β_t ĝ_i + (1 − β_t) u_i / L_i`` (``β_t = β / t^σ``, from zero) are combined as
    ``d = (1/T) Σ_i (max_j ‖ĝ_j‖ / ‖ĝ_i‖) ĝ_i`` (the paper's sum, divided by T as for
    ``mean``). The averages are per row key, so on a client it needs full backbone
    gradients, not representation gradients.
    """
    state_attributes = ("averages", "step")

    name = "db-mtl"
    needs_updates = True
    needs_losses = True
    needs_parameter_rows = True
    linear = False

    class Params(NoParams):
        beta: float = Field(0.9, ge=0, lt=1, description="Averaging factor β of the gradients.")
        sigma: float = Field(0.0, ge=0, description="Decay exponent σ of β_t = β / t^σ.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.averages: dict[str, torch.Tensor] = {}
        self.step = 0

    def weights(self, objectives: Objectives) -> torch.Tensor:
        raise TypeError("db-mtl combines averaged gradients, not the rows: use aggregate()")

    def contributions(self, objectives: Objectives) -> torch.Tensor:
        if objectives.updates is None:
            raise ValueError("weighting 'db-mtl' needs update rows")
        keys = objectives.keys()
        losses = _losses(objectives, self.name).to(objectives.updates)
        self.step += 1
        beta = self.params.beta / self.step**self.params.sigma
        rows = []
        for key, row, loss in zip(keys, objectives.updates, losses, strict=True):
            previous = self.averages.get(key)
            if previous is None or previous.shape != row.shape:
                previous = torch.zeros_like(row)
            average = beta * previous + (1 - beta) * row / loss
            self.averages[key] = average.detach().clone()
            rows.append(average)
        stacked = torch.stack(rows)
        norms = stacked.norm(dim=1)
        largest = norms.max()
        scales = torch.where(norms > 0, largest / norms.clamp_min(1e-30), torch.zeros_like(norms))
        return scales[:, None] * stacked / len(keys)

    def aggregate(self, objectives: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.fallback = ""
        return self.contributions(objectives).sum(dim=0), None
