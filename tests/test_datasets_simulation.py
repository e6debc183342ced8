"""Each dataset's shipped config runs in the real simulation (one short round).

The runs use the in-process engine (``engine.backend = "inprocess"``: Flower's Simulation
Engine and ClientApp, without Ray's start-up): the datasets, not the engine, are the subject
(tests/test_simulation.py and tests/test_inprocess_engine.py cover the engines)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmtl.data import dataset_tasks
from fedmtl.validation import load_config
from tests.celeba_fixture import make_celeba
from tests.simulation_batch import run_batch

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "synthetic": ("configs/synthetic.toml", ["data.num-clients=6", "server.fraction-train=0.5"]),
    "arrests": ("configs/arrests.toml", []),
    "celeba": ("configs/celeba.toml", ["data.num-clients=3", "data.params.image-size=32"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[str], str]]:
    """Every case for one round, in one process: ``{name: (run folder, overrides, error)}``."""
    folder = tmp_path_factory.mktemp("datasets")
    jobs = {}
    for name, (config, extra) in CASES.items():
        sets = ["run.rounds=1", "engine.backend=inprocess", *extra]
        if name == "celeba":  # a tiny CelebA copy in the standard layout
            sets.append(f"data.path={make_celeba(folder / 'celeba')}")
        jobs[name] = {"config": str(ROOT / config), "overrides": sets, "out": str(folder / f"run-{name}")}
    outcomes = run_batch(list(jobs.values()), folder)
    return {name: (Path(job["out"]), job["overrides"], outcomes[job["out"]]) for name, job in jobs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_dataset_config_runs_in_simulation(runs, name):
    out, sets, error = runs[name]
    assert error == "", error
    cfg = load_config(ROOT / CASES[name][0], sets)
    metrics = pd.read_csv(out / "metrics.csv")
    test = metrics[(metrics.split == "test") & (metrics.metric == "accuracy")]
    assert set(test.task) == {t.name for t in dataset_tasks(cfg.data)}
    assert test.client.nunique() == cfg.data.num_clients


@pytest.mark.slow
def test_group_gaps_are_summarised_across_clients_for_data_with_groups(runs):
    out, _, error = runs["arrests"]
    assert error == "", error
    rounds = pd.read_csv(out / "rounds.csv")
    last = rounds.dropna(subset=["released.accuracy.mean"]).iloc[-1]
    metrics = pd.read_csv(out / "metrics.csv")
    gaps = metrics[(metrics.split == "test") & (metrics.task == "released")
                   & (metrics.metric == "demographic-parity-diff-colour") & (metrics["round"] == last["round"])]
    assert last["released.demographic-parity-diff-colour.mean"] == pytest.approx(gaps.value.mean())
    assert last["released.demographic-parity-diff-colour.worst"] == pytest.approx(gaps.value.max())
    for column in ("released.equalized-odds-diff-colour.pooled", "checks.accuracy-gap-colour.pooled",
                   "overall.accuracy.worst10"):
        assert 0 <= last[column] <= 1, column
