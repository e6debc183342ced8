"""The ``Weighting`` base class and registry: objectives in, weights out."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fedmtl.aggregation.objectives import Objectives
from fedmtl.registry import Registry, did_you_mean

Scope = Literal["client", "server", "both"]
Scaling = Literal["invariant", "inverse", "none"]


class NoParams(BaseModel):
    """A weighting without parameters."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=lambda n: n.replace("_", "-"), populate_by_name=True
    )


class WeightingParamsError(ValueError):
    """A weighting parameter is unknown or out of range; the message names it."""


class Weighting:
    """Map a batch of :class:`Objectives` to a weight vector ``w`` of shape ``(m,)``.

    The combined update is ``Σ_i w_i u_i``. Weights are expressed relative to ``mean``:
    weights that sum to one give the mean update on the server and the gradient of the mean
    task loss on a client. Subclasses set the class attributes and implement
    :meth:`weights`; the few that do not combine rows linearly (coordinate-wise median, …)
    override :meth:`aggregate` instead.

    Attributes
    ----------
    name : str
        Registry name used in configs.
    scope : {"client", "server", "both"}
        Where the weighting may run: across tasks on a client, across objectives on the
        server, or both.
    needs_updates : bool
        ``True`` when the update rows (or their Gramian) are needed; ``False`` when losses
        and counts suffice (then a client can skip per-task backbone gradients).
    needs_losses : bool
        ``True`` when the weights use each objective's loss (on the server: the loss of the
        global model *before* local training, which clients then measure).
    needs_parameter_rows : bool
        ``True`` when rows must be full backbone-parameter vectors (coordinate-wise rules,
        gradient histories); a client then uses per-task backbone gradients instead of
        representation gradients.
    linear : bool
        ``True`` when the combined update is ``Σ w_i u_i`` with the weights of
        :meth:`weights`; ``False`` for rules that override :meth:`aggregate`.
    nonnegative : bool
        ``True`` when the weights are never negative (IMTL-G and Aligned-MTL may give
        negative weights).
    deterministic : bool
        ``False`` for randomised rules (RLW, PCGrad's order), whose weights are not
        permutation-equivariant draw for draw.
    scale_free : bool
        ``True`` when only the direction of ``Σ w_i u_i`` is meaningful; the weights are
        then rescaled to sum to one (see :meth:`__call__`).
    scaling : {"invariant", "inverse", "none"}
        Documented behaviour when every row is multiplied by ``s > 0``: the weights stay the
        same, are divided by ``s``, or follow no simple law (they depend on magnitudes).
    Params : type[pydantic.BaseModel]
        The weighting's parameters (config keys of ``[client.params]`` / ``[server.params]``).
    state_attributes : tuple[str, ...]
        Attributes that make up the state of a stateful weighting (:meth:`state_dict`).
    """

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "both"
    needs_updates: ClassVar[bool] = False
    needs_losses: ClassVar[bool] = False
    needs_parameter_rows: ClassVar[bool] = False
    linear: ClassVar[bool] = True
    nonnegative: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True
    scale_free: ClassVar[bool] = False
    scaling: ClassVar[Scaling] = "invariant"
    Params: ClassVar[type[BaseModel]] = NoParams
    state_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params = validate_params(type(self), params)
        self.fallback = ""

    def __call__(self, objectives: Objectives) -> torch.Tensor:
        """Weights for ``objectives`` (float64 on the CPU, shape ``(m,)``), normalised if
        scale-free."""
        self.fallback = ""
        weights = self.weights(objectives).to("cpu", torch.float64)
        if weights.shape != (len(objectives),):
            raise RuntimeError(
                f"weighting '{self.name}' returned shape {tuple(weights.shape)} "
                f"for {len(objectives)} objectives"
            )
        if self.scale_free:
            weights = normalise(weights)
        return weights

    def weights(self, objectives: Objectives) -> torch.Tensor:
        """Return the raw weights (float64, shape ``(m,)``)."""
        raise NotImplementedError

    def aggregate(self, objectives: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The combined update ``Σ_i w_i u_i`` and the weights (``None`` if not linear)."""
        if objectives.updates is None:
            raise ValueError(f"weighting '{self.name}' needs update rows to combine")
        weights = self(objectives)
        direction = weights.to(objectives.updates) @ objectives.updates
        return direction, weights

    def contributions(self, objectives: Objectives) -> torch.Tensor:
        """Row ``i``'s part of the combined update (``(m, p)``, rows sum to it)."""
        if objectives.updates is None:
            raise ValueError(f"weighting '{self.name}' needs update rows to combine")
        weights = self(objectives)
        return weights.to(objectives.updates)[:, None] * objectives.updates

    def end_epoch(self) -> None:
        """Called by the local loop after every epoch (DWA's loss history uses it)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint: copies of the attributes named in ``state_attributes``."""
        state = {}
        for name in self.state_attributes:
            value = getattr(self, name)
            state[name] = value.get_state() if isinstance(value, torch.Generator) else copy.deepcopy(value)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for name in self.state_attributes:
            current = getattr(self, name)
            if isinstance(current, torch.Generator):
                current.set_state(state[name])
            else:
                setattr(self, name, copy.deepcopy(state[name]))


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """``w / Σ w``; uniform when the sum is not positive and finite."""
    total = weights.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(weights, 1.0 / len(weights))
    return weights / total


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting")


def validate_params(cls: type[Weighting], params: dict[str, Any]) -> BaseModel:
    """Check ``params`` against ``cls.Params``.

    Raises
    ------
    WeightingParamsError
        One line per bad parameter, naming it, its value and what is allowed.
    """
    allowed = [f.alias or n for n, f in cls.Params.model_fields.items()]
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(key, allowed)
                options = ", ".join(allowed) if allowed else "none"
                lines.append(
                    f"weighting '{cls.name}' has no parameter '{key}'{hint}; its parameters: {options}"
                )
            else:
                message = err["msg"].removeprefix("Value error, ")
                lines.append(f"weighting '{cls.name}': {key} = {err.get('input')!r}: {message}")
        raise WeightingParamsError("\n".join(lines)) from None


def make_weighting(name: str, **params: Any) -> Weighting:
    """Instantiate the weighting registered as ``name`` with its parameters."""
    return WEIGHTINGS.get(name)(**params)


def describe_params(cls: type[Weighting]) -> str:
    """``"alpha=1.0, warm-start=True"``: the parameters and their defaults."""
    fields = cls.Params.model_fields
    return ", ".join(f"{f.alias or k}={f.default!r}" for k, f in fields.items()) or "-"
