"""The local multi-task training loop (shared by clients and the centralized baseline).

Every step computes each task's loss on the batch. Heads receive their own task's plain
gradient ``∇L_t``; the backbone receives ``Σ_t c_t``, the per-task contributions of the
configured cross-task rule (``c_t = w_t ∇_θ L_t`` for a :class:`~fedmtl.aggregation.Weighting`,
the aggregator's own row parts for an :class:`~fedmtl.aggregation.Aggregator`) applied to the
step's :class:`~fedmtl.aggregation.Objectives`.

Rows of the objectives are, by ``gradients``:

``"representation"``
    ``∂L_t/∂z`` at the shared representation ``z`` (the MGDA-UB trick of Sener & Koltun,
    NeurIPS 2018): heads run on a detached copy of ``z``, each task's gradient is taken
    through its head alone, and ``z.backward(Σ_t w_t ∂L_t/∂z)`` sends the combined gradient
    through the backbone once. This equals backpropagating ``Σ_t w_t L_t`` exactly (the chain
    rule is linear in the upstream gradient).
``"backbone"``
    ``∇_θ L_t`` on every backbone parameter, all tasks in one batched (vmapped) backward
    pass; needed by aggregators (DB-MTL, GradDrop, ...), whose direction is not a weighted sum
    that could be applied at the representation.

**Per-task update parts.** With ``track_parts=True`` the backbone takes SGD steps with one
momentum buffer ``b_t`` and one accumulator ``a_t`` per task:
``b_t ← μ b_t + c_t``, ``θ ← θ − η Σ_t b_t``, ``a_t ← a_t − η b_t``. Because the momentum
recursion is linear, ``Σ_t b_t`` is exactly SGD's buffer and ``Σ_t a_t = θ_end − θ_start``:
the client's update decomposes into task parts (tests check the identity).

**Hooks of the personalization methods** (:mod:`fedmtl.training.methods`), off by
default (the loop is then exactly the one above): ``freeze`` keeps the backbone or the heads
as they are (their optimizer takes no step), and ``proximal`` adds the gradient
``s (θ − a)`` of ``s/2 ‖θ − a‖²`` to chosen parameters θ at every step (FedProx, Ditto). With
task parts, the backbone's share of it is split equally among the tasks' contributions, so
``Σ_t a_t = θ_end − θ_start`` still holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch

from fedmtl.aggregation import Aggregator, Objectives, Rule, Weighting
from fedmtl.aggregation.rule import NonFiniteObjectives
from fedmtl.data.federation import Split
from fedmtl.models import MultiTaskModel
from fedmtl.one_line import RULE_ERROR_LIMIT, described
from fedmtl.tasks import TaskSpec
from fedmtl.training.sgd import SGD

T = TypeVar("T")

Gradients = Literal["auto", "representation", "backbone"]
Group = Literal["backbone", "heads"]
"""A parameter group :func:`train_local` can freeze."""


def resolve_gradients(gradients: Gradients, weighting: Rule) -> Literal["representation", "backbone"]:
    """``"auto"`` -> ``"backbone"`` for an aggregator (it needs parameter rows), else representation."""
    if gradients == "auto":
        return "backbone" if weighting.needs_parameter_rows() else "representation"
    if gradients == "representation" and weighting.needs_parameter_rows():
        raise ValueError(
            f"rule '{weighting.name}' needs backbone-parameter rows; "
            "set client.gradients = 'backbone' or 'auto'"
        )
    return gradients


@dataclass
class TrainResult:
    """What a local training run reports.

    Attributes
    ----------
    num_examples : int
        Training examples seen per epoch.
    steps : int
        Optimiser steps taken.
    task_losses : dict[str, float]
        Mean training loss per task over all steps.
    task_weights : dict[str, float]
        Mean cross-task weight per task over all steps.
    parts : torch.Tensor or None
        ``(T, P)`` per-task parts of the backbone update (with ``track_parts``).
    """

    num_examples: int
    steps: int
    task_losses: dict[str, float] = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)
    parts: torch.Tensor | None = None


@dataclass
class StepResult:
    """What one local step computed.

    Attributes
    ----------
    losses : torch.Tensor
        ``(T,)`` task losses on the batch.
    weights : torch.Tensor
        ``(T,)`` task weights; for an aggregator the effective weights ``‖c_t‖ / ‖g_t‖`` of
        its row parts, or ``g_tᵀd / ‖g_t‖²`` (d's component along ``g_t``) when it has none.
    contributions : torch.Tensor or None
        ``(T, P)`` per-task backbone gradient contributions (flattened), when requested or
        when the rows are backbone gradients; ``None`` otherwise.
    """

    losses: torch.Tensor
    weights: torch.Tensor
    contributions: torch.Tensor | None = None


def _per_task_backbone(z: torch.Tensor, upstream: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """``(T, P)``: row t is the backbone gradient of ``z`` pulled back from ``upstream[t]``.

    One backward pass per task through the retained graph: on the CPU this is faster than one
    vmapped (``is_grads_batched``) pass at every T we measured (LeNet, T = 2 to 10:
    ``benchmarks/results/local_step.md``).
    """
    rows = []
    last = len(upstream) - 1
    for t, grad_z in enumerate(upstream):
        grads = torch.autograd.grad(_pairing(z, grad_z), params, retain_graph=t < last)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _pairing(z: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """The scalar ``⟨z, upstream⟩``: its backward pass reaches ``z`` with exactly ``upstream``
    (``1 · u = u`` in floating point), so it is ``z.backward(upstream)`` bit for bit.

    Why not ``z.backward(upstream)``: PyTorch checks an explicit upstream gradient with
    ``torch.fx.experimental.symbolic_shapes``, whose import (with sympy) costs about 0.4 s in every
    fresh process, at its first training step; a scalar's backward pass needs no such check.
    """
    if upstream.shape != z.shape:
        raise ValueError(f"upstream gradient of shape {tuple(upstream.shape)} for z of shape {tuple(z.shape)}")
    return (z * upstream.detach()).sum()


def multitask_step(
    model: MultiTaskModel,
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    tasks: list[TaskSpec],
    weighting: Rule,
    *,
    gradients: Gradients = "auto",
    track_parts: bool = False,
) -> StepResult:
    """Fill ``.grad`` of every parameter for one batch.

    Gradients are *accumulated* into ``.grad``; call ``zero_grad`` before. The backbone's
    ``.grad`` is ``Σ_t c_t``; with ``track_parts`` (or backbone rows) the per-task
    contributions are also returned.
    """
    mode = resolve_gradients(gradients, weighting)
    z = model.backbone(x)
    z_detached = z.detach().requires_grad_(True)
    losses, z_grads = [], []
    for t in tasks:
        loss = t.task_kind.loss(model.heads[t.name](z_detached), targets[t.name])
        params = list(model.heads[t.name].parameters())
        # one pass through head t alone: ∂L_t/∂z and head t's own plain gradient ∇L_t
        z_grad, *head_grads = torch.autograd.grad(loss, [z_detached, *params])
        for p, g in zip(params, head_grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g
        losses.append(loss.detach())
        z_grads.append(z_grad)
    losses_t = torch.stack(losses)
    objectives = Objectives(losses=losses_t, task_ids=[t.name for t in tasks])  # float64, CPU
    backbone = list(model.backbone.parameters())
    if not backbone:  # a backbone without parameters (model.backbone = "identity"): only the heads learn
        return _heads_only_step(weighting, objectives, z_grads, losses_t, track_parts)
    if mode == "backbone":
        rows = _per_task_backbone(z, torch.stack(z_grads), backbone)
        objectives.updates = rows
        if isinstance(weighting, Weighting):
            weights = _called(weighting, weighting, objectives)
            contributions = _finite_combination(weighting, weights, weights.to(rows)[:, None] * rows)
            _set_backbone_grad(backbone, contributions.sum(dim=0))
            return StepResult(losses_t, weights, contributions)
        return _aggregator_step(weighting, objectives, rows, backbone, losses_t, track_parts)
    if weighting.needs_updates:
        objectives.updates = torch.stack([g.flatten() for g in z_grads])
    weights = _called(weighting, weighting, objectives)
    scaled = _finite_combination(
        weighting, weights, torch.stack([w.to(z.dtype) * g for w, g in zip(weights, z_grads, strict=True)]))
    if track_parts:
        contributions = _per_task_backbone(z, scaled, backbone)
        _set_backbone_grad(backbone, contributions.sum(dim=0))
        return StepResult(losses_t, weights, contributions)
    _pairing(z, scaled.sum(dim=0)).backward()
    return StepResult(losses_t, weights)


def _finite_combination(rule: Rule, weights: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """``scaled`` (the task gradients times ``rule``'s weights, which are finite), refused when
    it is not finite: weights too large for the gradients' dtype (1e300 in float32) are the
    rule's doing, not a diverged training, which the next step's losses would have been blamed on.

    Raises
    ------
    RuleRaised
        Naming the rule and its weights.
    """
    if scaled.numel() and not math.isfinite(float(scaled.abs().amax())):
        shown = [float(f"{w:.6g}") for w in weights.tolist()[:8]]
        raise RuleRaised(f"client.weighting '{rule.name}' gave weights {shown} whose weighted task gradients are not "
                         f"finite in {scaled.dtype} (weights too large for the gradients)")
    return scaled


class RuleRaised(RuntimeError):
    """The client's cross-task rule raised: one line naming the rule and its error (a client's
    error reaches the server as its text only, without the exception's type)."""


def _called(rule: Rule, call: Callable[[Objectives], T], objectives: Objectives) -> T:
    """``call(objectives)``, an error of the rule's own named with the rule."""
    try:
        return call(objectives)
    except NonFiniteObjectives:
        raise  # the training diverged: not the rule's fault, and its message says so
    except Exception as exc:
        hint = ""
        if objectives.updates is None and isinstance(exc, AttributeError | TypeError) and "NoneType" in str(exc):
            hint = (f" (rule '{rule.name}' got no update rows: objectives.updates is None; a rule that reads them "
                    "declares needs_updates = True)")
        raise RuleRaised(f"client.weighting '{rule.name}' failed: {described(exc, RULE_ERROR_LIMIT)}{hint}") from exc


def _heads_only_step(
    weighting: Rule, objectives: Objectives, z_grads: list[torch.Tensor], losses: torch.Tensor, track_parts: bool
) -> StepResult:
    """The step of a backbone without parameters: the heads have their gradients, the rule
    only gives the task weights it reports (from representation rows); task parts are empty."""
    if not isinstance(weighting, Weighting):
        raise ValueError(f"rule '{weighting.name}' combines backbone gradients, but the backbone has no parameters")
    if weighting.needs_updates:
        objectives.updates = torch.stack([g.flatten() for g in z_grads])
    weights = _called(weighting, weighting, objectives)
    return StepResult(losses, weights, losses.new_zeros(len(losses), 0, dtype=torch.float32) if track_parts else None)


def _aggregator_step(
    aggregator: Aggregator,
    objectives: Objectives,
    rows: torch.Tensor,
    backbone: list[torch.Tensor],
    losses: torch.Tensor,
    track_parts: bool,
) -> StepResult:
    """The backbone gradient of an aggregator's direction, with its row parts when it has them."""
    result = _called(aggregator, aggregator.aggregate, objectives)
    if result.parts is None and track_parts:
        raise ValueError(f"aggregator '{aggregator.name}' has no per-task parts; it cannot split a client's update")
    _set_backbone_grad(backbone, result.direction)
    if result.parts is not None:
        weights = result.parts.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-30)
    else:
        weights = (rows @ result.direction) / (rows * rows).sum(dim=1).clamp_min(1e-30)
    return StepResult(losses, weights.to(torch.float64), result.parts)


def _per_parameter(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of the flat vector ``flat`` shaped like each of ``params`` (in order)."""
    pieces = torch.split(flat, [p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]


def _set_backbone_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    for p, g in zip(params, _per_parameter(flat, params), strict=True):
        p.grad = g.clone() if p.grad is None else p.grad + g


@dataclass
class Proximal:
    """The term ``strength/2 ‖θ − anchor‖²`` on chosen parameters: each step adds its gradient
    ``strength (θ − anchor)`` to theirs (:func:`train_local`).

    Attributes
    ----------
    strength : float
        μ of FedProx, λ of Ditto (≥ 0; 0 adds exact zeros).
    pairs : list of (torch.Tensor, torch.Tensor)
        ``(parameter, anchor)``: the anchor a detached tensor of the parameter's shape, on its device.
    """

    strength: float
    pairs: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def towards(cls, strength: float, params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor]) -> Proximal:
        """The term on ``params`` towards ``anchors`` (in the same order; copied to each parameter's device)."""
        pairs = [(p, a.detach().to(device=p.device, dtype=p.dtype).clone())
                 for p, a in zip(params, anchors, strict=True)]
        return cls(float(strength), pairs)

    @torch.no_grad()
    def gradients(self) -> dict[int, torch.Tensor]:
        """``{id(parameter): strength (θ − anchor)}`` now."""
        return {id(p): (p - a) * self.strength for p, a in self.pairs}


@torch.no_grad()
def _add_proximal(
    proximal: Proximal, backbone: list[torch.Tensor], heads: list[torch.Tensor], step: StepResult, parts: bool
) -> None:
    """Add ``proximal``'s gradient: to ``.grad``, or for the backbone with task parts to each
    task's contribution (an equal share)."""
    grads = proximal.gradients()
    direct = heads if parts else backbone + heads
    for p in direct:
        g = grads.get(id(p))
        if g is not None:
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
    if parts and any(id(p) in grads for p in backbone):
        flat = torch.cat([grads[id(p)].reshape(-1) if id(p) in grads else torch.zeros(p.numel(), device=p.device,
                                                                                       dtype=p.dtype)
                          for p in backbone])
        step.contributions = step.contributions + flat.to(step.contributions) / len(step.contributions)


class TaskPartsSGD:
    """SGD on the backbone with one momentum buffer and one accumulator per task.

    ``Σ_t`` of the accumulators equals the backbone's total change (module docstring).

    Parameters
    ----------
    params : list[torch.Tensor]
        Backbone parameters (updated in place).
    num_tasks : int
        T.
    lr, momentum : float
        As :class:`~fedmtl.training.sgd.SGD` (``torch.optim.SGD`` without dampening, Nesterov or weight decay).
    """

    def __init__(self, params: list[torch.Tensor], num_tasks: int, lr: float, momentum: float) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum
        size = sum(p.numel() for p in params)
        dtype, device = (params[0].dtype, params[0].device) if params else (torch.float32, None)
        self.buffers = torch.zeros(num_tasks, size, dtype=dtype, device=device)
        self.parts = torch.zeros(num_tasks, size, dtype=dtype, device=device)

    @torch.no_grad()
    def step(self, contributions: torch.Tensor) -> None:
        """One step with per-task gradient contributions ``(T, P)``."""
        if self.momentum:
            self.buffers.mul_(self.momentum).add_(contributions)
        else:
            self.buffers.copy_(contributions)
        delta = self.buffers * (-self.lr)
        self.parts.add_(delta)
        for p, change in zip(self.params, _per_parameter(delta.sum(dim=0), self.params), strict=True):
            p.add_(change)


def train_local(
    model: MultiTaskModel,
    data: Split,
    tasks: list[TaskSpec],
    weighting: Rule,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    device: torch.device,
    generator: torch.Generator,
    gradients: Gradients = "auto",
    track_parts: bool = False,
    freeze: Collection[Group] = (),
    proximal: Proximal | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` with SGD for ``epochs`` epochs.

    Parameters
    ----------
    model : MultiTaskModel
        Backbone and the heads of ``tasks``; moved to ``device`` by the caller.
    data : Split
        Local training data.
    tasks : list[TaskSpec]
        The tasks trained (the client's heads).
    weighting : Rule
        Cross-task rule (weighting or aggregator) of the backbone gradient at every step.
    epochs, batch_size, lr, momentum
        SGD settings.
    device : torch.device
        Where batches are moved.
    generator : torch.Generator
        Seeds the batch order (determinism).
    gradients : {"auto", "representation", "backbone"}
        Rows the weighting sees (module docstring).
    track_parts : bool
        Keep per-task accumulators; ``TrainResult.parts`` then holds the per-task parts of
        the backbone update (flattened, ``(T, P)``).
    freeze : collection of {"backbone", "heads"}
        Groups that do not move (no optimizer step; their gradients are still computed, so
        the cross-task rule sees the same rows; their BatchNorm layers, a plugin backbone's,
        normalise with their running statistics, which stay). A frozen backbone has zero task parts.
    proximal : Proximal, optional
        A proximal term added to the gradients of its parameters at every step (module docstring).
    """
    unknown = set(freeze) - {"backbone", "heads"}
    if unknown:
        raise ValueError(f"freeze names {sorted(unknown)}; the groups are 'backbone' and 'heads'")
    model.train()
    _freeze_batch_norm_statistics(model, freeze)
    backbone = list(model.backbone.parameters())
    heads = [p for head in model.heads.values() for p in head.parameters()]
    params = backbone + heads  # every parameter of the model (a backbone and its heads)
    head_optimizer = SGD(heads, lr=lr, momentum=momentum)
    parts_sgd = TaskPartsSGD(backbone, len(tasks), lr, momentum) if track_parts else None
    backbone_optimizer = None if track_parts or not backbone else SGD(backbone, lr=lr, momentum=momentum)
    loss_sum = torch.zeros(len(tasks), dtype=torch.float64)
    weight_sum = torch.zeros(len(tasks), dtype=torch.float64)
    steps = 0
    for _ in range(epochs):
        for x, targets in data.batches(batch_size, generator):
            x = x.to(device, non_blocking=True)
            targets = {t: y.to(device, non_blocking=True) for t, y in targets.items()}
            for p in params:  # model.zero_grad(set_to_none=True), without walking the modules
                p.grad = None
            step = multitask_step(
                model, x, targets, tasks, weighting, gradients=gradients, track_parts=track_parts
            )
            if proximal is not None:
                _add_proximal(proximal, backbone, heads, step, parts_sgd is not None)
            if "heads" not in freeze:
                head_optimizer.step()
            if "backbone" not in freeze:
                if parts_sgd is not None:
                    parts_sgd.step(step.contributions)
                elif backbone_optimizer is not None:
                    backbone_optimizer.step()
            loss_sum += step.losses.cpu().to(torch.float64)
            weight_sum += step.weights.cpu()
            steps += 1
        weighting.end_epoch()
    names = [t.name for t in tasks]
    return TrainResult(
        num_examples=len(data),
        steps=steps,
        task_losses=dict(zip(names, (loss_sum / max(steps, 1)).tolist(), strict=True)),
        task_weights=dict(zip(names, (weight_sum / max(steps, 1)).tolist(), strict=True)),
        parts=None if parts_sgd is None else parts_sgd.parts.cpu(),
    )


def _freeze_batch_norm_statistics(model: MultiTaskModel, freeze: Collection[Group]) -> None:
    """Put the BatchNorm layers of the frozen groups (a plugin backbone's) in evaluation mode: in
    training mode their running statistics would move, so a frozen backbone would change (FedRep's
    head phase would send an update with body-epochs = 0); they normalise with those statistics."""
    parts = [model.backbone] * ("backbone" in freeze) + list(model.heads.values()) * ("heads" in freeze)
    for part in parts:
        for module in part.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def measure_losses(
    model: MultiTaskModel, data: Split, tasks: list[TaskSpec], *, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean loss per task of ``model`` on all of ``data`` (no training).

    Clients call it before local training: the loss of the global backbone (with their
    heads) that q-FFL, AFL, TERM, FedFV and PropFair weight by.
    """
    model.eval()
    totals = torch.zeros(len(tasks), dtype=torch.float64)
    count = 0
    for x, targets in data.batches(batch_size, None):
        x = x.to(device)
        z = model.backbone(x)
        for i, t in enumerate(tasks):
            loss = t.task_kind.loss(model.heads[t.name](z), targets[t.name].to(device))
            totals[i] += float(loss) * len(x)
        count += len(x)
    model.train()
    return {t.name: float(totals[i] / max(count, 1)) for i, t in enumerate(tasks)}
