"""A config no partition fits (more clients than the examples allow, a Dirichlet α too small for
every client to get its examples) is one line naming the keys to change, said before the engine
starts, with no run folder left: from ``fedmtl run``, the Python API and a ``flwr run``
ServerApp alike (tests/test_flwr_run.py submits one through Flower)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedmtl
from fedmtl.data.checks import DataError
from fedmtl.validation import load_config
from tests.plugin_support import restored_registries

# the plugins the in-process runs import register into this process: every test leaves them behind
registries = pytest.fixture(restored_registries, name="registries", autouse=True)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs/smoke.toml"
NO_DIRICHLET_FIT = ["data.partitioner=dirichlet", "data.num-clients=20", "data.dirichlet-alpha=0.001"]
SAID = "could not give every one of 20 clients 10 examples"


def test_the_command_line_says_it_in_one_line_before_ray_starts_and_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    sets = [a for s in NO_DIRICHLET_FIT for a in ("--set", s)]  # the default engine: Ray
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", str(SMOKE), *sets, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: Dirichlet partition with alpha=0.001 could not give every one of 20 clients 10 examples (The max "
        "number of attempts (10) was reached. Please update the values of alpha and try again.); raise "
        "data.dirichlet-alpha or lower data.num-clients"], proc.stderr[-3000:]
    assert not out.exists()
    assert "Round" not in proc.stdout  # no round ran: the data is checked before the engine


@pytest.mark.parametrize(("sets", "said"), [
    (NO_DIRICHLET_FIT, SAID),
    (["data.num-clients=5000"], "5000 examples cannot give 5000 clients at least 2 each"),
    # a server that bounds replies by a cap builds no data, but a local simulation's clients do
    ([*NO_DIRICHLET_FIT, "server.max-examples=100000"], SAID),
])
def test_the_python_api_raises_the_data_error_and_leaves_no_folder(tmp_path, sets, said):
    out = tmp_path / "run"
    with pytest.raises(DataError, match=said):
        fedmtl.run(SMOKE, [*sets, "engine.backend=inprocess"], out=out)
    assert not out.exists()


def test_a_flwr_run_serverapp_refuses_before_it_makes_a_folder_or_asks_a_client(tmp_path):
    from fedmtl.server.app import run_server

    cfg = load_config(SMOKE, [*NO_DIRICHLET_FIT, f"run.output-dir={tmp_path / 'runs'}"])
    with pytest.raises(DataError, match=SAID):
        run_server(None, cfg)  # type: ignore[arg-type]  # no grid: it is never reached
    assert not (tmp_path / "runs").exists()


def test_a_sweep_whose_runs_all_hit_it_fails_them_and_points_to_no_report(tmp_path):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    result = CliRunner().invoke(cli, ["sweep", str(SMOKE), "--grid", "data.dirichlet-alpha=0.001", "--set",
                                      "data.partitioner=dirichlet", "--set", "data.num-clients=20", "--set",
                                      "engine.backend=inprocess", "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 1, result.output
    assert "0/1 runs finished, 1 failed" in result.output and SAID in result.output
    assert "next: fedmtl report" not in result.output  # a report of no finished run is refused


BAD_CLIENT_PLUGIN = '''
import torch

from fedmtl.data import DATASETS, ClientData, DatasetEntry, Federation, Split
from fedmtl.config import Section
from fedmtl.tasks import TaskSpec

TASKS = (TaskSpec("above", "multiclass", 2), TaskSpec("right", "multiclass", 2))


def build(cfg, seed):
    def split(x, client_id):  # client 1's labels of 'above' are 5 and 6: outside its 2 classes
        return Split(x, {"above": (x[:, 1] > 0).long() + (5 if client_id == 1 else 0), "right": (x[:, 0] > 0).long()})

    def build_client(client_id):
        x = torch.randn(40, 8, generator=torch.Generator().manual_seed(client_id))
        return ClientData(client_id, train=split(x[10:], client_id), test=split(x[:10], client_id))

    return Federation((8,), list(TASKS), cfg.num_clients, build_client)


DATASETS.register("one-bad-client")(DatasetEntry(
    input_shape=lambda cfg: (8,), tasks=lambda cfg: TASKS, build=build,
    description="client 1's labels are out of range", params=Section, moved={},
))
'''
BAD_CLIENT_SAID = ("data.dataset = 'one-bad-client', client 1, split 'train': task 'above' (multiclass, 2 classes): "
                   "class labels span 5..6, outside 0..1")


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_a_plugin_dataset_with_one_bad_client_stops_the_run_before_it_starts(tmp_path, backend):
    """One client's data that breaks its dataset's declaration stops the run in one line (it failed
    only that client, and the run finished with the others' numbers, exit code 0)."""
    (tmp_path / "bad_data.py").write_text(BAD_CLIENT_PLUGIN)
    out = tmp_path / "run"
    sets = ['run.plugins=["bad_data.py"]', "data.dataset=one-bad-client", "data.num-clients=3", "model.backbone=mlp",
            "run.rounds=1", f"engine.backend={backend}"]
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", *[a for s in sets for a in ("--set", s)], "-q",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {BAD_CLIENT_SAID}"], proc.stderr[-3000:]
    assert not out.exists()
    if backend == "inprocess":  # the Python API too
        with pytest.raises(DataError, match=r"class labels span 5\.\.6"):
            fedmtl.run(None, [s.replace("bad_data.py", str(tmp_path / "bad_data.py")) for s in sets], out=out)
        assert not out.exists()


def test_a_plugin_dataset_whose_own_code_fails_is_one_line_saying_where(tmp_path):
    """A bug in a plugin's dataset code (here a NameError in client 2's data) stops the run before it
    starts in one line naming the exception and the plugin's file and line, with no folder left."""
    plugin = BAD_CLIENT_PLUGIN.replace("+ (5 if client_id == 1 else 0)", "+ (undefined_name if client_id == 2 else 0)")
    (tmp_path / "buggy_data.py").write_text(plugin)
    out = tmp_path / "run"
    sets = ['run.plugins=["buggy_data.py"]', "data.dataset=one-bad-client", "data.num-clients=3",
            "model.backbone=mlp", "run.rounds=1", "engine.backend=inprocess"]
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", *[a for s in sets for a in ("--set", s)], "-q",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: data.dataset = 'one-bad-client' cannot be built: NameError: name 'undefined_name' is not defined ("
    ), proc.stderr[-3000:]
    assert "buggy_data.py, line " in lines[0] and lines[0].endswith(", in split)")
    assert not out.exists()


RAISING_PARTITIONER = '''
from fedmtl.data import PARTITIONERS


@PARTITIONERS.register("raising-part")
def raising(labels, num_partitions, seed, cfg):
    raise RuntimeError("my partitioner broke")
'''


def test_a_plugin_partitioner_that_raises_is_named_not_the_dataset(tmp_path):
    """'error: data.dataset = 'synthetic' cannot be built: my partitioner broke' blamed the
    dataset for what the partitioner raised."""
    (tmp_path / "part.py").write_text(RAISING_PARTITIONER)
    out = tmp_path / "run"
    sets = ['run.plugins=["part.py"]', "data.partitioner=raising-part", "run.rounds=1", "engine.backend=inprocess"]
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", str(SMOKE), *[a for s in sets for a in ("--set", s)],
                           "-q", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: data.partitioner = 'raising-part' failed: RuntimeError: my partitioner broke ("), proc.stderr[-3000:]
    assert "part.py, line " in lines[0] and lines[0].endswith(", in raising; docs/extending.md: partitioners)")
    assert not out.exists()


def test_a_sweep_run_stopped_by_its_data_leaves_no_run_folder(tmp_path, monkeypatch):
    """A sweep's run stopped by a plugin dataset's bad labels left a run folder holding only
    .fedmtl-run (fedmtl run and fedmtl.run leave none)."""
    from typer.testing import CliRunner

    from fedmtl.cli import cli
    from fedmtl.results import RUN_MARKER
    (tmp_path / "bad_data.py").write_text(BAD_CLIENT_PLUGIN)
    monkeypatch.chdir(tmp_path)
    sets = ['run.plugins=["bad_data.py"]', "data.dataset=one-bad-client", "data.num-clients=3", "model.backbone=mlp",
            "run.rounds=1", "engine.backend=inprocess"]
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["sweep", "--grid", "client.lr=0.01,0.02", "--out", str(out),
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 1, result.output
    assert result.output.count(BAD_CLIENT_SAID) == 2 and "0/2 runs finished, 2 failed" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == [".fedmtl-sweep", "sweep.json"], list(out.rglob("*"))
    assert not list(out.rglob(RUN_MARKER))
