"""Multi-task models: a shared backbone plus one head per task.

``build_model(model_cfg, input_shape, tasks)`` builds a :class:`MultiTaskModel` from a
registered backbone (``"lenet"``, ``"mlp"``, ``"identity"``) and one head per :class:`~fedmtl.tasks.TaskSpec`.
"""

from fedmtl.models.backbones import BACKBONES, IdentityBackbone, LeNetBackbone, MLPBackbone
from fedmtl.models.heads import make_head
from fedmtl.models.multitask import MultiTaskModel, build_model

__all__ = [
    "BACKBONES",
    "IdentityBackbone",
    "LeNetBackbone",
    "MLPBackbone",
    "MultiTaskModel",
    "build_model",
    "make_head",
]
