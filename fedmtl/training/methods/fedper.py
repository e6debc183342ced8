"""FedPer: personal heads, a federated backbone (fedmtl's default)."""

from __future__ import annotations

from fedmtl.training.methods.base import PERSONAL, Method, register


@register
class FedPer(Method):
    """Each client keeps its own task heads; only the backbone is federated (Arivazhagan et al.,
    "Federated Learning with Personalization Layers", 2019).

    Local training trains the backbone and the client's heads together
    (``fedmtl.training.train_local``); the client replies the backbone's update and keeps
    its heads. Its one model (global backbone + own heads) is evaluated under ``test``.
    """

    name = "fedper"
    heads = (PERSONAL,)
    trains = "backbone and own heads, together"
    keeps = "the heads"
    costs = "as FedAvg"
    paper = "Arivazhagan et al. 2019"
