"""``engine.backend = "inprocess"``: Flower's Simulation Engine with the ClientApps in this process.

The backend alone (its replies, errors and the swap of Flower's backend), the config rules,
and real runs through ``run_simulation`` with no Ray started. That an in-process run gives
the Ray run's results bit for bit is checked beside tests/test_simulation.py's Ray run (its
``test_an_in_process_run_equals_the_ray_run_bit_for_bit``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

from fedmtl.config import ConfigError, EngineSection
from fedmtl.launch.inprocess import WORKERS, InProcessBackend, use_in_process_backend
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


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


def _overlap_app(
    running: list[int], peak: list[int], lock: threading.Lock, barrier: threading.Barrier | None
) -> ClientApp:
    """A ClientApp that records how many of its calls run at once (and, with a barrier, waits
    until that many are running)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if barrier is not None:
                barrier.wait()
            else:
                threading.Event().wait(0.2)
        finally:
            with lock:
                running[0] -= 1
        return Message(RecordDict({"config": ConfigRecord({"y": 1})}), reply_to=msg)

    return app


def _call_from_threads(backend: InProcessBackend, count: int, identity: tuple) -> list[Message]:
    from flwr.supercore.task_identity import TaskIdentity

    replies: list[Message] = []

    def call() -> None:  # the task identity a Message needs (process-wide, as Flower's runtime sets it)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity
        replies.append(backend.process_message(_message(), _context())[0])

    threads = [threading.Thread(target=call) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return replies


@pytest.mark.parametrize("workers", [2, 3])
def test_the_backend_runs_as_many_calls_at_once_as_its_config_says(task_identity, workers):
    running, peak, lock = [0], [0], threading.Lock()
    barrier = threading.Barrier(workers, timeout=20)  # broken (an error reply) unless all run at once
    backend = InProcessBackend({WORKERS: workers})
    backend.build(lambda: _overlap_app(running, peak, lock, barrier))
    assert backend.num_workers == workers and backend.is_worker_idle()
    replies = _call_from_threads(backend, workers, (1, 1, 7))
    assert len(replies) == workers and all(r.content["config"]["y"] == 1 for r in replies)
    assert peak[0] == workers and backend.is_worker_idle()


def test_one_worker_runs_one_call_at_a_time(task_identity):
    running, peak, lock = [0], [0], threading.Lock()
    backend = InProcessBackend({WORKERS: 1})
    backend.build(lambda: _overlap_app(running, peak, lock, None))
    replies = _call_from_threads(backend, 3, (1, 1, 7))
    assert len(replies) == 3 and peak[0] == 1


def test_the_backend_is_busy_while_all_its_workers_are(task_identity):
    release, started = threading.Event(), threading.Semaphore(0)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        started.release()
        release.wait(20)
        return Message(RecordDict({"config": ConfigRecord({"y": 1})}), reply_to=msg)

    backend = InProcessBackend({WORKERS: 2})
    backend.build(lambda: app)
    worker = threading.Thread(target=_call_from_threads, args=(backend, 2, (1, 1, 7)))
    worker.start()
    assert started.acquire(timeout=20) and started.acquire(timeout=20)
    assert not backend.is_worker_idle()
    release.set()
    worker.join(timeout=30)
    assert backend.is_worker_idle()


@pytest.mark.parametrize(("engine", "gpus", "expected"), [
    ({"num_cpus": 4}, 0, 4),
    ({"num_cpus": 4, "client_num_cpus": 2}, 0, 2),
    ({"num_cpus": 3, "client_num_cpus": 2}, 0, 1),
    ({"num_cpus": 1, "client_num_cpus": 4}, 0, 1),  # at least one
    ({"max_concurrent_clients": 3, "client_num_cpus": 2}, 0, 3),
    ({"num_cpus": 8, "client_num_gpus": 0.5}, 1, 2),  # ⌊1 GPU / 0.5⌋
    ({"num_cpus": 4, "client_num_gpus": 0.25}, 2, 4),  # ⌊2 GPUs / 0.25⌋ = 8 > 4 CPUs
    ({"num_cpus": 8, "client_num_gpus": 0.3}, 1, 3),
    ({"num_cpus": 8, "client_num_gpus": 1.0}, 0, 1),  # no GPU: still one (check_in_process_gpus refuses the run)
    ({"num_cpus": 1000}, 0, None),  # no more than Flower's engine hands out at once
])
def test_clients_at_once_follow_rays_rule(engine, gpus, expected):
    from fedmtl.config import engine_thread_cap

    assert EngineSection(**engine).clients_at_once(gpus) == (engine_thread_cap() if expected is None else expected)


def test_clients_at_once_default_to_the_cpus_this_process_may_use(monkeypatch):
    import fedmtl.config

    monkeypatch.setattr(fedmtl.config, "available_cpus", lambda: 3)
    assert EngineSection().clients_at_once() == 3
    assert EngineSection(client_num_cpus=2).clients_at_once() == 1
    assert EngineSection(client_num_cpus=4).clients_at_once() == 1


def test_engine_thread_cap_is_the_size_of_flowers_worker_pool():
    """Flower 1.41's engine runs its workers in ``ThreadPoolExecutor()``: Python's default size."""
    from concurrent.futures import ThreadPoolExecutor

    from fedmtl.config import engine_thread_cap

    with ThreadPoolExecutor() as pool:
        assert engine_thread_cap() == pool._max_workers


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_in_process_clients_asking_for_a_gpu_where_there_is_none_are_refused():
    from fedmtl.launch.simulation import EngineError, check_in_process_gpus

    with pytest.raises(EngineError, match=r"engine.client-num-gpus = 0.5 per client, but this process sees no"):
        check_in_process_gpus(load_config(SMOKE, ["engine.backend=inprocess", "engine.client-num-gpus=0.5"]))
    check_in_process_gpus(load_config(SMOKE, ["engine.backend=inprocess"]))  # no GPU asked: fine


def test_only_an_in_process_run_names_its_worker_count():
    from fedmtl.launch.simulation import backend_config

    here = backend_config(load_config(SMOKE, ["engine.backend=inprocess", "engine.max-concurrent-clients=3"]))
    assert here[WORKERS] == 3 and here["init_args"]["num_cpus"] == 3
    assert WORKERS not in backend_config(load_config(SMOKE, ["engine.max-concurrent-clients=3"]))


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
    (["engine.backend=inprocess", "engine.max-concurrent-clients=1", "faults.straggler=0.5",
      "faults.straggler-delay=3"],
     "faults.straggler = 0.5 needs clients that run side by side"),
])
def test_in_process_settings_that_cannot_work_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(SMOKE, overrides)


def test_stragglers_are_allowed_in_process_when_clients_run_side_by_side():
    cfg = load_config(SMOKE, ["engine.backend=inprocess", "engine.max-concurrent-clients=2", "faults.straggler=0.5",
                              "faults.straggler-delay=3"])
    assert cfg.faults.straggler == 0.5 and cfg.engine.clients_at_once() == 2


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
    for name in ("metrics.csv", "placement.csv"):  # in-process, every reply is placed on this host, no node
        assert (stopped / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_report_groups_runs_on_either_backend_as_one_configuration(tmp_path):
    """The backend changes no result, so it labels no configuration."""

    from fedmtl.report import RunResult, group_configurations

    def run(seed: int, backend: str, rule: str) -> RunResult:
        config = {"run.seed": seed, "engine.backend": backend, "server.weighting": rule}
        return RunResult(tmp_path / f"{rule}-{seed}", config, {}, pd.DataFrame(), pd.DataFrame())

    groups = group_configurations([run(0, "ray", "fedavg"), run(1, "inprocess", "fedavg"), run(0, "ray", "qffl")])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert [g.label for g in groups] == ["server.weighting=fedavg", "server.weighting=qffl"]
