"""Aggregation plans and the server optimizer."""

from __future__ import annotations

import pytest
import torch

from fedmtl.aggregation import Objectives, Rule, make_weighting
from fedmtl.aggregation.plans import (
    PLANS,
    AggregationPlan,
    Row,
    make_plan,
    needs_task_parts,
)
from fedmtl.aggregation.server_optimizer import ServerOptimizer
from fedmtl.validation import load_config

F64 = torch.float64
TASKS = ("left", "right")


def task_rows(num_clients: int = 3, p: int = 5, seed: int = 0) -> list[Row]:
    gen = torch.Generator().manual_seed(seed)
    return [
        Row(c, t, torch.randn(p, generator=gen, dtype=F64), float(1 + c + i), float(10 * (c + 1)))
        for c in range(num_clients)
        for i, t in enumerate(TASKS)
    ]


def whole_rows(parts: list[Row]) -> list[Row]:
    clients = sorted({r.client for r in parts})
    return [
        Row(c, "all", sum(r.update for r in parts if r.client == c),
            sum(r.loss for r in parts if r.client == c) / 2, next(r.num_examples for r in parts if r.client == c))
        for c in clients
    ]


def plan(name: str, client: str = "mean", task: str = "mean") -> AggregationPlan:
    return AggregationPlan(name, make_weighting(client), make_weighting(task))


@pytest.mark.parametrize("name", PLANS)
def test_every_plan_with_mean_gives_the_mean_client_update(name):
    parts = task_rows()
    rows = whole_rows(parts) if name == "clients" else parts
    expected = torch.stack([r.update for r in whole_rows(parts)]).mean(dim=0)
    result = plan(name)(rows)
    torch.testing.assert_close(result.direction, expected)


@pytest.mark.parametrize("name", PLANS)
@pytest.mark.parametrize("client, task", [("fedavg", "mgda"), ("qffl", "fairgrad"), ("afl", "upgrad")])
def test_row_weights_reproduce_the_direction(name, client, task):
    parts = task_rows(seed=1)
    rows = whole_rows(parts) if name == "clients" else parts
    params = {"lipschitz": 10.0} if client == "qffl" else {}
    p = AggregationPlan(name, make_weighting(client, **params), make_weighting(task))
    result = p(rows)
    rebuilt = sum(result.row_weights[(r.client, r.task)] * r.update for r in rows)
    torch.testing.assert_close(result.direction, rebuilt)


def test_clients_then_tasks_applies_the_task_weighting_inside_each_client():
    parts = task_rows(num_clients=2, seed=2)
    result = plan("clients-then-tasks", "mean", "mgda")(parts)
    expected = []
    for c in (0, 1):
        g = torch.stack([r.update for r in parts if r.client == c])
        w = make_weighting("mgda")(Objectives(updates=g))
        expected.append(2 * (w @ g))
    torch.testing.assert_close(result.direction, torch.stack(expected).mean(dim=0))


def test_tasks_then_clients_handles_clients_without_a_task():
    parts = [r for r in task_rows(num_clients=3, seed=3) if not (r.client == 0 and r.task == "right")]
    result = plan("tasks-then-clients", "fedavg", "mean")(parts)
    left = [r for r in parts if r.task == "left"]
    right = [r for r in parts if r.task == "right"]

    def fedavg(rows):
        n = torch.tensor([r.num_examples for r in rows], dtype=F64)
        return (n / n.sum()) @ torch.stack([r.update for r in rows])

    torch.testing.assert_close(result.direction, fedavg(left) + fedavg(right))


def test_fallbacks_are_reported_by_level():
    rows = [Row(c, "all", torch.zeros(3, dtype=F64), 1.0, 1.0) for c in range(3)]
    result = plan("clients", "fairgrad")(rows)
    assert result.fallbacks == ["fairgrad:zero-gramian"]


def test_only_the_clients_plan_does_without_task_parts():
    assert not needs_task_parts("clients")
    assert all(needs_task_parts(p) for p in PLANS if p != "clients")


def test_make_plan_reads_the_config_and_sets_qffl_lipschitz_from_the_client_lr():
    cfg = load_config(None, ["server.plan=tasks-then-clients", "server.weighting=qffl",
                             "server.params={q=2}", "server.task-weighting=fairgrad",
                             "server.task-params={alpha=3}", "client.lr=0.25"])
    p = make_plan(cfg.server, cfg.client.lr)
    assert p.plan == "tasks-then-clients"
    assert p.client_weighting.params.q == 2 and p.client_weighting.lipschitz() == 4.0
    assert p.task_weighting.params.alpha == 3


def test_unknown_plan_is_refused():
    with pytest.raises(ValueError, match="unknown aggregation plan 'flatt'"):
        AggregationPlan("flatt", make_weighting("mean"), make_weighting("mean"))


# -- server optimizer -------------------------------------------------------------------
def test_server_sgd_momentum_and_adam_steps():
    d1, d2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    sgd = ServerOptimizer("sgd", lr=0.5)
    torch.testing.assert_close(sgd.step(d1), 0.5 * d1)
    mom = ServerOptimizer("momentum", lr=0.5, momentum=0.9)
    mom.step(d1)
    torch.testing.assert_close(mom.step(d2), 0.5 * (0.9 * d1 + d2))
    adam = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, adaptivity=1e-3)
    adam.step(d1)
    m = 0.9 * (0.1 * d1) + 0.1 * d2
    v = 0.99 * (0.01 * d1**2) + 0.01 * d2**2
    torch.testing.assert_close(adam.step(d2), 0.1 * m / (v.sqrt() + 1e-3))


def test_server_optimizer_state_round_trips():
    a = ServerOptimizer("adam", lr=0.1)
    a.step(torch.tensor([1.0, 2.0]))
    b = ServerOptimizer("adam", lr=0.1)
    b.load_state_dict(a.state_dict())
    d = torch.tensor([0.3, -0.1])
    torch.testing.assert_close(a.step(d), b.step(d))
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer("rmsprop")


class _ReadsLosses:
    """A weighting that reads the losses, declared (``needs_losses``) or not."""

    @staticmethod
    def make(declared: bool):  # noqa: ANN205
        from fedmtl.aggregation import Weighting

        class SoftmaxOfLosses(Weighting):
            name = "softmax-of-losses"
            needs_losses = declared

            def compute(self, objectives: Objectives) -> torch.Tensor:
                return torch.softmax(objectives.losses, dim=0)

        return SoftmaxOfLosses()


@pytest.mark.parametrize("name", PLANS)
def test_a_server_rule_gets_the_losses_only_when_it_declares_it_reads_them(name):
    """The server's losses without ``needs_losses`` are the clients' training losses, not the
    global model's before local training that a rule's losses stand for: a rule reading them
    without declaring it fails, saying why, rather than use the wrong ones."""
    parts = task_rows()
    rows = whole_rows(parts) if name == "clients" else parts
    declared = AggregationPlan(name, _ReadsLosses.make(True), _ReadsLosses.make(True))(rows)
    assert torch.isfinite(declared.direction).all()
    with pytest.raises((AttributeError, TypeError), match="rule 'softmax-of-losses' got no losses: it does not "
                                                          "declare needs_losses = True"):
        AggregationPlan(name, _ReadsLosses.make(False), _ReadsLosses.make(False))(rows)


class _Raises:
    """A weighting that raises, or one whose weights overflow the rows (1e300 in float32)."""

    @staticmethod
    def make(kind: str):  # noqa: ANN205
        from fedmtl.aggregation import Weighting

        class Failing(Weighting):
            name = f"{kind}-weights"

            def compute(self, objectives: Objectives) -> torch.Tensor:
                if kind == "raising":
                    raise ValueError("boom in my rule")
                return torch.full((len(objectives),), 1e300, dtype=torch.float64)

        return Failing()


@pytest.mark.parametrize("name", ["clients-then-tasks", "tasks-then-clients"])
@pytest.mark.parametrize("level", ["client", "task"])
def test_a_failing_level_of_a_two_level_plan_is_the_one_named(name, level):
    """A task weighting's error or overflow was blamed on the client weighting that ran after
    it (its direction of Inf handed on as 'objectives that are not finite')."""
    from fedmtl.aggregation.rule import NonFiniteResult

    rows = [Row(r.client, r.task, r.update.float(), r.loss, r.num_examples) for r in task_rows()]
    for kind, error, said in (("raising", ValueError, "boom in my rule"),
                              ("huge", NonFiniteResult, "weighting 'huge-weights' combined finite rows into a "
                                                        "direction that is not finite")):
        failing = _Raises.make(kind)
        p = AggregationPlan(name, failing if level == "client" else make_weighting("fedavg"),
                            failing if level == "task" else make_weighting("fedavg"))
        with pytest.raises(error, match=said):
            p(rows)
        assert p.level == level, (kind, p.level)


class _NearMax:
    """Weights of 1e38 on rows of ones in float32: a direction of T·1e38, finite, that the
    plan's scaling by its level's number of rows takes past float32's largest (3.4e38)."""

    @staticmethod
    def make():  # noqa: ANN205
        from fedmtl.aggregation import Weighting

        class NearMax(Weighting):
            name = "near-max"

            def compute(self, objectives: Objectives) -> torch.Tensor:
                return torch.full((len(objectives),), 1e38, dtype=torch.float64)

        return NearMax()


@pytest.mark.parametrize(("name", "level"), [("clients-then-tasks", "task"), ("tasks-then-clients", "task"),
                                             ("flat", "client")])
def test_a_direction_that_overflows_once_scaled_is_blamed_on_its_own_rule(name, level):
    """clients-then-tasks hands the outer level len(group) × the task rule's direction: an
    overflow there was blamed on the client rule, which had only been given Inf rows; flat
    and tasks-then-clients returned an Inf direction without naming a rule."""
    from fedmtl.aggregation.rule import NonFiniteResult

    rows = [Row(r.client, r.task, torch.ones(5), r.loss, r.num_examples) for r in task_rows()]
    p = AggregationPlan(name, _NearMax.make() if level == "client" else make_weighting("fedavg"),
                        _NearMax.make() if level == "task" else make_weighting("fedavg"))
    if name == "flat":
        rows = rows[:2] + [Row(1, "c", torch.ones(5), 1.0, 10.0)]  # 3 rows of 2 clients: scaled by 1.5
        p.client_weighting = _TwoRows.make()
    with pytest.raises(NonFiniteResult, match=f"weighting '{'two-rows' if name == 'flat' else 'near-max'}' "
                                              "combined finite rows into a direction that is not finite"):
        p(rows)
    assert p.level == level


class _TwoRows:
    """Weights of 1.2e38 on the first two rows and 0 elsewhere: 2.4e38, finite; × 1.5 is not."""

    @staticmethod
    def make():  # noqa: ANN205
        from fedmtl.aggregation import Weighting

        class TwoRows(Weighting):
            name = "two-rows"

            def compute(self, objectives: Objectives) -> torch.Tensor:
                weights = torch.zeros(len(objectives), dtype=torch.float64)
                weights[:2] = 1.2e38
                return weights

        return TwoRows()


def _rounds_of_rows(rounds: int = 4, num_clients: int = 4) -> list[list[Row]]:
    """Task rows of ``rounds`` rounds, losses and updates changing each round (every client
    holds both tasks except client 3, which holds task 'a' only)."""
    out = []
    for r in range(rounds):
        rows = task_rows(num_clients, seed=r)
        out.append([Row(x.client, x.task, x.update, x.loss * (1 + 0.3 * r) + 0.1 * x.client, x.num_examples)
                    for x in rows if not (x.client == 3 and x.task == TASKS[1])])
    return out


STATEFUL = [("term", {"tilt": 2.0}), ("fedfv", {"tau": 2}), ("afl", {"lr_lambda": 0.5}), ("dwa", {})]


@pytest.mark.parametrize(("rule", "params"), STATEFUL)
@pytest.mark.parametrize("name", ["tasks-then-clients", "clients-then-tasks"])
def test_a_stateful_rule_called_once_per_group_advances_once_a_round_per_group(name, rule, params):
    """The inner level of a two-level plan runs once per group a round. One instance shared by
    the groups advanced its state once per call: TERM's normaliser twice a round, FedFV's
    'previous round' the other task's updates of the same round, AFL's λ zeroed by the other
    task's projection. Each group's result must be the rule's run on that group's rows alone,
    round after round (the outer level the mean)."""
    from fedmtl.aggregation.plans import _objectives

    inner_is_client = name == "tasks-then-clients"
    p = AggregationPlan(name, make_weighting(rule, **params) if inner_is_client else make_weighting("mean"),
                        make_weighting("mean") if inner_is_client else make_weighting(rule, **params))
    alone: dict[str, Rule] = {}
    key = (lambda r: r.task) if inner_is_client else (lambda r: str(r.client))
    for rows in _rounds_of_rows():
        got = p(rows)
        groups = sorted({key(r) for r in rows})
        expected = torch.zeros_like(rows[0].update)
        for group in groups:
            members = [r for r in rows if key(r) == group]
            own = alone.setdefault(group, make_weighting(rule, **params))
            objectives = _objectives(members)
            if not own.needs_losses:
                objectives.losses = None
            direction = own.combine(objectives).direction
            own.end_epoch()
            # tasks-then-clients: T × the mean over tasks; clients-then-tasks: the mean over clients of |tasks| × d
            expected += direction if inner_is_client else len(members) * direction / len(groups)
        torch.testing.assert_close(got.direction, expected, rtol=1e-12, atol=1e-14)
    assert sorted(p.groups) == sorted(alone)


@pytest.mark.parametrize(("rule", "params"), STATEFUL)
def test_grouped_states_go_through_a_checkpoint(rule, params):
    """A plan restored from its state_dict after round 2 goes on as the uninterrupted one
    (each group's own state, and only the groups it had)."""
    rounds = _rounds_of_rows()

    def fresh() -> AggregationPlan:
        return AggregationPlan("tasks-then-clients", make_weighting(rule, **params), make_weighting("mean"))

    whole, first = fresh(), fresh()
    expected = [whole(rows) for rows in rounds]
    for rows in rounds[:2]:
        first(rows)
    import pickle

    resumed = fresh()
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    for rows, want in zip(rounds[2:], expected[2:], strict=True):
        got = resumed(rows)
        torch.testing.assert_close(got.direction, want.direction, rtol=0, atol=0)
        assert got.row_weights == want.row_weights


def test_a_grouped_level_s_state_from_before_groups_is_not_copied_into_every_group():
    """A checkpoint written when one instance served every group holds one state for the level,
    mixing the groups: each group starts from the rule's initial state. Copying it into every
    group multiplied a state kept per row key by the number of groups (centered clipping's
    center of every client in every client's group: found by a review)."""
    from fedmtl.aggregation.plans import GROUPS

    shared = make_weighting("centered-clipping", tau=1.0)
    rounds = _rounds_of_rows()
    for rows in rounds[:2]:  # the old way: one instance called once per client (clients-then-tasks)
        for client in sorted({r.client for r in rows}):
            shared.combine(_objectives_of([r for r in rows if r.client == client]))
    assert len(shared.centers) == 4
    old_format = {"client": {}, "task": shared.state_dict()}
    p = AggregationPlan("clients-then-tasks", make_weighting("mean"), make_weighting("centered-clipping", tau=1.0))
    p.load_state_dict(old_format)
    assert p.groups == {}
    fresh = AggregationPlan("clients-then-tasks", make_weighting("mean"), make_weighting("centered-clipping", tau=1.0))
    torch.testing.assert_close(p(rounds[2]).direction, fresh(rounds[2]).direction, rtol=0, atol=0)
    state = p.state_dict()["task"][GROUPS]
    assert {client: len(s["centers"]) for client, s in state.items()} == dict.fromkeys(state, 1)


def _objectives_of(rows: list[Row]) -> Objectives:
    from fedmtl.aggregation.plans import _objectives

    return _objectives(rows)


def test_the_groups_of_a_random_rule_draw_independent_numbers_reproducibly():
    """Each group's instance was a copy with the same seeded generator: RLW gave the tasks of
    tasks-then-clients (three clients each) the same weights every round (found by a review)."""
    rows = [Row(c, t, torch.ones(3, dtype=F64) * (c + 1), 1.0, 10.0) for c in range(3) for t in TASKS]

    def weights() -> list[dict]:
        p = AggregationPlan("tasks-then-clients", make_weighting("rlw"), make_weighting("mean"))
        return [p(rows).row_weights for _ in range(3)]

    first = weights()
    for round_weights in first:
        left = [round_weights[(c, TASKS[0])] for c in range(3)]
        right = [round_weights[(c, TASKS[1])] for c in range(3)]
        assert left != right
    assert weights() == first  # the same in every run


def test_a_plugin_rule_that_does_not_build_again_from_its_params_is_refused_for_a_grouped_level(tmp_path):
    """The inner level of a two-level plan builds one instance per group from the rule's
    parameters: a plugin rule whose Params do not give back what they were given would run
    with other parameters in every group (found by a review); refused with the config."""
    from fedmtl.config import ConfigError
    from tests.plugin_support import restored_registries

    plugin = tmp_path / "doubling.py"
    plugin.write_text('''
import torch
from pydantic import field_validator
from fedmtl.aggregation import NoParams, Weighting, register


class Params(NoParams):
    scale: float = 1.0

    @field_validator("scale")
    @classmethod
    def doubled(cls, value):
        return 2 * value  # not idempotent: built again, 4 × what was given


@register("doubling")
class Doubling(Weighting):
    """Uniform weights."""

    scope = "server"
    Params = Params

    def compute(self, objectives):
        return torch.full((len(objectives),), 1.0 / len(objectives), dtype=torch.float64)
''')
    registries = restored_registries()
    next(registries)
    try:
        sets = [f"run.plugins={plugin}", "server.weighting=doubling", "server.params={scale = 1.0}"]
        load_config(None, [*sets, "server.plan=clients"])  # one instance: accepted
        with pytest.raises(ConfigError, match="server.weighting = 'doubling' does not build: ValueError: an instance "
                                              "built again from its parameters"):
            load_config(None, [*sets, "server.plan=tasks-then-clients"])
    finally:
        next(registries, None)


@pytest.mark.parametrize("rule", ["rlw", "pcgrad", "mean"])
def test_a_rule_whose_state_is_only_its_generator_serves_every_group_with_one_state(rule):
    """clients-then-tasks made one task-rule instance per client: RLW kept a 5 KB generator
    state per client ever sampled, in memory and in every checkpoint (530 MB at 100,000
    clients). A rule whose state is only generators (or nothing) now serves every group: the
    state does not grow with the clients, and a restored plan goes on as the uninterrupted one."""
    import pickle

    def rows_of(clients: int, seed: int) -> list[Row]:
        g = torch.Generator().manual_seed(seed)
        return [Row(c, t, torch.randn(4, generator=g, dtype=F64), 1.0 + c, 10.0) for c in range(clients) for t in TASKS]

    def plan() -> AggregationPlan:
        return AggregationPlan("clients-then-tasks", make_weighting("mean"), make_weighting(rule))

    sizes = []
    for clients in (5, 50):
        p = plan()
        for seed in range(2):
            p(rows_of(clients, seed))
        assert p.groups == {} and p.one_instance
        sizes.append(len(pickle.dumps(p.state_dict())))
    assert sizes[0] == sizes[1]
    whole, first = plan(), plan()
    expected = [whole(rows_of(6, seed)) for seed in range(4)]
    for seed in range(2):
        first(rows_of(6, seed))
    resumed = plan()
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    for seed in (2, 3):
        got = resumed(rows_of(6, seed))
        torch.testing.assert_close(got.direction, expected[seed].direction, rtol=0, atol=0)
        assert got.row_weights == expected[seed].row_weights
    if rule == "rlw":  # the groups still draw other weights from the one generator
        weights = expected[0].row_weights
        assert len({round(weights[(c, TASKS[0])], 12) for c in range(6)}) == 6


def test_a_state_written_per_group_for_a_generator_rule_goes_on_per_group():
    """A checkpoint of the day RLW kept one instance per group resumes as that run would have
    gone on: each group's own generator, as written."""
    import pickle

    from fedmtl.aggregation.plans import GROUPS

    rows = [Row(c, t, torch.ones(3, dtype=F64) * (c + 1 + (t == TASKS[1])), 1.0, 10.0) for c in range(3) for t in TASKS]
    old = AggregationPlan("clients-then-tasks", make_weighting("mean"), make_weighting("rlw"))
    old.one_instance = False  # the per-group way of 2026-12-04's night
    for _ in range(2):
        old(rows)
    state = pickle.loads(pickle.dumps(old.state_dict()))
    assert set(state["task"][GROUPS]) == {"0", "1", "2"}
    resumed = AggregationPlan("clients-then-tasks", make_weighting("mean"), make_weighting("rlw"))
    resumed.load_state_dict(state)
    assert not resumed.one_instance
    for _ in range(2):
        torch.testing.assert_close(resumed(rows).direction, old(rows).direction, rtol=0, atol=0)
