"""FedProx: local training with a proximal term towards the received global model."""

from __future__ import annotations

from pydantic import Field

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.training import TrainResult
from fedmtl.training.local import Proximal
from fedmtl.training.methods.base import (
    GLOBAL,
    PERSONAL,
    ClientRun,
    Method,
    NoParams,
    register,
    stable_step_problem,
)


@register
class FedProx(Method):
    """The local objective gains μ/2 ‖θ − w‖² on the federated parameters θ, w being the global
    model received this round (Li et al., "Federated Optimization in Heterogeneous Networks",
    MLSys 2020).

    At every local step the federated parameters' gradient gains μ (θ − w) (the backbone's, and
    the heads' when they are global; personal heads train freely). μ = 0 is local training as
    without the term. The paper's model is one global model (``model.heads = "global"``, the
    default here); with personal heads it is FedPer with the term on the backbone. Its one model
    is evaluated under ``test``.
    """

    name = "fedprox"
    heads = (GLOBAL, PERSONAL)
    trains = "the federated parameters, pulled towards the received global model"
    keeps = "nothing (personal heads with model.heads = 'personal')"
    costs = "as FedAvg (one more vector operation per step)"
    paper = "Li et al., MLSys 2020"

    class Params(NoParams):
        mu: float = Field(0.01, ge=0, description="μ, the proximal strength (the paper tries 0.001 to 1).")

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: Params) -> None:
        problem = stable_step_problem("personalization.params.mu", params.mu, cfg)
        if problem:
            raise ValueError(problem)

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        model = run.model
        federated = list(model.backbone.parameters())
        if run.global_heads:
            federated += [p for head in model.heads.values() for p in head.parameters()]
        proximal = Proximal.towards(self.params.mu, federated, [p.detach() for p in federated])
        return run.train(model, weighting, track_parts=track_parts, proximal=proximal)
