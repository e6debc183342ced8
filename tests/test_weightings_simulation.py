"""Every registered rule runs for a round through the real apps, set by config, and every
aggregation plan runs with missing labels (one task per client, mixed task sets).

Eighteen one-round federations cover all rules: each sets a client (local cross-task)
weighting, a server weighting across clients and, for the two-level plans, a server
weighting across tasks, so every name appears in a slot where it may run. Four of them use
mixed task sets (one per plan), two give the two-level plans one task per client, and two
more runs do so for the other plans.

The four mixed-task-set runs, one per plan, are real Ray simulations (:data:`ON_RAY`); the
others run the real ServerApp round loop against the real ClientApp in this process
(``federate`` of ``tests/test_personalization_composition.py``): a rule's code is the same
either way (server rules run in the driver, client rules in the ClientApp), and the engine
itself is what the Ray runs check, at a quarter of the cost.
"""

from __future__ import annotations

import tomllib
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmtl.aggregation import WEIGHTINGS
from fedmtl.data import load_federation
from fedmtl.results import create_run_dir
from fedmtl.validation import load_config
from tests.simulation_batch import run_batch

ROOT = Path(__file__).resolve().parents[1]

# (plan, server weighting, server task weighting, client weighting, extra --set values)
MIXED = ["data.task-sets=mixed", "run.seed=1"]
RUNS = [
    ("clients-then-tasks", "fedavg", "mgda", "uncertainty", MIXED),
    ("tasks-then-clients", "qffl", "pcgrad", "gradnorm", ["server.params={q=2}", *MIXED]),
    ("clients-then-tasks", "afl", "cagrad", "famo", ["server.optimizer=momentum", "server.lr=0.5"]),
    ("tasks-then-clients", "term", "imtl-g", "rlw", ["server.optimizer=adam", "server.lr=0.01"]),
    ("clients-then-tasks", "fedmgda+", "aligned-mtl", "dwa", ["server.lr=0.1", "data.task-sets=one"]),
    ("clients", "fedfv", "mean", "db-mtl", ["server.params={alpha=0.25, tau=1}", *MIXED]),
    ("tasks-then-clients", "propfair", "nash-mtl", "upgrad", []),
    ("clients-then-tasks", "krum", "dualproj", "fairgrad", ["client.params={alpha=2}"]),
    ("flat", "trimmed-mean", "mean", "nash-mtl", MIXED),
    ("tasks-then-clients", "median", "db-mtl", "mean", ["data.task-sets=one"]),
    # one task per client for the other two plans (above: clients-then-tasks, tasks-then-clients)
    ("clients", "qffl", "mean", "mean", ["data.task-sets=one"]),
    ("flat", "fairgrad", "mean", "mgda", ["data.task-sets=one"]),
    # the rules added with the two kinds of rule (weightings and aggregators)
    ("tasks-then-clients", "rfa", "fsmgda", "excess-mtl", []),
    ("tasks-then-clients", "centered-clipping", "fedgradnorm", "gradvac", MIXED),
    ("clients-then-tasks", "bulyan", "pcd", "config", []),
    ("clients-then-tasks", "geometric-mean", "cr-mogm", "graddrop", ["data.task-sets=one"]),
    ("flat", "stch", "mean", "imtl-l", MIXED),
    ("clients", "slaw", "mean", "go4align", []),
]


def task_sets(extra: list[str]) -> list[list[str]]:
    """The task sets of the 4 clients of a run with these overrides."""
    data_keys = [e for e in extra if e.startswith(("data.", "run.seed"))]
    cfg = load_config(ROOT / "configs/smoke.toml", ["data.num-clients=4", *data_keys])
    fed = load_federation(cfg.data, cfg.run.seed)
    return [fed.client(c).tasks for c in range(4)]


def test_mixed_runs_really_mix_task_sets():
    sets = task_sets(MIXED)
    assert {len(s) for s in sets} == {1, 2}
    assert [len(s) for s in task_sets(["data.task-sets=one"])] == [1, 1, 1, 1]


def covered() -> set[str]:
    names = set()
    for plan, server, task, client, _ in RUNS:
        names |= {server, client} | ({task} if plan in ("clients-then-tasks", "tasks-then-clients") else set())
    return names


def test_the_runs_cover_every_registered_weighting():
    assert covered() == set(WEIGHTINGS.names())


def overrides(plan, server, task, client, extra) -> list[str]:
    """The ``--set`` values of one run."""
    return [
        "run.rounds=1", "data.num-clients=4", f"server.plan={plan}", f"server.weighting={server}",
        f"server.task-weighting={task}", f"client.weighting={client}", *extra,
    ]


ON_RAY = tuple(sorted({run[0]: i for i, run in reversed(list(enumerate(RUNS))) if "data.task-sets=mixed" in run[4]}
                      .values()))
"""The runs that are real Ray simulations: the first mixed-task-set run of each plan."""


def test_the_ray_runs_cover_every_plan_with_mixed_task_sets():
    assert sorted(RUNS[i][0] for i in ON_RAY) == sorted({run[0] for run in RUNS})


def run_in_process(cfg_path: Path, sets: list[str], out: Path) -> str:
    """One federation in this process (the real round loop and ClientApp); "" or the error."""
    from flwr.supercore.task_identity import TaskIdentity

    from tests.test_personalization_composition import federate

    threads = torch.get_num_threads()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100
    try:
        cfg = load_config(cfg_path, sets)
        federate(create_run_dir(cfg, out), cfg)
        return ""
    except Exception as exc:  # noqa: BLE001 - reported by the run's test
        return "".join(traceback.format_exception(exc))[-4000:]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every run of RUNS: those of :data:`ON_RAY` as real Ray simulations in one process (saves
    start-up time), the others in this process; the parent folder and each run folder's outcome
    ("" = finished)."""
    folder = tmp_path_factory.mktemp("weightings")
    smoke = ROOT / "configs/smoke.toml"
    jobs = [{"config": str(smoke), "overrides": overrides(*RUNS[i]), "out": str(folder / f"run{i}")} for i in ON_RAY]
    outcomes = run_batch(jobs, folder)
    for i, run in enumerate(RUNS):
        if i not in ON_RAY:
            outcomes[str(folder / f"run{i}")] = run_in_process(smoke, overrides(*run), folder / f"run{i}")
    return folder, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(RUNS)),
                         ids=[f"{r[3]}+{r[1]}+{r[2]}{'-ray' if i in ON_RAY else ''}" for i, r in enumerate(RUNS)])
def test_weighting_runs_in_a_simulation(batch, index):
    plan, server, task, client, extra = RUNS[index]
    folder, outcomes = batch
    out = folder / f"run{index}"
    assert outcomes[str(out)] == "", outcomes[str(out)]
    config = tomllib.loads((out / "config.toml").read_text())
    assert (config["server"]["weighting"], config["client"]["weighting"]) == (server, client)
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds.loc[0, "replies"] == 4 and rounds.loc[0, "failures"] == 0
    assert "fallbacks" in rounds.columns
    metrics = pd.read_csv(out / "metrics.csv")
    held = sum(len(fed_tasks) for fed_tasks in task_sets(extra))
    train = metrics[(metrics.split == "train") & (metrics.metric == "weight")]
    assert len(train) == held and train.value.notna().all()  # one local weight per held task
    weights = metrics[metrics.metric == "aggregation-weight"]
    linear_levels = WEIGHTINGS.get(server).kind == "weighting" and (
        plan in ("clients", "flat") or WEIGHTINGS.get(task).kind == "weighting")
    assert len(weights) == (held if linear_levels and plan != "clients" else 4 if linear_levels else 0)
    test = metrics[(metrics.split == "test") & (metrics.metric == "accuracy")]
    assert len(test) == held and test.value.between(0, 1).all()
    # a client without a task has no weight, loss, part or test metric for it
    cfg = load_config(out / "config.toml")
    fed = load_federation(cfg.data, cfg.run.seed)
    for client in range(4):
        tasks = set(metrics[(metrics.client == client) & (metrics.task != "all")].task)
        assert tasks == set(fed.client(client).tasks), client
