"""The two kinds of aggregation rule, as in torchjd: weightings and aggregators.

A **weighting** maps a batch of :class:`~fedmtl.aggregation.objectives.Objectives` to a weight
vector ``w`` (shape ``(m,)``); the combined update is ``Σ_i w_i u_i``. An **aggregator** maps
the batch to a direction that is not a weighted sum of the rows (PCGrad-style surgery on full
rows, coordinate-wise statistics, histories of past updates). Both return how the call went
(:class:`~fedmtl.aggregation.info.SolveInfo`) with their result; nothing about a call is
stored on the rule.

Weights are expressed relative to ``mean``: weights that sum to one give the mean update on
the server and the gradient of the mean task loss on a client. Where a paper sums the rows
(PCGrad, DWA's ``T·softmax``, GradNorm's ``Σw = T``), fedmtl divides by ``m``: a constant
factor, so every property of the paper's rule is kept.

Writing a rule: subclass :class:`Weighting` (implement :meth:`Weighting.compute`, returning
the weights or a :class:`Weights`) or :class:`Aggregator` (implement :meth:`Aggregator.compute`,
returning an :class:`Aggregate`), declare its parameters as a pydantic ``Params`` model and the
properties its paper claims in ``claims``, and register it with
:func:`fedmtl.aggregation.registry.register` in a file of its own under ``weightings/`` or
``aggregators/`` (``docs/aggregation.md``, "Adding a rule").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.registry import option_errors
from fedmtl.strict_scalars import StrictScalars

Scope = Literal["client", "server", "both"]
Kind = Literal["weighting", "aggregator"]


class NoParams(StrictScalars):
    """A rule without parameters (and the base of every rule's ``Params``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=lambda n: n.replace("_", "-"), populate_by_name=True
    )


class WeightingParamsError(ValueError):
    """A rule's parameter is unknown or out of range; the message names it."""


@dataclass(frozen=True)
class RuleContext:
    """What a run tells its rules besides their parameters.

    Attributes
    ----------
    client_lr : float or None
        The clients' local learning rate η (q-FFL's ``L = 1/η``); ``None`` outside a run.
    """

    client_lr: float | None = None


@dataclass
class Weights:
    """A weighting's result: the weights (float64, CPU, ``(m,)``) and how the call went."""

    weights: torch.Tensor
    info: SolveInfo = field(default_factory=SolveInfo)


@dataclass
class Aggregate:
    """An aggregator's result.

    Attributes
    ----------
    direction : torch.Tensor
        The combined update ``(p,)``, on the rows' device and dtype.
    info : SolveInfo
        How the call went.
    parts : torch.Tensor or None
        ``(m, p)`` row contributions that sum to ``direction``, for aggregators that have
        them (``per_row``); ``None`` otherwise.
    """

    direction: torch.Tensor
    info: SolveInfo = field(default_factory=SolveInfo)
    parts: torch.Tensor | None = None

    @classmethod
    def from_parts(cls, parts: torch.Tensor, info: SolveInfo | None = None) -> Aggregate:
        """The aggregate whose direction is the sum of ``parts``."""
        return cls(parts.sum(dim=0), info or SolveInfo(), parts)


@dataclass
class Combined:
    """What any rule gives for a batch of update rows.

    Attributes
    ----------
    direction : torch.Tensor
        The combined update.
    weights : torch.Tensor or None
        The weights (weightings only).
    info : SolveInfo
        How the call went.
    parts : torch.Tensor or None
        ``(m, p)`` contributions of the rows (``w_i u_i`` for a weighting; an aggregator's
        own parts when it has them).
    """

    direction: torch.Tensor
    weights: torch.Tensor | None
    info: SolveInfo
    parts: torch.Tensor | None = None


class Rule:
    """What every aggregation rule has: a name, where it runs, what it reads, its parameters
    and its state.

    Attributes
    ----------
    name : str
        Registry name used in configs (set by :func:`~fedmtl.aggregation.registry.register`).
    kind : {"weighting", "aggregator"}
        Weighted sum of the rows, or any other direction.
    scope : {"client", "server", "both"}
        Where the rule may run: across tasks on a client, across objectives on the server, or
        both.
    needs_updates : bool
        ``True`` when the update rows (or their Gramian) are read; ``False`` when losses and
        counts suffice (a client then skips per-task backbone gradients).
    needs_losses : bool
        ``True`` when each objective's loss is read (on the server: the loss of the global
        model *before* local training, which clients then measure).
    deterministic : bool
        ``False`` for randomised rules (RLW, PCGrad's order): the same input may give another
        output on the next call.
    claims : tuple[str, ...]
        The properties its paper claims, beyond those every rule has (names of
        :data:`fedmtl.aggregation.properties.PROPERTIES`); the property suite checks each.
    Params : type[pydantic.BaseModel]
        Its parameters (config keys of ``[client.params]`` / ``[server.params]``).
    state_attributes : tuple[str, ...]
        Attributes that make up the state of a stateful rule (:meth:`state_dict`).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "weighting"
    scope: ClassVar[Scope] = "both"
    needs_updates: ClassVar[bool] = False
    needs_losses: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True
    claims: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[BaseModel]] = NoParams
    state_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        self.context = context or RuleContext()
        self.params = validate_params(type(self), params)

    @classmethod
    def needs_parameter_rows(cls) -> bool:
        """Whether rows must be whole backbone-parameter vectors (every aggregator: it does
        not reduce to weights that a client could apply at the shared representation)."""
        return cls.kind == "aggregator"

    def combine(self, objectives: Objectives) -> Combined:
        """The combined update of ``objectives.updates`` and how it was formed."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called by the local loop after every epoch and by the server after every round
        (DWA's loss history uses it)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint: copies of the attributes named in ``state_attributes``."""
        state = {}
        for name in self.state_attributes:
            if not hasattr(self, name):
                raise RuntimeError(f"{self.kind} '{self.name}' names '{name}' in state_attributes but has no "
                                   f"attribute '{name}'")
            value = getattr(self, name)
            try:
                state[name] = value.get_state() if isinstance(value, torch.Generator) else copy.deepcopy(value)
            except Exception as exc:  # noqa: BLE001 - a plugin's state: named, in one line
                raise RuntimeError(f"{self.kind} '{self.name}': its state attribute '{name}' cannot be copied for "
                                   f"checkpoints ({type(exc).__name__}: {exc}); keep data only in "
                                   "state_attributes") from None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for name in self.state_attributes:
            current = getattr(self, name)
            if isinstance(current, torch.Generator):
                current.set_state(state[name])
            else:
                setattr(self, name, copy.deepcopy(state[name]))

    def _rows(self, objectives: Objectives) -> torch.Tensor:
        if objectives.updates is None:
            raise ValueError(f"rule '{self.name}' needs update rows to combine")
        return objectives.updates


NEGATIVE_RTOL = 1e-12
"""A weight below ``-NEGATIVE_RTOL · max |w|`` is negative (rounding of an exact 0 is not)."""


class Weighting(Rule):
    """Objectives in, weights out; the combined update is ``Σ_i w_i u_i``.

    Attributes
    ----------
    nonnegative : bool
        ``True`` when the weights are never negative (IMTL-G and Aligned-MTL may give
        negative weights).
    """

    kind: ClassVar[Kind] = "weighting"
    nonnegative: ClassVar[bool] = True

    def compute(self, objectives: Objectives) -> torch.Tensor | Weights:
        """The rule itself: weights for ``objectives`` (a tensor, or :class:`Weights` when
        there is something to say about the call)."""
        raise NotImplementedError

    def weigh(self, objectives: Objectives) -> Weights:
        """Weights for ``objectives`` (float64 on the CPU, shape ``(m,)``) and how the call
        went.

        Raises
        ------
        ValueError
            When the objectives hold a NaN or an infinity (:meth:`Objectives.nonfinite`).
        """
        refuse_nonfinite(self, objectives)
        result = computed_untouched(self, objectives)
        if not isinstance(result, Weights):
            result = Weights(result)
        if not isinstance(result.weights, torch.Tensor):
            raise TypeError(f"weighting '{self.name}' returned weights of type {type(result.weights).__name__}, "
                            f"not a torch.Tensor")
        if result.weights.is_complex():  # casting to float64 would drop the imaginary parts (a warning only)
            raise TypeError(f"weighting '{self.name}' returned complex weights ({result.weights.dtype}); weights are "
                            "real numbers")
        if not isinstance(result.info, SolveInfo):
            raise TypeError(f"weighting '{self.name}' returned Weights whose info is a {type(result.info).__name__}, "
                            "not a SolveInfo (fedmtl.aggregation.rule.SolveInfo)")
        weights = result.weights.to("cpu", torch.float64)
        if weights.shape != (len(objectives),):
            raise RuntimeError(
                f"weighting '{self.name}' returned shape {tuple(weights.shape)} for {len(objectives)} objectives"
            )
        if not bool(torch.isfinite(weights).all()):
            raise NonFiniteResult(f"weighting '{self.name}' returned weights that are not finite: "
                               f"{[round(w, 6) for w in weights.tolist()][:8]}")
        if self.nonnegative and len(weights) and float(weights.min()) < -NEGATIVE_RTOL * float(weights.abs().max()):
            raise RuntimeError(f"weighting '{self.name}' returned the negative weight {float(weights.min()):.6g} but "
                               "declares nonnegative weights (a rule whose weights may be negative sets "
                               "nonnegative = False)")
        return Weights(weights, result.info)

    def __call__(self, objectives: Objectives) -> torch.Tensor:
        """The weights alone (``weigh(objectives).weights``)."""
        return self.weigh(objectives).weights

    def combine(self, objectives: Objectives) -> Combined:
        rows = self._rows(objectives)
        result = self.weigh(objectives)
        weights = result.weights.to(rows)
        return Combined(weights @ rows, result.weights, result.info, weights[:, None] * rows)


class Aggregator(Rule):
    """Objectives in, a direction out, for rules that are not a weighted sum of the rows.

    Attributes
    ----------
    per_row : bool
        ``True`` when :meth:`aggregate` also gives each row's contribution (rows that sum to
        the direction): a client can then split its update into task parts.
    """

    kind: ClassVar[Kind] = "aggregator"
    needs_updates: ClassVar[bool] = True
    per_row: ClassVar[bool] = False

    def compute(self, objectives: Objectives) -> Aggregate:
        """The rule itself: the direction for ``objectives.updates``."""
        raise NotImplementedError

    def aggregate(self, objectives: Objectives) -> Aggregate:
        """The direction for ``objectives`` and how the call went.

        Raises
        ------
        ValueError
            When the objectives hold a NaN or an infinity (:meth:`Objectives.nonfinite`).
        """
        rows = self._rows(objectives)
        refuse_nonfinite(self, objectives)
        result = computed_untouched(self, objectives)
        if not isinstance(result, Aggregate):
            raise RuntimeError(f"aggregator '{self.name}' returned a {type(result).__name__} from compute(); an "
                               "aggregator returns fedmtl.aggregation.Aggregate(direction, ...)")
        direction = getattr(result, "direction", None)
        if not isinstance(direction, torch.Tensor) or tuple(direction.shape) != (rows.shape[1],):
            got = tuple(direction.shape) if isinstance(direction, torch.Tensor) else type(direction).__name__
            raise RuntimeError(f"aggregator '{self.name}' returned a direction of shape {got} for rows of width "
                               f"{rows.shape[1]}")
        if direction.numel() and not math.isfinite(float(direction.abs().amax())):
            raise NonFiniteResult(f"aggregator '{self.name}' returned a direction that is not finite (NaN or Inf) for "
                                  "finite rows")
        if self.per_row and result.parts is None:
            raise RuntimeError(f"aggregator '{self.name}' declares per_row but returned no parts")
        parts = result.parts
        if parts is not None and (not isinstance(parts, torch.Tensor) or tuple(parts.shape) != tuple(rows.shape)):
            got = tuple(parts.shape) if isinstance(parts, torch.Tensor) else type(parts).__name__
            raise RuntimeError(f"aggregator '{self.name}' returned parts of shape {got} for rows of shape "
                               f"{tuple(rows.shape)} (one part per row)")
        return result

    def __call__(self, objectives: Objectives) -> torch.Tensor:
        """The direction alone."""
        return self.aggregate(objectives).direction

    def combine(self, objectives: Objectives) -> Combined:
        result = self.aggregate(objectives)
        return Combined(result.direction, None, result.info, result.parts)


def computed_untouched(rule: Weighting | Aggregator, objectives: Objectives) -> Any:
    """``rule.compute(objectives)``, refused when the rule changed its objectives (the caller's
    update rows: a rule that zeroes them in place moves the model by nothing while its weights
    say otherwise).

    Raises
    ------
    RuntimeError
        Naming the rule and what it changed.
    """
    before = objectives.snapshot()
    result = rule.compute(objectives)
    if edit := objectives.edit_since(before):
        raise RuntimeError(f"{rule.kind} '{rule.name}' {edit}; a rule must leave its objectives as they are "
                           "(clone a tensor before changing it)")
    return result


class NonFiniteResult(RuntimeError):
    """A rule returned weights or a direction that are not finite from finite objectives: a
    numerical failure (an overflow or underflow on extreme rows a client sent, or the rule's own
    bug); the server skips the round (:mod:`fedmtl.server.strategy`), a client reports an error."""


class NonFiniteObjectives(ValueError):
    """The objectives given to a rule hold a NaN or an infinity (the rule is not at fault)."""


def refuse_nonfinite(rule: Rule, objectives: Objectives) -> None:
    """Raise a one-line :class:`NonFiniteObjectives` naming ``rule`` when ``objectives`` hold a
    NaN or an infinity: a diverged local training, or rows no screening caught."""
    problem = objectives.nonfinite()
    if problem:
        raise NonFiniteObjectives(f"{rule.kind} '{rule.name}': {problem}; the training diverged (lower the "
                                  "learning rate) or the rows are corrupt")


def validate_params(cls: type[Rule], params: dict[str, Any]) -> BaseModel:
    """Check ``params`` against ``cls.Params``.

    Raises
    ------
    WeightingParamsError
        One line per bad parameter, naming it, its value and what is allowed.
    """
    instance, lines = option_errors(cls.Params, params, f"{cls.kind} '{cls.name}'")
    if lines:
        raise WeightingParamsError("\n".join(lines))
    return instance
