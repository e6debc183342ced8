"""APFL: a personal model per client, mixed with the global one, v̄ = α v + (1 − α) w."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import torch
from pydantic import Field

from fedmtl.aggregation import Rule
from fedmtl.config import ExperimentConfig
from fedmtl.data import Split
from fedmtl.models import MultiTaskModel
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.training import TrainResult
from fedmtl.training.local import multitask_step
from fedmtl.training.methods.base import (
    GLOBAL,
    PERSONAL,
    ClientRun,
    Method,
    Metrics,
    NoParams,
    personal_model,
    personal_state,
    register,
)
from fedmtl.training.sgd import SGD

ALPHA_KEY = "alpha"
"""The client's mixing weight α after its last training (float64 scalar)."""

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


def mixture(v: MultiTaskModel, w: MultiTaskModel, alpha: float) -> dict[str, torch.Tensor]:
    """The state of v̄ = α v + (1 − α) w, entry by entry (``w``'s entries that are not floating
    point). A plugin backbone's BatchNorm statistics mix alike: v's are those gathered by v̄'s
    forward passes in training (:class:`PersonalStep`), so α = 1 evaluates v with its own
    statistics, as plain local training would, and α = 0 evaluates w exactly."""
    w_state = w.state_dict()
    return {k: alpha * p + (1 - alpha) * w_state[k] if p.is_floating_point() else w_state[k].clone()
            for k, p in v.state_dict().items()}


def mixed_model(v: MultiTaskModel, w: MultiTaskModel, alpha: float) -> MultiTaskModel:
    """A new model holding v̄ = α v + (1 − α) w (:func:`mixture`), on ``w``'s device."""
    model = copy.deepcopy(w)
    model.load_state_dict(mixture(v, w, alpha))
    return model


@register
class APFL(Method):
    """Each client keeps a personal model v and a mixing weight α; its personalized model is
    v̄ = α v + (1 − α) w, w being the global model (Deng, Kamani & Mahdavi, "Adaptive
    Personalized Federated Learning", arXiv:2003.13461, 2020).

    Every local step on a mini-batch ξ does, from the same w, v and α (the paper's Algorithm 1):
    w steps on its own loss as without personalization (its update is sent); v steps on the
    loss of the mixture, whose gradient with respect to v is α ∇f(v̄; ξ), with the client's
    learning rate, momentum and cross-task weighting (a new instance, as Ditto's personal model);
    and, with ``adaptive-alpha``, α steps on the same loss: α ← α − η_α ⟨v − w, ∇f(v̄; ξ)⟩,
    clipped to [0, 1] (the paper's update; η_α = ``alpha-lr``, or the client's learning rate as
    in the paper). ∇f is the gradient local training uses (the weighted task losses on the
    backbone, each task's own loss on its head). The paper's code updates α at the first step
    of each round only, adds 0.02 α to its gradient and mixes the models' outputs; here the
    mixture is of the parameters and α moves at every step, as the paper writes it.

    v and α live in the client's store with its heads and never leave it. A client's v starts
    as the model it held at round 0 (as Ditto's), its α at ``alpha``. Evaluation reports v̄
    (mixed with the global model received for evaluation) under ``test`` and the global model
    under ``test-global``. α = 0 makes v̄ the global model; α = 1 trains v as plain local
    training, and v̄ = v.
    """

    name = "apfl"
    heads = (GLOBAL, PERSONAL)
    keeps_state = True
    views = (TEST, TEST_GLOBAL)
    trains = "the global model w, and a personal model v through the mixture v̄ = α v + (1 − α) w"
    keeps = "a whole personal model (backbone and heads) and its α"
    costs = "2 × FedAvg's local training (one more forward and backward per step); a model per client in its store"
    paper = "Deng, Kamani & Mahdavi 2020 (arXiv:2003.13461)"

    class Params(NoParams):
        alpha: float = Field(0.5, ge=0, le=1, description="α, the personal model's share of the mixture "
                             "(the initial one with adaptive-alpha; 0 = the global model, 1 = the personal one). "
                             "0.5 is the default of the paper's code (FedTorch).")
        adaptive_alpha: bool = Field(False, description="Learn each client's α by gradient descent on the "
                                     "mixture's loss (the paper's adaptive APFL).")
        alpha_lr: float = Field(0.0, ge=0, description="Step size of α's update with adaptive-alpha "
                                "(0 = client.lr, the paper's choice).")

    @classmethod
    def check(cls, cfg: ExperimentConfig, params: Params) -> None:
        if params.alpha_lr and not params.adaptive_alpha:
            raise ValueError(
                f"personalization.params.alpha-lr = {params.alpha_lr:g} is the step size of α's update, but "
                "personalization.params.adaptive-alpha = false keeps α fixed; set adaptive-alpha = true or "
                "drop alpha-lr")

    def alpha(self, run: ClientRun) -> float:
        """The client's α: its learnt one (``adaptive-alpha``, once trained), else ``alpha``."""
        if self.params.adaptive_alpha and ALPHA_KEY in run.personal:
            return float(run.personal[ALPHA_KEY])
        return float(self.params.alpha)

    def train(self, run: ClientRun, weighting: Rule, *, track_parts: bool = False) -> TrainResult:
        personal = personal_model(run)
        alpha_lr = (self.params.alpha_lr or run.cfg.client.lr) if self.params.adaptive_alpha else None
        step = PersonalStep(run, personal, run.model, self.alpha(run), alpha_lr)
        beside = dataclasses.replace(run, data=dataclasses.replace(run.data, train=Interleaved(run.data.train, step)))
        result = beside.train(run.model, weighting, track_parts=track_parts)
        run.personal = personal_state(personal)
        run.personal[ALPHA_KEY] = torch.tensor(step.alpha, dtype=torch.float64)
        return result

    def evaluate(self, run: ClientRun) -> dict[str, Metrics]:
        mixed = mixed_model(personal_model(run).to(run.device), run.model, self.alpha(run))
        return {TEST: run.evaluate(mixed), TEST_GLOBAL: run.evaluate(run.model)}


class PersonalStep:
    """The personal side of one APFL local step: v and α from v̄ = α v + (1 − α) w.

    Parameters
    ----------
    run : ClientRun
        The call (its tasks, device, client settings, weighting factory).
    v, w : MultiTaskModel
        The personal model (trained in place) and the global one being trained (read only).
    alpha : float
        The client's α now.
    alpha_lr : float or None
        The step size of α's update (``None``: α stays).
    """

    def __init__(self, run: ClientRun, v: MultiTaskModel, w: MultiTaskModel, alpha: float,
                 alpha_lr: float | None) -> None:
        c = run.cfg.client
        self.run, self.v, self.alpha, self.alpha_lr = run, v.to(run.device), alpha, alpha_lr
        self.mixed = copy.deepcopy(self.v).train()
        self.weighting = run.new_weighting()
        v.train()
        heads = [p for head in v.heads.values() for p in head.parameters()]  # as train_local's optimizers
        groups = [heads, list(v.backbone.parameters())]  # (a backbone may have no parameters)
        self.optimizers = [SGD(group, lr=c.lr, momentum=c.momentum) for group in groups if group]
        self.triples = list(zip(v.parameters(), w.parameters(), self.mixed.parameters(), strict=True))

    def __call__(self, batch: Batch) -> None:
        """One step on ``batch``, with w as it is before its own step on it."""
        device = self.run.device
        x, targets = batch[0].to(device), {t: y.to(device) for t, y in batch[1].items()}
        a = self.alpha
        with torch.no_grad():
            for pv, pw, pm in self.triples:
                pm.copy_(a * pv + (1 - a) * pw)
        self.mixed.zero_grad(set_to_none=True)
        multitask_step(self.mixed, x, targets, self.run.tasks, self.weighting, gradients=self.run.cfg.client.gradients)
        grads = [torch.zeros_like(pm) if pm.grad is None else pm.grad for _, _, pm in self.triples]
        with torch.no_grad():
            slope = sum(float(((pv - pw) * g).sum()) for (pv, pw, _), g in zip(self.triples, grads, strict=True))
            for (pv, _, _), g in zip(self.triples, grads, strict=True):
                pv.grad = a * g  # ∇_v f(α v + (1 − α) w) = α ∇f(v̄)
        for optimizer in self.optimizers:
            optimizer.step()
        with torch.no_grad():  # v̄'s forward pass updated its running statistics: v keeps them (mixture)
            for kept, updated in zip(self.v.buffers(), self.mixed.buffers(), strict=True):
                kept.copy_(updated)
        if self.alpha_lr is not None:  # ∂f(v̄)/∂α = ⟨v − w, ∇f(v̄)⟩
            self.alpha = min(1.0, max(0.0, a - self.alpha_lr * slope))

    def end_epoch(self) -> None:
        """End of an epoch of the personal weighting (as :func:`~fedmtl.training.train_local` ends its own)."""
        self.weighting.end_epoch()


class Interleaved:
    """A training split whose mini-batches also step the personal model: each batch is handed
    to ``step`` just before local training takes it, so v's step and w's step on one batch start
    from the same w (:func:`~fedmtl.training.train_local` takes its batches one at a time)."""

    def __init__(self, split: Split, step: PersonalStep) -> None:
        self.split, self.step = split, step

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """:meth:`Split.batches`, stepping the personal model before each batch is yielded."""
        for batch in self.split.batches(batch_size, generator):
            self.step(batch)
            yield batch
        self.step.end_epoch()
