"""Shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def flwr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private FLWR_HOME/HOME so Flower's CLI state never touches the user's."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return home


# The longest test files, longest first (`make test` lists the slowest tests). Each file runs
# in one worker (`--dist loadfile`), and with `--no-loadscope-reorder` workers take files in
# collection order (xdist otherwise starts the files with the most tests first, which left the
# two longest single tests to run alone at the end): starting the long ones first keeps one of
# them from running alone at the end. Re-measure with `--durations=0` when the suite changes.
LONGEST_FIRST = [
    "test_flwr_run.py", "test_deploy.py", "test_sweep_report.py", "test_personalization.py", "test_faults.py",
    "test_deploy_resume.py", "test_simulation.py", "test_weightings_simulation.py", "test_resume.py",
    "test_ray_cluster.py", "test_deploy_stranger.py", "test_inprocess_engine.py", "test_run_identity.py",
    "test_global_state.py", "test_interrupt.py", "test_views.py", "test_sweep_jobs.py", "test_datasets_simulation.py",
    "test_shared_engine.py", "test_python_api.py", "test_personalization_composition.py", "test_plots_format.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the :data:`LONGEST_FIRST` files first (the rest keep their order)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests within a file keep their order


@pytest.fixture
def task_identity():
    """The process's task identity, as Flower's runtime sets it before a ClientApp runs
    (a Message needs it); put back after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
