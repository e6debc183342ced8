"""``propfair``: proportional fairness across clients."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting


@register("propfair")
class PropFair(Weighting):
    """PropFair: proportional fairness across clients, maximise ``Σ_k log(M − F_k)``.

    Zhang, Malekmohammadi, Chen & Yu, "Proportional Fairness in Federated Learning", TMLR
    2023 (arXiv 2202.01666). The objective ``−Σ_k log(1 − F_k/M)`` has the gradient
    ``Σ_k ∇F_k / (M − F_k)``: client k (pre-training loss ``F_k``) gets the weight
    ``1 / (M − F_k)``.

    Where ``M − F_k < ε`` (ε = 0.2) the log would diverge; the weight there follows the
    paper's code, huawei-noah/Federated-Learning ``FairFL/algs/algorithms.py``
    (``PropFair.local_updates.log_loss``; the repository's README presents FairFL as the
    implementation of this paper): for
    ``base − ce_loss < epsilon`` it returns ``ce_loss / base`` by default (weight ``1/M``,
    "for the bad performing batches, we enforce a constant to avoid divergence") and
    ``ce_loss / epsilon`` with ``huber=True`` (weight ``1/ε``, the linear continuation of the
    log at the cap). ``run.py`` there defaults to ``huber=False`` and ``base=2``, and its
    CIFAR-10 script passes neither ``--huber`` nor ε (0.2 is fixed). The third-party
    vaseline555/AAggFF ``src/client/propfairclient.py`` does the same as the default (its
    ``fair_const`` is M). The weight is therefore ``1/M`` above the cap by default and ``1/ε``
    with ``huber = true``.

    The authors apply the surrogate to every local batch loss; this is its server form with
    the clients' pre-training losses, and the weights are normalised to sum to one (fedmtl's
    convention, relative to ``mean``; the code's extra factor ``mean_k 1/(M − F_k)`` is a
    step size).
    """

    scope = "server"
    needs_losses = True

    class Params(NoParams):
        baseline: float = Field(5.0, gt=0, description="Baseline M (above every client's loss).")
        epsilon: float = Field(0.2, gt=0, description="Cap ε: where M − F_k < ε the weight is 1/M (or 1/ε).")
        huber: bool = Field(False, description="Weight 1/ε instead of 1/M where M − F_k < ε (the code's huber).")

    def compute(self, objectives: Objectives) -> torch.Tensor:
        gap = self.params.baseline - losses_of(objectives, self.name)
        above = 1.0 / (self.params.epsilon if self.params.huber else self.params.baseline)
        weights = torch.where(gap < self.params.epsilon, torch.full_like(gap, above), 1.0 / gap.clamp_min(1e-300))
        return weights / weights.sum()
