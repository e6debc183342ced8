"""``cr-mogm``: an exponential moving average of any weighting's weights."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import RULES, make_rule, register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting, Weights, validate_params


@register("cr-mogm")
class CRMOGM(Weighting):
    """CR-MOGM: smooth an inner weighting's weights, ``λ_k = α λ_{k−1} + (1 − α) λ̂_k``.

    Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic Multi-Objective
    Gradient Manipulation and Beyond", NeurIPS 2022 (no arXiv id checked). The same rule as
    torchjd 0.18's ``CRMOGMWeighting``: ``λ̂_k`` are the weights of the weighting named by
    ``inner`` (with ``inner-params``), and the first smoothed weights are ``λ̂_1`` (torchjd's
    default, without ``initial_weights``). Smoothing is per row key: a key seen for the first
    time starts at its inner weight.

    Only weightings can be smoothed (an aggregator gives no weights). The inner rule reads what
    it reads (rows, losses, backbone rows) and keeps its own state, which is part of this
    rule's state; its scale is kept. An average of weights keeps each universal property of
    the inner weighting's (the guarantees listed are those of the default, MGDA), and it runs
    where the inner weighting may run: choose one whose scope fits the key it is set at
    (validation checks ``cr-mogm``'s own scope only). Defaults: α = 0.9 (torchjd's; the paper's Corollary 1
    instead lets α_k grow towards 1 as the learning rate decays, a schedule not implemented
    here) and ``inner = "mgda"`` (MGDA is the paper's main example; UNVERIFIED which rule the
    authors' experiments default to).
    """

    needs_updates = True
    state_attributes = ("smoothed", "inner_state")

    class Params(NoParams):
        inner: str = Field("mgda", description="Registered weighting whose weights are smoothed.")
        inner_params: dict[str, Any] = Field({}, description="Parameters of the inner weighting.")
        alpha: float = Field(
            0.9, ge=0, le=1, description="Weight α of the previous smoothed weights (0: no smoothing)."
        )

        @field_validator("inner")
        @classmethod
        def _a_weighting(cls, name: str) -> str:
            if name not in RULES:
                raise ValueError(RULES.unknown_message(name))
            if not issubclass(RULES.get(name), Weighting):
                raise ValueError(
                    f"'{name}' is an aggregator: CR-MOGM smooths weights, so its inner rule must be a weighting"
                )
            return name

        @field_validator("inner_params")
        @classmethod
        def _valid_for_inner(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
            if "inner" in info.data:  # else the inner name is already reported
                validate_params(RULES.get(info.data["inner"]), params)
            return params

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        inner = make_rule(self.params.inner, self.context, **self.params.inner_params)
        assert isinstance(inner, Weighting)
        self.inner = inner
        self.smoothed: dict[str, float] = {}
        # what this rule reads, and how its weights behave, are its inner weighting's
        self.needs_updates = inner.needs_updates
        self.needs_losses = inner.needs_losses
        self.deterministic = inner.deterministic
        self.nonnegative = inner.nonnegative
        self.needs_parameter_rows = inner.needs_parameter_rows  # type: ignore[method-assign]

    @property
    def inner_state(self) -> dict[str, Any]:
        """The inner weighting's state (part of this rule's checkpoint)."""
        return self.inner.state_dict()

    @inner_state.setter
    def inner_state(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def compute(self, objectives: Objectives) -> Weights:
        result = self.inner.weigh(objectives)
        keys = objectives.keys()
        fresh = result.weights
        previous = torch.tensor([self.smoothed.get(k, float(w)) for k, w in zip(keys, fresh, strict=True)],
                                dtype=torch.float64)
        alpha = self.params.alpha
        smoothed = alpha * previous + (1.0 - alpha) * fresh
        self.smoothed.update(zip(keys, smoothed.tolist(), strict=True))
        return Weights(smoothed, result.info)

    def end_epoch(self) -> None:
        self.inner.end_epoch()
