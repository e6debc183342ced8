"""Task-set assignment and missing labels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.config import ConfigError, ExperimentConfig
from fedmtl.data import load_federation
from fedmtl.data.task_sets import TASK_SETS, assign_tasks
from fedmtl.validation import load_config

TASKS = ["a", "b", "c", "d", "e"]


def _data(mode: str, k: int = 2, full: float = 0.5):
    """The [data] section alone (the schema's checks, not the dataset's: these tests assign tasks
    of their own, up to 5, where validation would bound k by MultiMNIST's 2)."""
    return ExperimentConfig.model_validate(
        {"data": {"task-sets": mode, "tasks-per-client": k, "full-task-fraction": full}}).data


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(TASK_SETS.names()),
    clients=st.integers(1, 60),
    t=st.integers(1, 5),
    k=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_every_assignment_gives_nonempty_ordered_subsets(mode, clients, t, k, seed):
    tasks = TASKS[:t]
    sets = assign_tasks(clients, tasks, seed, _data(mode, k))
    assert len(sets) == clients
    for held in sets:
        assert held and len(set(held)) == len(held)
        assert held == [x for x in tasks if x in held]  # dataset order
    assert sets == assign_tasks(clients, tasks, seed, _data(mode, k))  # deterministic


def test_patterns():
    assert assign_tasks(3, TASKS, 0, _data("all")) == [TASKS] * 3
    assert assign_tasks(7, TASKS, 0, _data("one")) == [["a"], ["b"], ["c"], ["d"], ["e"], ["a"], ["b"]]
    assert all(len(s) == 2 for s in assign_tasks(50, TASKS, 0, _data("random", 2)))
    covered = {x for s in assign_tasks(200, TASKS, 0, _data("random", 1)) for x in s}
    assert covered == set(TASKS)
    mixed = assign_tasks(400, TASKS, 0, _data("mixed", 1, 0.25))
    full = sum(len(s) == 5 for s in mixed) / 400
    assert abs(full - 0.25) < 0.07 and all(len(s) in (1, 5) for s in mixed)
    assert all(len(s) == 5 for s in assign_tasks(20, TASKS, 0, _data("mixed", 1, 1.0)))


def test_clients_only_see_labels_and_heads_of_their_tasks():
    cfg = load_config(None, ["data.num-clients=4", "data.params.pairs-per-digit=1", "data.task-sets=one"])
    fed = load_federation(cfg.data, cfg.run.seed)
    for client in range(4):
        data = fed.client(client)
        expected = ["left", "right"][client % 2]
        assert data.tasks == [expected] and list(data.test.targets) == [expected]
        assert [t.name for t in fed.client_tasks(client)] == [expected]


def test_unknown_task_set_and_centralized_with_missing_labels_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task-set assignment 'onee'.*did you mean 'one'"):
        load_config(None, ["data.task-sets=onee"])
    with pytest.raises(ConfigError, match="centralized.*needs data.task-sets = 'all'"):
        load_config(None, ["run.mode=centralized", "data.task-sets=one"])
