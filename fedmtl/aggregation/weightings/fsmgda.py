"""``fsmgda``: federated (stochastic) multi-gradient descent averaging, the server's min-norm step."""

from __future__ import annotations

import torch

from fedmtl.aggregation.gramian import GramianWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.solvers.min_norm import min_norm_weights


@register("fsmgda")
class FSMGDA(GramianWeighting):
    """FMGDA / FSMGDA: the min-norm combination of the client-averaged per-objective updates.

    Yang, Liu, Liu, Dong & Momma, "Federated Multi-Objective Learning", NeurIPS 2023
    (arXiv 2310.09866). Each client ``i`` returns one accumulated update ``Δ_i^s`` per
    objective ``s`` it holds (FMGDA with full local gradients, FSMGDA with stochastic
    ones: the server step is the same); the server averages them per objective over the
    clients that hold it, ``Δ^s = (1/|R_s|) Σ_{i∈R_s} Δ_i^s``, solves
    ``λ = argmin_{λ∈Δ} ‖Σ_s λ_s Δ^s‖²`` and steps along ``d = Σ_s λ_s Δ^s``. That server
    step is exactly MGDA on the aggregated objective rows, with no normalisation of the
    rows (unlike MGDA-UB's ``l2`` / ``loss`` normalisers or FedMGDA+'s unit rows), so this
    rule solves the same quadratic program as ``mgda`` (``solvers/min_norm.py``, exact,
    least-norm λ on Pareto-stationary rows). It is registered under its own name for the
    server, where it belongs: the paper's algorithm is this rule as the *task* level of the
    ``tasks-then-clients`` plan:

        [server]
        plan = "tasks-then-clients"
        weighting = "mean"        # Δ^s: uniform mean over the clients holding task s
        task-weighting = "fsmgda"

        [client]
        weighting = "mean"        # clients do not combine their tasks themselves

    (``fedavg`` instead of ``mean`` weights the clients by examples, which the paper does
    not.) The plan's factor (× the task count) cancels the clients' 1/T, so the step is
    ``Σ_s λ_s Δ^s`` with the clients' and the server's learning rates as the paper's local
    and global step sizes. Under ``flat`` the same QP would run over every (client, task)
    row, which is not FMGDA; under ``clients`` it is plain MGDA across clients.

    One difference remains and cannot be removed by a server rule: the paper's clients run
    one local trajectory *per objective* (S local runs from the global model), while a
    fedmtl client runs one trajectory on its combined task loss and reports each task's
    share of it (the per-task accumulators of the task-part plans). The two coincide for
    one local step and agree to first order in the local learning rate otherwise.
    UNVERIFIED: the paper's text could not be re-read here and no official code was found;
    the server step above is the one summarised in ``REFERENCES.md`` (section 7). In
    particular, whether Δ^s is a uniform or an example-weighted mean over the clients, and
    whether the authors normalise the Δ^s before the QP in their experiments, are not
    checked.
    """

    scope = "server"
    claims = ("non-conflicting",)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(min_norm_weights(gramian.numpy()))
