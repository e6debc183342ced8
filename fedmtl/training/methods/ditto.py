"""Ditto: a personal model per client, trained next to the global one with a pull towards it."""

from __future__ import annotations

import copy

import torch
from pydantic import Field, field_validator

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.models import MultiTaskModel
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.training import TrainResult, measure_losses
from fedmtl.training.local import Proximal
from fedmtl.training.methods.base import (
    GLOBAL,
    PERSONAL,
    ClientRun,
    Method,
    Metrics,
    NoParams,
    global_view,
    personal_model,
    personal_state,
    register,
    stable_step_problem,
)

LAMBDA_KEY = "lambda"
"""The λ the personal model was last trained with (float64 scalar; the chosen one with a grid)."""
MIN_VALIDATION = 4
"""Fewer validation examples than this: λ is not chosen, ``lambda`` is used (as the paper does)."""


@register
class Ditto(Method):
    """Global training as usual, and next to it a personal model v per client (backbone and
    heads) trained on the local objective plus λ/2 ‖v − w‖², w being the global model the client
    received this round (Li, Hu, Beirami & Smith, "Ditto: Fair and Robust Federated Learning
    Through Personalization", ICML 2021).

    Each round a client trains the received model as the other methods do (its update is
    sent) and, from its stored v, trains v for ``client.epochs`` epochs with the same settings
    and the same mini-batches, the gradient of every parameter of v gaining λ (v − w) (the
    paper's update, with the client's momentum). v lives in the client's store with its heads
    and never leaves it. A client's v starts as the model it held at round 0 (the initial global
    model; with ``model.heads = "personal"`` its own first-visit heads), as in the paper's code,
    so a client that never trained has an untrained personal model.

    ``lambda-grid`` (a list) picks λ per client and per round, as the paper's per-client
    selection by validation loss: each candidate trains its own copy of v from the same start
    on the same batches, and the copy with the lowest mean task loss on the client's validation
    split (``data.validation-fraction``, held out of the client's examples and never trained on)
    is kept; with fewer than 4 validation examples ``lambda`` is used. (The paper's code picks
    among the candidates at every step; choosing per round keeps each candidate a whole local
    run.) It costs one personal training per candidate.

    Evaluation reports v under ``test`` and the global model under ``test-global``. λ = 0 is
    plain local training of v; as λ grows v stays at w.
    """

    name = "ditto"
    heads = (GLOBAL, PERSONAL)
    keeps_state = True
    views = (TEST, TEST_GLOBAL)
    trains = "the global model, and a personal copy pulled towards it (λ/2‖v − w‖²)"
    keeps = "a whole personal model (backbone and heads)"
    costs = "2 × FedAvg's local training (1 + grid size with lambda-grid); a model per client in its store"
    paper = "Li, Hu, Beirami & Smith, ICML 2021"

    class Params(NoParams):
        lam: float = Field(0.1, ge=0, alias="lambda", description="λ, the pull of the personal model towards the "
                           "global one (0 = local training).")
        lambda_grid: list[float] = Field(
            default_factory=list, description="Candidates of λ chosen per client by validation loss, e.g. "
            "[0.1, 1, 2] (the paper's); [] = always lambda. Needs data.validation-fraction > 0.")

        @field_validator("lambda_grid")
        @classmethod
        def _non_negative(cls, grid: list[float]) -> list[float]:
            if any(lam < 0 for lam in grid):
                raise ValueError("every λ must be ≥ 0")
            return grid

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: Params) -> None:
        for key, lam in [("personalization.params.lambda", params.lam),
                         *(("personalization.params.lambda-grid", lam) for lam in params.lambda_grid)]:
            problem = stable_step_problem(key, lam, cfg)
            if problem:
                raise ValueError(problem)
        if params.lambda_grid and cfg.data.validation_fraction == 0:
            raise ValueError("personalization.params.lambda-grid chooses λ by validation loss, but "
                             "data.validation-fraction = 0 holds out no validation data; set it > 0 (e.g. 0.1)")

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        anchor = [p.detach().clone() for p in run.model.parameters()]  # w, as received
        personal = personal_model(run)
        result = run.train(run.model, weighting, track_parts=track_parts)
        grid, validation = self.params.lambda_grid, run.data.validation
        if grid and validation is not None and len(validation) >= MIN_VALIDATION:
            trained = [self._train_personal(run, copy.deepcopy(personal), anchor, lam) for lam in grid]
            losses = [self._validation_loss(run, v) for v in trained]
            best = min(range(len(grid)), key=losses.__getitem__)
            lam, personal = grid[best], trained[best]
        else:
            lam = self.params.lam
            self._train_personal(run, personal, anchor, lam)
        run.personal = personal_state(personal)
        run.personal[LAMBDA_KEY] = torch.tensor(float(lam), dtype=torch.float64)
        return result

    @staticmethod
    def _train_personal(run: ClientRun, v: MultiTaskModel, anchor: list[torch.Tensor], lam: float) -> MultiTaskModel:
        run.train(v, run.new_weighting(), proximal=Proximal.towards(lam, list(v.parameters()), anchor))
        return v

    @staticmethod
    def _validation_loss(run: ClientRun, v: MultiTaskModel) -> float:
        assert run.data.validation is not None
        losses = measure_losses(v, run.data.validation, run.tasks, batch_size=run.cfg.client.batch_size,
                                device=run.device)
        return sum(losses.values()) / len(losses)

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        return global_view(run, personal_model(run))


