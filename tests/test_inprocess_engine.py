"""``engine.backend = "inprocess"``: Flower's Simulation Engine with the ClientApps in this process.

The backend alone (its replies, errors and the swap of Flower's backend), the config rules,
and real runs through ``run_simulation``: the same results as on Ray, bit for bit, with no
Ray started.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

from fedmtl.config import ConfigError
from fedmtl.launch.inprocess import InProcessBackend, use_in_process_backend
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


@pytest.fixture
def task_identity():
    """The process's task identity, as Flower's runtime sets it before a ClientApp runs
    (a Message needs it); put back after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _message() -> Message:
    return Message(RecordDict({"config": ConfigRecord({"x": 2})}), dst_node_id=7, message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def _echo_app(calls: list[int]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        calls.append(int(msg.content["config"]["x"]))
        context.state["seen"] = ConfigRecord({"x": msg.content["config"]["x"]})
        return Message(RecordDict({"config": ConfigRecord({"y": 2 * msg.content["config"]["x"]})}), reply_to=msg)

    return app


def _failing_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise RuntimeError("client 0: out of data")

    return app


def test_the_backend_runs_the_clientapp_here_and_returns_its_reply_and_context(task_identity):
    calls: list[int] = []
    backend = InProcessBackend({})
    app = _echo_app(calls)
    backend.build(lambda: app)
    context = _context()
    reply, after = backend.process_message(_message(), context)
    assert calls == [2]
    assert reply.content["config"]["y"] == 4
    assert after is context and after.state["seen"]["x"] == 2
    assert backend.num_workers == 1 and backend.is_worker_idle()


def test_a_clientapp_error_is_reported_as_flowers_ray_backend_reports_it(task_identity):
    backend = InProcessBackend({})
    backend.build(_failing_app)
    with pytest.raises(ClientAppException, match="client 0: out of data") as caught:
        backend.process_message(_message(), _context())
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert backend.is_worker_idle()  # the lock is released after a failure


def test_a_clientapp_that_cannot_load_is_not_disguised(task_identity):
    def cannot_load() -> ClientApp:
        raise LoadClientAppError("no module named 'clients.gone'")

    backend = InProcessBackend({})
    backend.build(cannot_load)
    with pytest.raises(LoadClientAppError, match="clients.gone"):
        backend.process_message(_message(), _context())


def test_an_unbuilt_backend_refuses_to_run(task_identity):
    with pytest.raises(ValueError, match="build"):
        InProcessBackend({}).process_message(_message(), _context())


def test_flowers_backend_is_swapped_only_within_the_block():
    from flwr.server.superlink.fleet.vce.backend import raybackend

    flower = raybackend.RayBackend
    with use_in_process_backend():
        assert raybackend.RayBackend is InProcessBackend
    assert raybackend.RayBackend is flower
    with pytest.raises(KeyError), use_in_process_backend():
        raise KeyError("the run failed")
    assert raybackend.RayBackend is flower


@pytest.mark.parametrize(("overrides", "expected"), [
    (["engine.backend=threads"], "engine.backend"),
    (["engine.backend=inprocess", "engine.address=10.0.0.1:6379"], "engine.address names a Ray cluster"),
    (["engine.backend=inprocess", "faults.straggler=0.5", "faults.straggler-delay=3"],
     "faults.straggler = 0.5 needs clients that run side by side"),
])
def test_in_process_settings_that_cannot_work_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(SMOKE, overrides)


def test_the_backend_is_not_part_of_a_runs_identity():
    from fedmtl.results import config_fingerprint

    ray, here = (load_config(SMOKE, [f"engine.backend={b}"]) for b in ("ray", "inprocess"))
    assert config_fingerprint(ray) == config_fingerprint(here)
    assert config_fingerprint(ray) != config_fingerprint(load_config(SMOKE, ["run.seed=1"]))


# -- real runs --------------------------------------------------------------------------------
RUN = ["data.num-clients=4", "run.rounds=3", "server.fraction-train=0.75", "client.head-store=disk"]


def _run(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", str(SMOKE), "--out", str(out), *sets],
                          capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_an_in_process_run_equals_the_ray_run_bit_for_bit(tmp_path):
    ray_run, here = tmp_path / "ray", tmp_path / "inprocess"
    _run(ray_run, *RUN)
    proc = _run(here, *RUN, "engine.backend=inprocess")
    assert "in this process (clients one at a time)" in proc.stdout
    assert "starting Ray" not in proc.stdout
    assert (here / "metrics.csv").read_text() == (ray_run / "metrics.csv").read_text()
    rounds = [pd.read_csv(r / "rounds.csv").drop(columns=["elapsed_s"]) for r in (ray_run, here)]
    pd.testing.assert_frame_equal(*rounds)
    heads = sorted(p.relative_to(ray_run) for p in (ray_run / "heads").rglob("*.pt"))
    assert heads == sorted(p.relative_to(here) for p in (here / "heads").rglob("*.pt")) and heads
    for name in heads:
        a, b = (torch.load(r / name, weights_only=True) for r in (ray_run, here))
        assert a.keys() == b.keys()
    checkpoints = [torch.load(r / "checkpoints" / "round-3.pt", weights_only=True) for r in (ray_run, here)]
    for key, value in checkpoints[0]["backbone"].items():
        assert torch.equal(value, checkpoints[1]["backbone"][key]), key
    assert 'backend = "inprocess"' in (here / "config.toml").read_text()


@pytest.mark.slow
def test_a_library_run_in_process_starts_no_ray_and_records_client_failures(tmp_path):
    import fedmtl

    faults = ["data.num-clients=4", "run.rounds=2", "faults.dropout=0.5", "run.seed=3",
              "server.min-replies=1", "server.on-too-few=skip", "engine.backend=inprocess"]
    result = fedmtl.run(SMOKE, overrides=faults, out=tmp_path / "run")
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    rounds = result.rounds
    cfg = load_config(SMOKE, faults)
    from fedmtl.faults import draw_fault

    for r in (1, 2):
        dropped = sum(draw_fault(cfg.faults, 3, r, 0, c).dropout for c in range(4))
        row = rounds[rounds["round"] == r].iloc[0]
        assert row["failures"] == dropped and row["replies"] == 4 - dropped, (r, dropped)
    assert rounds["failures"].sum() > 0  # the seed covers a failure
    log = (result.folder / "client-errors.log").read_text()
    assert "dropped out of this round (faults.dropout)" in log


def test_rows_up_to_keeps_the_written_bytes_of_the_kept_rounds():
    from fedmtl.results import rows_up_to

    table = b"round,client,value\n1,0,1\n1,1,66.0\n2,0,0.5\n10,0,7\n"
    assert rows_up_to(table, 1) == b"round,client,value\n1,0,1\n1,1,66.0\n"
    assert rows_up_to(table, 9) == b"round,client,value\n1,0,1\n1,1,66.0\n2,0,0.5\n"
    assert rows_up_to(table, 0) == b"round,client,value\n"


@pytest.mark.slow
def test_an_interrupted_in_process_run_resumes_to_the_same_bytes(tmp_path):
    """Ctrl-C after round 2 of 4 stops the run with the resume command (exit 130); the resumed
    run's metrics.csv equals an uninterrupted run's byte for byte."""
    import signal
    import time

    overrides = ["engine.backend=inprocess", "run.rounds=4", "run.checkpoint-every=1", "data.num-clients=3"]
    whole = tmp_path / "whole"
    _run(whole, *overrides)
    stopped = tmp_path / "stopped"
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "fedmtl", "run", str(SMOKE), "--out", str(stopped), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        rounds = stopped / "rounds.csv"
        if rounds.is_file() and len(rounds.read_text().splitlines()) >= 3:  # header + 2 rounds
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # finished before the signal landed: nothing to resume on this machine
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert f"fedmtl run --resume {stopped}" in out + err
    resumed = subprocess.run([sys.executable, "-m", "fedmtl", "run", "--resume", str(stopped), "-q"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert (stopped / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()


def test_a_report_groups_runs_on_either_backend_as_one_configuration(tmp_path):
    """The backend changes no result, so it labels no configuration."""
    import pandas as pd

    from fedmtl.report import RunResult, group_configurations

    def run(seed: int, backend: str, rule: str) -> RunResult:
        config = {"run.seed": seed, "engine.backend": backend, "server.weighting": rule}
        return RunResult(tmp_path / f"{rule}-{seed}", config, {}, pd.DataFrame(), pd.DataFrame())

    groups = group_configurations([run(0, "ray", "fedavg"), run(1, "inprocess", "fedavg"), run(0, "ray", "qffl")])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert [g.label for g in groups] == ["server.weighting=fedavg", "server.weighting=qffl"]
