"""No personalization: one global model, heads federated with the backbone."""

from __future__ import annotations

from fedmtl.training.methods.base import GLOBAL, Method, register


@register
class NoPersonalization(Method):
    """One global model: the heads are federated with the backbone (FedAvg's model, as in
    q-FFL, AFL, ...; ``model.heads = "global"``).

    Local training is ``fedmtl.training.train_local`` of the whole model; the client replies
    the update of backbone and heads and keeps nothing but its weighting's state. The global
    model is evaluated under ``test``.
    """

    name = "none"
    heads = (GLOBAL,)
    trains = "the whole model"
    keeps = "nothing"
    costs = "as FedAvg"
    paper = "McMahan et al. 2017"
