"""Server aggregation plans: how (client, task) update rows are grouped and weighted.

A round's replies give, per client ``k``, either its whole backbone update ``Δ_k`` or its
per-task parts ``Δ_{k,t}`` (``Σ_t Δ_{k,t} = Δ_k``). A plan turns them into one combined
update:

``clients``
    One row per client (``Δ_k``), the client weighting across them. Clients send no parts.
``flat``
    All (client, task) rows at once, one weighting; the result is multiplied by
    rows / clients so that ``mean`` equals the mean client update.
``clients-then-tasks``
    Within each client, the task weighting across its task parts (times its number of
    tasks, so ``mean`` gives back ``Δ_k``); then the client weighting across clients.
``tasks-then-clients``
    Within each task, the client weighting across the clients that hold it; then the task
    weighting across tasks (times the number of tasks). ``mean`` at both levels gives the mean
    client update when every client holds every task; otherwise each task's mean over the
    clients that hold it counts at full weight (FSMGDA's per-objective average), so it is not
    the mean client update.

Losses of grouped rows are the mean of the task losses (clients-then-tasks) or the
example-weighted mean of the client losses (tasks-then-clients); example counts add up.

**A rule called once per group keeps one state per group.** The inner level of a two-level
plan (the task rule of each client in ``clients-then-tasks``, the client rule of each task in
``tasks-then-clients``) runs as many times a round as there are groups. Each group gets its
own instance of the configured rule, made on the group's first round, so that a stateful rule
(TERM's normaliser, FedFV's history of past rounds, AFL's λ) advances once per round for its
group, as if it ran for that group alone, instead of once per call. A rule whose state is
nothing but random generators (RLW, PCGrad, GradDrop) or nothing at all (mean, MGDA) is the
same for every group: one instance serves them all, its generator
drawing for the groups in turn (in sorted order, so the same every run), and the plan holds no
instance and checkpoints no state per group: a client's group would otherwise keep a 5 KB
generator state for every client ever sampled.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import make_rule
from fedmtl.aggregation.rule import NonFiniteResult, Rule, RuleContext
from fedmtl.seeds import Stream, text_key, torch_seed

PLANS = ("clients", "flat", "clients-then-tasks", "tasks-then-clients")
WHOLE = "all"
LEVEL_KEYS = {"client": "weighting", "task": "task-weighting"}
"""The ``[server]`` key naming the rule of each level of :meth:`AggregationPlan.weightings`."""
GROUPS = "per-group"
"""The key of a grouped level's state (:meth:`AggregationPlan.state_dict`) that holds one state
per group; not a Python attribute's name, so never a rule's own state."""


@dataclass
class Row:
    """One update row: a client's whole update (task ``"all"``) or one task part."""

    client: int
    task: str
    update: torch.Tensor
    loss: float
    num_examples: float


@dataclass
class PlanResult:
    """The combined update of a round and how it was formed.

    Attributes
    ----------
    direction : torch.Tensor
        The combined update (before the server optimizer).
    row_weights : dict[tuple[int, str], float]
        Effective weight of each input row in ``direction`` (empty when a level is not a
        weighted sum, e.g. the coordinate-wise median).
    fallbacks : list[str]
        Fallbacks the weightings reported (e.g. ``"regularised"``), one per occurrence.
    """

    direction: torch.Tensor
    row_weights: dict[tuple[int, str], float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


def grouped_level(plan: str) -> str | None:
    """The level of ``plan`` whose rule runs once per group of rows (module docstring), or ``None``."""
    return {"clients-then-tasks": "task", "tasks-then-clients": "client"}.get(plan)


def fresh_copy(rule: Rule) -> Rule:
    """A new instance of ``rule``'s class with its context and parameters, in its initial state."""
    return type(rule)(rule.context, **rule.params.model_dump(by_alias=True))


def group_instance(rule: Rule, group: str) -> Rule:
    """``group``'s own instance of ``rule`` (:func:`fresh_copy`): each random generator it keeps
    in its state (RLW's weights, PCGrad's order) reseeded from its seed and the group's name, so
    that the groups draw independent numbers (copies would draw the same sequence in every
    group: tasks with as many clients would get the same RLW weights every round)."""
    instance = fresh_copy(rule)
    for name in instance.state_attributes:
        generator = getattr(instance, name, None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(torch_seed(Stream.RULE_GROUP, generator.initial_seed(), text_key(group)))
    return instance


def serves_every_group(rule: Rule) -> bool:
    """Whether one instance of ``rule`` serves every group of a grouped level: its state is
    nothing but random generators, or nothing (module docstring)."""
    return all(isinstance(getattr(rule, name, None), torch.Generator) for name in rule.state_attributes)


def uses_task_weighting(plan: str) -> bool:
    """Whether ``plan`` has a task level (and so uses ``server.task-weighting``)."""
    return plan in ("clients-then-tasks", "tasks-then-clients")


def needs_task_parts(plan: str) -> bool:
    """Whether clients must send per-task parts of their update for ``plan``."""
    return plan != "clients"


def _objectives(rows: list[Row], client_ids: bool = True, task_ids: bool = True) -> Objectives:
    return Objectives(
        updates=torch.stack([r.update for r in rows]),
        losses=torch.tensor([r.loss for r in rows], dtype=torch.float64),
        num_examples=torch.tensor([r.num_examples for r in rows], dtype=torch.float64),
        client_ids=[r.client for r in rows] if client_ids else [],
        task_ids=[r.task for r in rows] if task_ids else [],
    )


def _run(rule: Rule, objectives: Objectives, fallbacks: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rule`` on ``objectives``; a rule that does not declare ``needs_losses`` gets no losses
    (``objectives.losses`` is ``None``): the losses the server has then are the clients' training
    losses, not the global model's before local training that the rule's losses stand for (the
    clients measure those only for a rule that declares it reads them).

    Raises
    ------
    NonFiniteResult
        The rule's direction is not finite (weights of 1e300 overflow float32 rows): named here,
        where the rule is known, not blamed on the level it would be handed to next.
    """
    if not rule.needs_losses:
        objectives.losses = None
    try:
        result = rule.combine(objectives)
    except (AttributeError, TypeError) as exc:
        if rule.needs_losses or "NoneType" not in str(exc):
            raise
        raise type(exc)(f"{exc} (rule '{rule.name}' got no losses: it does not declare needs_losses = True, which "
                        "makes the clients measure the global model's losses before local training)") from exc
    _check_finite(rule, result.direction)
    if result.info.fallback:
        fallbacks.append(f"{rule.name}:{result.info.fallback}")
    return result.direction, result.weights


def _check_finite(rule: Rule, direction: torch.Tensor, how: str = "") -> None:
    """Raise :class:`NonFiniteResult` naming ``rule`` when ``direction`` (its, ``how`` formed) is
    not finite."""
    if direction.numel() and not bool(torch.isfinite(direction).all()):
        raise NonFiniteResult(f"{rule.kind} '{rule.name}' combined finite rows into a direction that is not finite "
                              f"(NaN or Inf){how}")


class AggregationPlan:
    """Combine a round's rows according to ``plan`` (see the module docstring).

    Parameters
    ----------
    plan : str
        One of :data:`PLANS`.
    client_weighting : Rule
        Across clients (and across all rows for ``flat``).
    task_weighting : Rule
        Across tasks (two-level plans only).
    """

    def __init__(self, plan: str, client_weighting: Rule, task_weighting: Rule) -> None:
        if plan not in PLANS:
            raise ValueError(f"unknown aggregation plan '{plan}'; plans: {', '.join(PLANS)}")
        self.plan = plan
        self.level = "client"
        """The level (a key of :meth:`weightings`, :data:`LEVEL_KEYS`) whose rule the plan
        called last: after the plan raised, the one that failed."""
        self.client_weighting = client_weighting
        self.task_weighting = task_weighting
        self.groups: dict[str, Rule] = {}
        """The instances of the grouped level's rule (:func:`grouped_level`), by group (a task
        name, or a client id as text); the configured rule itself is never called there, unless
        it serves every group (:attr:`one_instance`)."""
        level = grouped_level(plan)
        self.one_instance = level is not None and serves_every_group(self.weightings()[level])
        """Whether the grouped level's configured rule serves every group (:func:`serves_every_group`;
        ``False`` after loading a state that holds one per group)."""
        self._used: list[tuple[str, Rule]] = []

    def weightings(self) -> dict[str, Rule]:
        """The weightings configured, by level (what each level's rule is and reads)."""
        if uses_task_weighting(self.plan):
            return {"client": self.client_weighting, "task": self.task_weighting}
        return {"client": self.client_weighting}

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The rules' states, by level: a grouped level's is ``{GROUPS: {group: state}}``.

        Raises
        ------
        Exception
            A rule's own, from :meth:`~fedmtl.aggregation.rule.Rule.state_dict`; :attr:`level`
            is then the level whose rule raised.
        """
        states: dict[str, dict[str, Any]] = {}
        for level, rule in self.weightings().items():
            self.level = level
            if level == grouped_level(self.plan) and not self.one_instance:
                states[level] = {GROUPS: {group: r.state_dict() for group, r in self.groups.items()}}
            else:
                states[level] = rule.state_dict()
        return states

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Restore :meth:`state_dict` output: the groups are exactly those of ``states``. A grouped
        level's state written before groups had their own (one state for every call, which mixed
        the groups) is not kept: each group starts from the rule's initial state. (Copied to every
        group it would multiply a state kept per row key, such as centered clipping's centers,
        by the number of groups.) A rule that serves every group (:func:`serves_every_group`)
        takes the level's state as it is, and a state written per group (before such a rule
        served every group) goes on per group, as written."""
        self.groups = {}
        for level, rule in self.weightings().items():
            state = states[level]
            if level != grouped_level(self.plan):
                rule.load_state_dict(state)
            elif GROUPS in state:
                self.one_instance = False
                for group, group_state in state[GROUPS].items():
                    self.groups[group] = group_instance(rule, group)
                    self.groups[group].load_state_dict(group_state)
            elif self.one_instance:
                rule.load_state_dict(state)

    def _rule(self, level: str, group: str | None) -> Rule:
        """The rule that combines ``group``'s rows at ``level`` (its own instance on the grouped level)."""
        if level != grouped_level(self.plan) or self.one_instance:
            rule = self.weightings()[level]
        else:
            rule = self.groups.get(str(group))
            if rule is None:
                rule = self.groups[str(group)] = group_instance(self.weightings()[level], str(group))
        if not any(r is rule for _, r in self._used):
            self._used.append((level, rule))
        return rule

    def __call__(self, rows: list[Row]) -> PlanResult:
        """Combine ``rows`` (whole updates for ``clients``, task parts otherwise); when it
        raises, :attr:`level` is the level whose rule failed."""
        self.level = "client"
        if not rows:
            raise ValueError("no update rows to aggregate")
        self._used = []
        result = getattr(self, "_" + self.plan.replace("-", "_"))(rows)
        for level, rule in self._used:  # the rules called this round (a group without rows has no round)
            self.level = level
            rule.end_epoch()
        return result

    def _level(self, level: str, objectives: Objectives,
               fallbacks: list[str], group: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rule of ``level`` (``"client"`` or ``"task"``; on the grouped level ``group``'s
        own) on ``objectives`` (:func:`_run`), the level kept in :attr:`level`."""
        self.level = level
        return _run(self._rule(level, group), objectives, fallbacks)

    def _scaled(self, level: str, factor: float, direction: torch.Tensor) -> torch.Tensor:
        """``factor * direction`` of ``level``'s rule; one that overflows (a direction near the
        largest float32) is that rule's, not the next level's that it would reach.

        Raises
        ------
        NonFiniteResult
            Naming the rule of ``level``.
        """
        scaled = factor * direction
        self.level = level
        _check_finite(self.weightings()[level], scaled, f" once scaled by {factor:g} (its level's number of rows)")
        return scaled

    def _clients(self, rows: list[Row]) -> PlanResult:
        fallbacks: list[str] = []
        direction, weights = self._level("client", _objectives(rows, task_ids=False), fallbacks)
        row_weights = {}
        if weights is not None:
            row_weights = {(r.client, r.task): float(w) for r, w in zip(rows, weights, strict=True)}
        return PlanResult(direction, row_weights, fallbacks)

    def _flat(self, rows: list[Row]) -> PlanResult:
        fallbacks: list[str] = []
        scale = len(rows) / len({r.client for r in rows})
        direction, weights = self._level("client", _objectives(rows), fallbacks)
        row_weights = {}
        if weights is not None:
            row_weights = {(r.client, r.task): scale * float(w) for r, w in zip(rows, weights, strict=True)}
        return PlanResult(self._scaled("client", scale, direction), row_weights, fallbacks)

    def _clients_then_tasks(self, rows: list[Row]) -> PlanResult:
        fallbacks: list[str] = []
        groups: dict[int, list[Row]] = defaultdict(list)
        for r in rows:
            groups[r.client].append(r)
        merged, inner = [], {}
        for client, group in sorted(groups.items()):
            direction, weights = self._level("task", _objectives(group), fallbacks, group=str(client))
            merged.append(Row(client, WHOLE, self._scaled("task", len(group), direction),
                              sum(r.loss for r in group) / len(group), group[0].num_examples))
            inner[client] = None if weights is None else len(group) * weights
        direction, outer = self._level("client", _objectives(merged, task_ids=False), fallbacks)
        row_weights = {}
        if outer is not None and all(w is not None for w in inner.values()):
            for k, (client, group) in enumerate(sorted(groups.items())):
                for r, w in zip(group, inner[client], strict=True):
                    row_weights[(client, r.task)] = float(outer[k] * w)
        return PlanResult(direction, row_weights, fallbacks)

    def _tasks_then_clients(self, rows: list[Row]) -> PlanResult:
        fallbacks: list[str] = []
        groups: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            groups[r.task].append(r)
        tasks = sorted(groups)
        merged, inner = [], {}
        for task in tasks:
            group = groups[task]
            direction, weights = self._level("client", _objectives(group), fallbacks, group=task)
            counts = torch.tensor([r.num_examples for r in group], dtype=torch.float64)
            losses = torch.tensor([r.loss for r in group], dtype=torch.float64)
            loss = float((counts * losses).sum() / counts.sum()) if counts.sum() > 0 else float(losses.mean())
            merged.append(Row(-1, task, direction, loss, float(counts.sum())))
            inner[task] = weights
        direction, outer = self._level("task", _objectives(merged, client_ids=False), fallbacks)
        scale = len(tasks)
        row_weights = {}
        if outer is not None and all(w is not None for w in inner.values()):
            for k, task in enumerate(tasks):
                for r, w in zip(groups[task], inner[task], strict=True):
                    row_weights[(r.client, task)] = float(scale * outer[k] * w)
        return PlanResult(self._scaled("task", scale, direction), row_weights, fallbacks)


def server_weighting(name: str, params: dict, client_lr: float) -> Rule:
    """Build a server rule; it learns the clients' learning rate from its context (q-FFL's
    ``L = 1/η``)."""
    return make_rule(name, RuleContext(client_lr=client_lr), **params)


def make_plan(server_cfg, client_lr: float) -> AggregationPlan:
    """The aggregation plan of a ``[server]`` config section."""
    return AggregationPlan(
        server_cfg.plan,
        server_weighting(server_cfg.weighting, server_cfg.params, client_lr),
        server_weighting(server_cfg.task_weighting, server_cfg.task_params, client_lr),
    )
