"""Consecutive runs of a sweep share one Ray instance (``fedmtl.launch.simulation.shared_engine``):
started once, kept when a run's engine settings are the instance's and the previous run's
actors are gone, restarted otherwise, shut down when the block ends; results as runs alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedmtl.launch import simulation
from fedmtl.launch.simulation import engine_settings, shared_engine
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]


class FakeRay:
    """What ``_reuse_shared`` asks of Ray: free resources, whether it is up, its shutdown."""

    def __init__(self, free_cpus: float) -> None:
        self.free_cpus, self.up, self.shutdowns = free_cpus, True, 0

    def is_initialized(self) -> bool:
        return self.up

    def available_resources(self) -> dict[str, float]:
        return {"CPU": self.free_cpus}

    def shutdown(self) -> None:
        self.up, self.shutdowns = False, self.shutdowns + 1


def _smoke(*overrides: str):
    return load_config(ROOT / "configs/smoke.toml", list(overrides))


@pytest.mark.parametrize(("free_cpus", "overrides", "restarted"), [
    (2.0, (), False),                      # same settings, the last run's actors gone: kept
    (2.0, ("engine.num-cpus=1",), True),   # other ray.init arguments: restarted
    (1.0, (), True),                       # an actor still holds a CPU after the wait: restarted
])
def test_a_shared_instance_is_kept_only_for_the_same_settings_once_free(monkeypatch, free_cpus, overrides, restarted):
    monkeypatch.setattr(simulation, "RELEASE_TIMEOUT_S", 0.1)
    ray = FakeRay(free_cpus)
    with shared_engine():
        simulation._SHARED.settings = engine_settings(_smoke("engine.num-cpus=2"))
        simulation._SHARED.free = {"CPU": 2.0}
        simulation._reuse_shared(ray, engine_settings(_smoke("engine.num-cpus=2", *overrides)))
        assert ray.shutdowns == int(restarted)
    assert simulation._SHARED is None


def test_engine_settings_follow_init_arguments_and_the_actors_environment(monkeypatch):
    base = engine_settings(_smoke())
    assert engine_settings(_smoke("engine.client-num-cpus=1")) == base  # a per-actor option, not Ray's
    assert engine_settings(_smoke("engine.max-concurrent-clients=1")) != base
    monkeypatch.setenv("FEDMTL_TEST_ACTOR_SETTING", "1")
    assert engine_settings(_smoke()) != base


def test_an_inner_block_is_part_of_the_outer_one():
    with shared_engine():
        outer = simulation._SHARED
        with shared_engine():
            assert simulation._SHARED is outer
        assert simulation._SHARED is outer
    assert simulation._SHARED is None


TWO_RUNS = """
import json, sys, time
from pathlib import Path
from fedmtl.launch import simulation
from fedmtl.launch.interrupt import descendants
from fedmtl.results import create_run_dir
from fedmtl.validation import load_config

# Ray is first imported by the first run, as in `fedmtl sweep` (importing it changes sys.path)
starts, start = [], simulation._start_ray
simulation._start_ray = lambda *a: (starts.append(1), start(*a))[1]
cfg = load_config(sys.argv[1], ["engine.num-cpus=2", "run.rounds=1"])
out, seen = Path(sys.argv[2]), {}
with simulation.shared_engine():
    for name in ("first", "second"):
        simulation.simulate(cfg, create_run_dir(cfg, out / name), quiet=True)
        import ray
        seen[name] = {"up": ray.is_initialized(), "node": ray.get_runtime_context().get_node_id()}
    deadline = time.monotonic() + 30  # the second run's actors are killed: their CPUs come back
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    seen["free cpus"] = ray.available_resources().get("CPU", 0)
seen["up after"] = ray.is_initialized()
time.sleep(2)
seen["ray processes after"] = [c for p in descendants()
                               if "ray" in (c := Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"))]
seen["starts"] = len(starts)
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_two_runs_share_one_ray_instance_with_the_results_of_runs_alone(tmp_path):
    """The second run reuses the first run's Ray instance and gets the same metrics (the first
    run is a run alone: a fresh instance); the block leaves no Ray process behind."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(TWO_RUNS), str(ROOT / "configs/smoke.toml"),
                           str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["starts"] == 1, seen
    assert seen["first"] == seen["second"] and seen["first"]["up"], seen
    assert seen["free cpus"] == 2, seen
    assert not seen["up after"] and seen["ray processes after"] == [], seen
    first, second = (tmp_path / name / "metrics.csv" for name in ("first", "second"))
    assert len(first.read_text().splitlines()) > 1
    assert first.read_text() == second.read_text()
