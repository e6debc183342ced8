"""Gradient-conflict weightings that need only the Gramian ``A = G Gᵀ``.

MGDA, UPGrad, DualProj, PCGrad, CAGrad, IMTL-G and Aligned-MTL are computed by torchjd's
Gramian weightings; FairGrad and Nash-MTL by our α-fair solver
(:func:`~fedmtl.aggregation.solvers.solve_alpha_fair`). All of them are scale-free: only the
direction of ``Σ w_i g_i`` is used, so the weights are rescaled to sum to one, and they are
invariant when every row is multiplied by ``s > 0``. torchjd receives the trace-normalised
Gramian ``A / (tr A / m)`` (same weights up to scale, better conditioned).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torchjd.aggregation as tjd
from pydantic import Field
from torchjd._linalg._dual_cone import QuadprogProjector

from fedmtl.aggregation.base import WEIGHTINGS, NoParams, Weighting
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.solvers import min_norm_weights, solve_alpha_fair


class GramianWeighting(Weighting):
    """Base of weightings computed from the trace-normalised Gramian."""

    needs_updates = True
    scale_free = True

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        """Weights for a trace-normalised, nonzero Gramian."""
        raise NotImplementedError

    def weights(self, objectives: Objectives) -> torch.Tensor:
        m = len(objectives)
        gramian, scale = objectives.normalised_gramian()
        if m == 1:
            return torch.ones(1, dtype=torch.float64)
        if scale == 0.0:
            self.fallback = "zero-gramian"
            return torch.full((m,), 1.0 / m, dtype=torch.float64)
        weights = self.from_gramian(gramian).to(torch.float64)
        if not torch.isfinite(weights).all():
            self.fallback = "non-finite"
            return torch.full((m,), 1.0 / m, dtype=torch.float64)
        return weights


@WEIGHTINGS.register("mgda")
class MGDA(GramianWeighting):
    """MGDA: the min-norm point of the convex hull, ``w = argmin_{w∈Δ} ‖Σ w_i g_i‖²``.

    Désidéri, "Multiple-gradient descent algorithm", C. R. Math. 2012; Sener & Koltun,
    "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018. Solved exactly as
    a quadratic program (quadprog's dual active-set method) rather than by Frank–Wolfe, so
    that ``g_iᵀ d ≥ ‖d‖² ≥ 0`` holds to rounding; agrees with torchjd's ``MGDAWeighting``
    where that converges. On Pareto-stationary rows (0 in the hull) the optimal weights are
    not unique; the ones of least norm are returned.
    """

    name = "mgda"

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(min_norm_weights(gramian.numpy()))


class DualCone(GramianWeighting):
    """Base of UPGrad and DualProj: torchjd's dual-cone projections with a chosen ridge."""

    projection: ClassVar[type] = tjd.UPGradWeighting

    class Params(NoParams):
        reg_eps: float = Field(
            1e-4, gt=0,
            description="Ridge added to the normalised Gramian; g_iᵀd ≥ 0 holds up to about it.",
        )

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        projector = QuadprogProjector(reg_eps=self.params.reg_eps)
        return self.projection(projector=projector)(gramian)


@WEIGHTINGS.register("upgrad")
class UPGrad(DualCone):
    """UPGrad: each ``g_i`` projected onto the dual cone ``{x : G x ≥ 0}``, then summed.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232
    (2024). torchjd's ``UPGradWeighting``. No objective is worsened to first order.
    """

    name = "upgrad"
    projection = tjd.UPGradWeighting


@WEIGHTINGS.register("dualproj")
class DualProj(DualCone):
    """DualProj: the mean gradient projected onto the dual cone ``{x : G x ≥ 0}``.

    Quinton & Rey, arXiv 2406.16232 (2024), after Lopez-Paz & Ranzato's GEM (NeurIPS 2017).
    torchjd's ``DualProjWeighting``.
    """

    name = "dualproj"
    projection = tjd.DualProjWeighting


@WEIGHTINGS.register("pcgrad")
class PCGrad(GramianWeighting):
    """PCGrad: project each ``g_i`` off every conflicting ``g_j`` (random order), then sum.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. torchjd's
    ``PCGradWeighting``, with the random order drawn from this weighting's own seeded
    generator (reproducible runs).
    """
    state_attributes = ("generator",)

    name = "pcgrad"
    deterministic = False

    class Params(NoParams):
        seed: int = Field(0, ge=0, description="Seed of the projection order.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a weighting's own generator: its seed parameter
            return tjd.PCGradWeighting()(gramian)


@WEIGHTINGS.register("cagrad")
class CAGrad(GramianWeighting):
    """CAGrad: the mean gradient corrected towards the worst task within a ball of radius c.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    torchjd's ``CAGradWeighting``; ``c = 0`` is gradient descent on the mean.
    """

    name = "cagrad"

    class Params(NoParams):
        c: float = Field(0.4, ge=0, description="Radius of the conflict-averse ball.")

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return tjd.CAGradWeighting(c=self.params.c)(gramian)


@WEIGHTINGS.register("imtl-g")
class IMTLG(GramianWeighting):
    """IMTL-G: the direction with equal projections on every unit gradient ``g_i/‖g_i‖``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021. torchjd's
    ``IMTLGWeighting``.
    """

    name = "imtl-g"
    nonnegative = False

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return tjd.IMTLGWeighting()(gramian)


@WEIGHTINGS.register("aligned-mtl")
class AlignedMTL(GramianWeighting):
    """Aligned-MTL: align the gradient system's principal components (condition number 1).

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    torchjd's ``AlignedMTLWeighting`` (scale mode ``min``).
    """

    name = "aligned-mtl"
    nonnegative = False

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return tjd.AlignedMTLWeighting()(gramian)


class AlphaFair(GramianWeighting):
    """Base of FairGrad and Nash-MTL: our Newton solver, warm-started from the last call."""
    state_attributes = ("last",)

    def alpha(self) -> float:
        raise NotImplementedError

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.last: dict[str, float] = {}
        self.iterations = 0

    def weights(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        warm = None
        if getattr(self.params, "warm_start", True) and all(k in self.last for k in keys):
            warm = np.array([self.last[k] for k in keys])
        gramian, scale = objectives.normalised_gramian()
        if len(keys) == 1:
            return torch.ones(1, dtype=torch.float64)
        weights, info = solve_alpha_fair(gramian, self.alpha(), warm_start=warm)
        self.fallback = info.fallback
        self.iterations = info.iterations
        if np.all(np.isfinite(weights)) and np.all(weights > 0):
            self.last.update(zip(keys, weights.tolist(), strict=True))
        return torch.from_numpy(np.asarray(weights, dtype=np.float64))


@WEIGHTINGS.register("fairgrad")
class FairGrad(AlphaFair):
    """FairGrad: α-fair weights, ``(G Gᵀ w)_i = w_i^(-1/α)``, ``w > 0``.

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024. α = 0: mean;
    α = 1: Nash-MTL; α = 2: minimum potential delay; α = inf: max-min (MGDA-like). Solved by
    our damped Newton method on the strictly convex dual (warm-started from the previous
    call), with a logged fallback when no positive solution exists. FairGrad's own code
    rescales by T and clips the shared gradient to norm 1; here the weights sum to one.
    """

    name = "fairgrad"

    class Params(NoParams):
        alpha: float = Field(1.0, ge=0, description="Fairness exponent α (inf = max-min).")
        warm_start: bool = Field(True, description="Start Newton from the previous weights.")

    def alpha(self) -> float:
        return float(self.params.alpha)


@WEIGHTINGS.register("nash-mtl")
class NashMTL(AlphaFair):
    """Nash-MTL: the Nash bargaining solution, ``(G Gᵀ w)_i = 1 / w_i``.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022. The same condition
    as FairGrad with α = 1; solved exactly by our Newton method instead of the paper's
    sequence of convex programs.
    """

    name = "nash-mtl"

    class Params(NoParams):
        warm_start: bool = Field(True, description="Start Newton from the previous weights.")

    def alpha(self) -> float:
        return 1.0

