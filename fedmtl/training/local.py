"""The local multi-task training loop (shared by clients and the centralized baseline).

Every step computes each task's loss on the batch. Heads receive their own task's plain
gradient ``∇L_t``; the backbone receives ``Σ_t w_t ∇L_t`` where ``w`` comes from the
configured cross-task :class:`~fedmtl.aggregation.Weighting` applied to the step's
:class:`~fedmtl.aggregation.Objectives`.

The backbone's part is pushed through the representation ``z``: heads run on a detached
copy of ``z``, each task's gradient with respect to ``z`` is taken through its head alone,
and ``z.backward(Σ_t w_t ∂L_t/∂z)`` then sends the combined gradient through the backbone
once. This equals backpropagating ``Σ_t w_t L_t`` into the backbone exactly (the chain
rule is linear in the upstream gradient), while each head keeps weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedmtl.aggregation import Objectives, Weighting
from fedmtl.data.federation import Split
from fedmtl.models import MultiTaskModel
from fedmtl.tasks import TaskSpec


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
    """

    num_examples: int
    steps: int
    task_losses: dict[str, float] = field(default_factory=dict)
    task_weights: dict[str, float] = field(default_factory=dict)


def multitask_step(
    model: MultiTaskModel,
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    tasks: list[TaskSpec],
    weighting: Weighting,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``.grad`` of every parameter for one batch; return (losses, weights).

    Gradients are *accumulated* into ``.grad``; call ``zero_grad`` before.
    """
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
    losses = torch.stack(losses)
    objectives = Objectives(losses=losses.to(torch.float64))
    if weighting.needs_updates:
        objectives.updates = torch.stack([g.flatten() for g in z_grads])
    weights = weighting(objectives)
    combined = sum(w.to(z.dtype) * g for w, g in zip(weights, z_grads, strict=True))
    z.backward(combined)
    return losses, weights


def train_local(
    model: MultiTaskModel,
    data: Split,
    tasks: list[TaskSpec],
    weighting: Weighting,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    device: torch.device,
    generator: torch.Generator,
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
    weighting : Weighting
        Cross-task weighting of the backbone gradient at every step.
    epochs, batch_size, lr, momentum
        SGD settings.
    device : torch.device
        Where batches are moved.
    generator : torch.Generator
        Seeds the batch order (determinism).
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_sum = torch.zeros(len(tasks), dtype=torch.float64)
    weight_sum = torch.zeros(len(tasks), dtype=torch.float64)
    steps = 0
    for _ in range(epochs):
        for x, targets in data.batches(batch_size, generator):
            x = x.to(device, non_blocking=True)
            targets = {t: y.to(device, non_blocking=True) for t, y in targets.items()}
            optimizer.zero_grad(set_to_none=True)
            losses, weights = multitask_step(model, x, targets, tasks, weighting)
            optimizer.step()
            loss_sum += losses.cpu().to(torch.float64)
            weight_sum += weights.cpu()
            steps += 1
    names = [t.name for t in tasks]
    return TrainResult(
        num_examples=len(data),
        steps=steps,
        task_losses=dict(zip(names, (loss_sum / max(steps, 1)).tolist(), strict=True)),
        task_weights=dict(zip(names, (weight_sum / max(steps, 1)).tolist(), strict=True)),
    )
