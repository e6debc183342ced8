"""Local training: no federation, each client trains its own model alone (the lower bound)."""

from __future__ import annotations

import copy

import torch

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.models import MultiTaskModel
from fedmtl.protocol import TEST
from fedmtl.training import TrainResult
from fedmtl.training.methods.base import PERSONAL, ClientRun, Method, Metrics, initial_state, register

BACKBONE_PREFIX = "backbone."
"""Keys of the client's own backbone in its personal state (``run.personal``)."""


@register
class Local(Method):
    """Each client trains its own whole model alone and learns nothing from the others: the
    lower bound of federated personalization (every personalized-FL paper's "local" baseline).

    A client's model is its own backbone (in its store, with its heads; it starts as the
    server's initial backbone) and its personal heads. When sampled, it trains them for
    ``client.epochs`` epochs as FedPer would and replies a zero update (and zero task parts):
    nothing it learnt leaves it, and the global model stays at its initialisation (the server
    has nothing to combine: ``server.weighting = "fedavg"`` and ``server.plan = "clients"``).
    Evaluation reports its own model under ``test``.
    """

    name = "local"
    heads = (PERSONAL,)
    keeps_state = True
    trains = "its own whole model, alone"
    keeps = "the whole model"
    costs = "as FedPer (its update is zeros)"
    paper = "the local-training baseline (e.g. Ditto's Table 2)"

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: object) -> None:
        if cfg.server.weighting != "fedavg" or cfg.server.plan != "clients":
            raise ValueError(
                f"personalization.method = 'local' sends nothing to combine: server.weighting = "
                f"{cfg.server.weighting!r} and server.plan = {cfg.server.plan!r} have no meaning; use "
                "server.weighting = 'fedavg' and server.plan = 'clients'")

    @staticmethod
    def own_backbone(run: ClientRun) -> dict[str, torch.Tensor]:
        """The client's backbone: from its store, else the server's initial one."""
        own = {k[len(BACKBONE_PREFIX):]: v for k, v in run.personal.items() if k.startswith(BACKBONE_PREFIX)}
        if own:
            return own
        return {k: v for k, v in initial_state(run.cfg).items() if not k.startswith("heads.")}

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        received = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
        run.model.backbone.load_state_dict(self.own_backbone(run))
        result = run.train(run.model, weighting, track_parts=track_parts)
        own = run.model.backbone.state_dict()
        run.personal = {BACKBONE_PREFIX + k: v.detach().cpu().clone() for k, v in own.items()}
        run.model.backbone.load_state_dict(received)  # the reply's update is zero
        if result.parts is not None:
            result.parts = torch.zeros_like(result.parts)
        return result

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        own: MultiTaskModel = copy.deepcopy(run.model)
        own.backbone.load_state_dict(self.own_backbone(run))
        return {TEST: run.evaluate(own)}
