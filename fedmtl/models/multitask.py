"""The multi-task model: one shared backbone, one head per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedmtl.models.backbones import BACKBONES
from fedmtl.models.heads import make_head
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import ModelSection


HEADS_PREFIX = "heads."


class MultiTaskModel(nn.Module):
    """A shared backbone and a ``ModuleDict`` of heads keyed by task name.

    Parameters
    ----------
    backbone : nn.Module
        Maps inputs to a representation; must expose ``out_dim``.
    heads : dict[str, nn.Module]
        One head per task name.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    @property
    def task_names(self) -> list[str]:
        """Task names, in head order."""
        return list(self.heads.keys())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of every head for inputs ``x``."""
        z = self.backbone(x)
        return {name: head(z) for name, head in self.heads.items()}

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The shared (federated) parameters and buffers."""
        return self.backbone.state_dict()

    def heads_state(self) -> dict[str, torch.Tensor]:
        """The personal parameters, keyed ``"<task>.<param>"``."""
        return self.heads.state_dict()

    def federated_state(self, global_heads: bool = False) -> dict[str, torch.Tensor]:
        """What the server holds: the backbone, plus the heads (``"heads.<task>.<param>"``)
        when they are global (``model.heads = "global"``)."""
        state = dict(self.backbone_state())
        if global_heads:
            state.update({f"{HEADS_PREFIX}{k}": v for k, v in self.heads_state().items()})
        return state

    def load_federated_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`federated_state` output: the backbone, and the heads of this model's
        tasks when ``state`` carries heads (other tasks' heads are ignored)."""
        self.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEADS_PREFIX)})
        heads = {k[len(HEADS_PREFIX):]: v for k, v in state.items() if k.startswith(HEADS_PREFIX)}
        if heads:
            own = {k: v for k, v in heads.items() if k.split(".", 1)[0] in self.heads}
            self.heads.load_state_dict(own)


def build_model(
    model_cfg: ModelSection, input_shape: Sequence[int], tasks: Sequence[TaskSpec]
) -> MultiTaskModel:
    """Build the configured backbone and one head per task.

    Parameters
    ----------
    model_cfg : ModelSection
        The ``[model]`` section of the config.
    input_shape : Sequence[int]
        Shape of one input example.
    tasks : Sequence[TaskSpec]
        The tasks to give heads to.
    """
    backbone = BACKBONES.get(model_cfg.backbone)(tuple(input_shape), out_dim=model_cfg.width)
    heads = {t.name: make_head(backbone.out_dim, t.output_dim, model_cfg.head_hidden) for t in tasks}
    return MultiTaskModel(backbone, heads)
