"""Cross-client fairness weightings (server only).

Losses ``F_k`` are each client's loss of the *global* model on its training data, measured
by the client *before* local training (q-FFL, AFL, TERM, FedFV and PropFair depend on it).
Update rows are ``u_k = w_k − wᵗ`` (local minus global backbone).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.base import WEIGHTINGS, NoParams, Weighting
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.simplex import project_simplex, project_simplex_box


def _losses(objectives: Objectives, name: str) -> torch.Tensor:
    if objectives.losses is None:
        raise ValueError(f"weighting '{name}' needs each client's loss before local training")
    return objectives.losses.to(torch.float64)


@WEIGHTINGS.register("qffl")
class QFFL(Weighting):
    """q-FFL / q-FedAvg: minimise ``Σ_k p_k F_k^(q+1) / (q+1)``.

    Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning", ICLR
    2020 (Algorithm q-FedAvg). With ``L = 1/η`` (η the local learning rate),
    ``Δw_k = L (wᵗ − w̄_k) = −L u_k``, ``Δ_k = F_k^q Δw_k`` and
    ``h_k = q F_k^(q−1) ‖Δw_k‖² + L F_k^q``, the paper's step ``wᵗ⁺¹ = wᵗ − Σ Δ_k / Σ h_k`` is
    ``Σ_k w_k u_k`` with ``w_k = L F_k^q / Σ_j h_j``. ``F_k`` is client k's loss of ``wᵗ``
    before local training (+1e-10, as in the paper's code). q = 0 gives the plain mean.
    Use ``server.lr = 1`` for the paper's update.
    """

    name = "qffl"
    scope = "server"
    needs_updates = True
    needs_losses = True
    scaling = "none"

    class Params(NoParams):
        q: float = Field(1.0, ge=0, description="Fairness exponent q (0 = FedAvg-style mean).")
        lipschitz: float = Field(
            0.0, ge=0, description="L, the inverse step size (0 = 1 / client.lr)."
        )

    def weights(self, objectives: Objectives) -> torch.Tensor:
        q, lip = self.params.q, self.params.lipschitz
        if lip <= 0:
            raise ValueError("qffl: lipschitz is not set (the server sets it to 1 / client.lr)")
        f = _losses(objectives, self.name) + 1e-10
        squared_norms = torch.diagonal(objectives.gramian).clamp_min(0)
        h = q * f.pow(q - 1) * lip**2 * squared_norms + lip * f.pow(q)
        return lip * f.pow(q) / h.sum()


@WEIGHTINGS.register("afl")
class AFL(Weighting):
    """Agnostic federated learning: ``min_w max_{λ∈Δ} Σ_k λ_k F_k``.

    Mohri, Sivek & Suresh, "Agnostic Federated Learning", ICML 2019. The sampled clients'
    updates get weights ``λ_k / Σ_{j∈S} λ_j``; then ``λ ← Proj_Δ(λ + γ_λ F)`` with the
    sampled clients' pre-training losses (a client seen for the first time enters with the
    mean of the known λ). λ is the weighting's state.
    """
    state_attributes = ("lam",)

    name = "afl"
    scope = "server"
    needs_losses = True

    class Params(NoParams):
        lr_lambda: float = Field(0.1, gt=0, description="Step size γ_λ of the λ ascent.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.lam: dict[str, float] = {}

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = _losses(objectives, self.name)
        fill = sum(self.lam.values()) / len(self.lam) if self.lam else 1.0
        for key in keys:
            self.lam.setdefault(key, fill)
        present = torch.tensor([self.lam[k] for k in keys], dtype=torch.float64)
        weights = present / present.sum()
        names = list(self.lam)
        vector = torch.tensor([self.lam[k] for k in names], dtype=torch.float64)
        vector = vector / vector.sum()
        index = {k: i for i, k in enumerate(names)}
        for key, loss in zip(keys, losses.tolist(), strict=True):
            vector[index[key]] += self.params.lr_lambda * loss
        self.lam = dict(zip(names, project_simplex(vector).tolist(), strict=True))
        return weights


@WEIGHTINGS.register("term")
class TERM(Weighting):
    """Tilted empirical risk minimisation across clients.

    Li, Beirami, Sanjabi & Smith, "Tilted Empirical Risk Minimization", ICLR 2021. The
    tilted objective's gradient weights clients by ``e^(t F_k)``; federated form (the
    paper's code): ``w_k = e^(t (F_k − max F)) / (m ẑ)`` with
    ``ẑ ← ½ ẑ + ½ mean_k e^(t (F_k − max F))`` across rounds. ``t → 0`` is the mean,
    ``t → ∞`` the worst client, ``t < 0`` down-weights outliers.
    """
    state_attributes = ("z",)

    name = "term"
    scope = "server"
    needs_losses = True

    class Params(NoParams):
        tilt: float = Field(1.0, description="Tilt t (> 0 fairness, < 0 robustness).")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.z: float | None = None

    def weights(self, objectives: Objectives) -> torch.Tensor:
        f = _losses(objectives, self.name)
        e = torch.exp(self.params.tilt * (f - f.max()))
        mean = float(e.mean())
        self.z = mean if self.z is None else 0.5 * self.z + 0.5 * mean
        return e / (len(f) * self.z)


@WEIGHTINGS.register("fedmgda+")
class FedMGDAPlus(Weighting):
    """FedMGDA+: ε-bounded MGDA on normalised client updates.

    Hu, Shaloudegi, Zhang & Yu, "FedMGDA+: Federated Learning meets Multi-objective
    Optimization", IEEE TNSE 2022. ``ĝ_k = u_k / ‖u_k‖``;
    ``λ = argmin ‖Σ λ_k ĝ_k‖²`` over the simplex with ``|λ_k − n_k/n| ≤ ε`` (projected
    gradient with an exact simplex-box projection); the step is ``Σ λ_k ĝ_k``, i.e.
    ``w_k = λ_k / ‖u_k‖`` (the server learning rate is the step length).
    """

    name = "fedmgda+"
    scope = "server"
    needs_updates = True
    scaling = "inverse"

    class Params(NoParams):
        epsilon: float = Field(0.1, ge=0, le=1, description="Max deviation ε from n_k/n.")
        iterations: int = Field(500, ge=1, description="Projected-gradient iterations.")

    def weights(self, objectives: Objectives) -> torch.Tensor:
        m = len(objectives)
        a = objectives.gramian
        norms = torch.diagonal(a).clamp_min(0).sqrt()
        alive = norms > 0
        if objectives.num_examples is not None:
            prior = objectives.num_examples.to(torch.float64)
            prior = prior / prior.sum() if prior.sum() > 0 else torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            prior = torch.full((m,), 1.0 / m, dtype=torch.float64)
        inv = torch.where(alive, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
        cosine = a * inv[:, None] * inv[None, :]
        lower = (prior - self.params.epsilon).clamp_min(0)
        upper = (prior + self.params.epsilon).clamp_max(1)
        lam = project_simplex_box(prior, lower, upper)
        step = 1.0 / max(float(torch.linalg.eigvalsh(cosine).max()), 1e-12)
        for _ in range(self.params.iterations):
            new = project_simplex_box(lam - step * (cosine @ lam), lower, upper)
            if float((new - lam).abs().max()) < 1e-12:
                lam = new
                break
            lam = new
        return lam * inv


@WEIGHTINGS.register("fedfv")
class FedFV(Weighting):
    """FedFV: mitigate conflicting client updates by projection (federated fair averaging).

    Wang et al., "Federated Learning with Fair Averaging", IJCAI 2021. Clients are ordered
    by pre-training loss; the ``⌊α m⌋`` highest-loss clients keep their update, every other
    update is projected off each update it conflicts with (``u_i·u_j < 0``), j in ascending
    loss order (higher-loss clients last, so their conflicts are removed). The average is
    projected off the sum of the stored updates of the last τ rounds that conflict with it,
    and rescaled to the norm of the plain average.
    """
    state_attributes = ("history",)

    name = "fedfv"
    scope = "server"
    needs_updates = True
    needs_losses = True
    linear = False

    class Params(NoParams):
        alpha: float = Field(0.1, ge=0, le=1, description="Fraction α of clients exempt from projection.")
        tau: int = Field(1, ge=0, description="Rounds τ of update history used.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.history: list[torch.Tensor] = []

    def weights(self, objectives: Objectives) -> torch.Tensor:
        """The weights of the projected average (before the history step)."""
        m = len(objectives)
        a = objectives.gramian
        order = torch.argsort(_losses(objectives, self.name), stable=True).tolist()
        exempt = set(order[m - int(self.params.alpha * m):]) if int(self.params.alpha * m) else set()
        coefficients = torch.eye(m, dtype=torch.float64)
        for i in range(m):
            if i in exempt:
                continue
            for j in order:
                if j == i or a[j, j] <= 0:
                    continue
                dot = coefficients[i] @ a[:, j]
                if dot < 0:
                    coefficients[i, j] -= dot / a[j, j]
        return coefficients.sum(dim=0) / m

    def aggregate(self, objectives: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
        if objectives.updates is None:
            raise ValueError("weighting 'fedfv' needs update rows")
        self.fallback = ""
        updates = objectives.updates
        weights = self.weights(objectives)
        direction = weights.to(updates) @ updates
        conflicting = [h for h in self.history if h.shape == direction.shape and h @ direction < 0]
        if conflicting:
            total = torch.stack(conflicting).sum(dim=0)
            dot, sq = direction @ total, total @ total
            if dot < 0 and sq > 0:
                direction = direction - (dot / sq) * total
        target = updates.mean(dim=0).norm()
        norm = direction.norm()
        if norm > 0:
            direction = direction * (target / norm)
        if self.params.tau > 0:
            self.history = (self.history + [u.detach().clone() for u in updates])[-self.params.tau * len(updates):]
        return direction, None

    def contributions(self, objectives: Objectives) -> torch.Tensor:
        raise TypeError("fedfv's history step is not a per-row sum; it runs on the server only")


@WEIGHTINGS.register("propfair")
class PropFair(Weighting):
    """PropFair: proportional fairness across clients, maximise ``Σ_k log(M − F_k)``.

    Zhang, Malekmohammadi, Chen & Yu, "Proportional Fairness in Federated Learning", TMLR
    2023 (arXiv 2202.01666). The objective's gradient weights client k by
    ``1 / (M − F_k)`` (pre-training loss ``F_k``); where ``M − F_k < 0.2`` the weight is
    capped at ``1 / 0.2`` (the surrogate's linear region). Weights are normalised to sum
    to one. The paper applies the surrogate inside local training; this is its server form.
    """

    name = "propfair"
    scope = "server"
    needs_losses = True
    scale_free = True

    class Params(NoParams):
        baseline: float = Field(5.0, gt=0, description="Baseline M (above every client's loss).")

    def weights(self, objectives: Objectives) -> torch.Tensor:
        gap = (self.params.baseline - _losses(objectives, self.name)).clamp_min(0.2)
        return 1.0 / gap
