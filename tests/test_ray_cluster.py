"""Scale-out: a simulation on an existing two-node Ray cluster, and fast clear errors.

The cluster is real: a Ray head and a worker started with ``ray start`` as separate processes
on loopback, one CPU each, so the two virtual-client actors land one on each node. The smoke
config runs against it through ``engine.address``; ``placement.csv`` must show clients on both
nodes. Both Ray processes are stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start --block ...`` in its own session (stopped by killing its group)."""
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 90) -> None:
    """Wait until the cluster at ``address`` reports ``count`` alive nodes."""
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes")


def test_a_simulation_runs_on_a_two_node_ray_cluster(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "RAY_ADDRESS": "", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS")
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                       f"--temp-dir={ray_dir}"], env, tmp_path / "head.log")
    worker = None
    try:
        wait_for_nodes(address, 1, env)
        worker = start_node([f"--address={address}", "--node-ip-address=127.0.0.1"], env, tmp_path / "worker.log")
        wait_for_nodes(address, 2, env)
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "fedmtl", "run", str(ROOT / "configs/smoke.toml"), "--out", str(out), "--quiet",
             "--set", f"engine.address={address}", "--set", "data.num-clients=4", "--set", "run.rounds=2"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        placement = pd.read_csv(out / "placement.csv", dtype=str, keep_default_na=False)
        assert set(placement["stage"]) == {"train", "evaluate"}
        assert len(placement) == 2 * 4 * 2  # 4 clients train and evaluate in each of 2 rounds
        nodes = set(placement["node"])
        assert len(nodes) == 2 and "" not in nodes, placement
        assert set(placement["device"]) == {"cpu"}
    finally:
        for proc in (worker, head):
            if proc is not None:
                stop(proc)
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_an_unreachable_address_fails_within_seconds(tmp_path):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(ROOT / "configs/smoke.toml"), "--out", str(tmp_path / "run"),
         "--set", f"engine.address=127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "cannot reach a Ray cluster there" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60  # the interpreter's imports included
    assert not (tmp_path / "run").exists()


NO_NODE = "no Ray node can host a virtual client"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize(("override", "expected"), [
    ("engine.client-num-cpus=64", (NO_NODE, "engine.client-num-cpus = 64")),
    pytest.param("engine.client-num-gpus=0.5", (NO_NODE, "engine.client-num-gpus = 0.5"), marks=NO_GPU),
    pytest.param("server.device=cuda", ("server.device = 'cuda'", "no CUDA GPU"), marks=NO_GPU),
])
def test_resources_no_node_can_offer_fail_with_a_clear_message(tmp_path, override, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(ROOT / "configs/smoke.toml"), "--out", str(tmp_path / "run"),
         "--set", override],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(text in proc.stderr for text in expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_client_larger_than_the_instance_to_start_fails_before_ray_starts():
    import ray

    from fedmtl.launch.simulation import EngineError, connect
    from fedmtl.validation import load_config

    cfg = load_config(ROOT / "configs/smoke.toml", ["engine.num-cpus=1", "engine.client-num-cpus=2"])
    assert not ray.is_initialized()
    with pytest.raises(EngineError, match=r"engine.client-num-cpus = 2 per client, but the Ray instance started "
                                          r"here has 1 CPUs \(engine.num-cpus"):
        connect(cfg)
    assert not ray.is_initialized()


def test_max_concurrent_clients_sizes_the_ray_instance_and_flowers_actor_pool(tmp_path):
    """Ray gets max-concurrent-clients × client-num-cpus CPUs, so Flower's actor pool (sized
    by its own ``pool_size_from_resources``) holds exactly that many clients."""
    script = (
        "import ray\n"
        "from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources\n"
        "from fedmtl.validation import load_config\n"
        "from fedmtl.launch.simulation import backend_config, connect\n"
        "cfg = load_config('configs/smoke.toml', ['engine.max-concurrent-clients=3', 'engine.client-num-cpus=2'])\n"
        "connect(cfg)\n"
        "print(int(ray.cluster_resources()['CPU']), "
        "pool_size_from_resources(backend_config(cfg)['client_resources']))\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["6", "3"]
