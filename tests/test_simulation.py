"""End to end through Flower's real Ray Simulation Engine, and the run-folder format."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from fedmtl.config import ConfigError
from fedmtl.results import METRIC_COLUMNS, create_run_dir, load_run
from fedmtl.validation import load_config
from tests.helpers import is_png

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(out: Path, *overrides: str, config: str = "configs/smoke.toml") -> subprocess.CompletedProcess:
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(ROOT / config), "--out", str(out), *sets],
        capture_output=True, text=True, timeout=600, cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, tuple[Path, str, str, str]]:
    """The same 4-client, 3-round simulation with each head store, and with 2 virtual
    SuperNodes taking turns playing the 4 clients (3 are asked per round). The first is on
    Ray; the others on the in-process backend: ``inprocess`` must give the Ray run's bytes
    (:func:`test_an_in_process_run_equals_the_ray_run_bit_for_bit`), so the others'
    comparisons with the Ray run check the head store, or the SuperNodes' turns, with one Ray
    start-up in all."""
    runs = {}
    in_process = "engine.backend=inprocess"
    for name, extra in (("disk", []), ("inprocess", [in_process]), ("context", [in_process]),
                        ("shared", ["engine.supernodes=2", in_process])):
        store = "context" if name == "context" else "disk"
        out = tmp_path_factory.mktemp(f"smoke-{name}") / "run"
        proc = _run(
            out, f"client.head-store={store}", "data.num-clients=4", "run.rounds=3",
            "server.fraction-train=0.75", *extra,
        )
        runs[name] = (out, store, proc.stdout, proc.stderr)
    return runs


@pytest.fixture(params=["disk", "context"])
def smoke_run(request, smoke_runs) -> tuple[Path, str, str, str]:
    return smoke_runs[request.param]


def test_same_seed_same_metrics_whatever_the_head_store(smoke_runs):
    disk = (smoke_runs["disk"][0] / "metrics.csv").read_text()
    context = (smoke_runs["context"][0] / "metrics.csv").read_text()
    assert disk == context


def test_supernodes_taking_turns_give_the_same_run_as_one_per_client(smoke_runs):
    shared, own = smoke_runs["shared"][0], smoke_runs["disk"][0]
    assert (shared / "metrics.csv").read_text() == (own / "metrics.csv").read_text()
    assert "supernodes = 2" in (shared / "config.toml").read_text()
    assert "supernodes = 4" in (own / "config.toml").read_text()
    # each client's heads are its own, whichever SuperNode played it
    shared_heads = sorted(p.relative_to(shared) for p in (shared / "heads").rglob("*.safetensors"))
    assert shared_heads and shared_heads == sorted(p.relative_to(own) for p in (own / "heads").rglob("*.safetensors"))


def test_an_in_process_run_equals_the_ray_run_bit_for_bit(smoke_runs):
    """``engine.backend = "inprocess"`` (tests/test_inprocess_engine.py): the Ray run's
    metrics, rounds, head files and checkpoints, bit for bit, with no Ray started."""
    import torch
    from safetensors.torch import load_file

    ray_run, here = smoke_runs["disk"][0], smoke_runs["inprocess"][0]
    stdout = smoke_runs["inprocess"][2]
    assert re.search(r"in this process, \d+ clients? at a time", stdout)
    assert "starting Ray" not in stdout
    assert (here / "metrics.csv").read_text() == (ray_run / "metrics.csv").read_text()
    rounds = [pd.read_csv(r / "rounds.csv").drop(columns=["elapsed_s"]) for r in (ray_run, here)]
    pd.testing.assert_frame_equal(*rounds)
    heads = sorted(p.relative_to(ray_run) for p in (ray_run / "heads").rglob("*.safetensors"))
    assert heads == sorted(p.relative_to(here) for p in (here / "heads").rglob("*.safetensors")) and heads
    for name in heads:
        a, b = (load_file(r / name) for r in (ray_run, here))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    checkpoints = [torch.load(r / "checkpoints" / "round-3.pt", weights_only=True) for r in (ray_run, here)]
    for key, value in checkpoints[0]["backbone"].items():
        assert torch.equal(value, checkpoints[1]["backbone"][key]), key
    assert 'backend = "inprocess"' in (here / "config.toml").read_text()


def test_shared_supernodes_need_heads_on_disk():
    with pytest.raises(ConfigError, match="client.head-store = 'context' keeps heads in a SuperNode's memory"):
        load_config(ROOT / "configs/smoke.toml", ["client.head-store=context", "engine.supernodes=1"])


def test_run_folder_has_the_documented_files(smoke_run):
    out, _, _, _ = smoke_run
    for name in ("config.toml", "metrics.csv", "rounds.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-2.pt", "round-3.pt"]
    for name in ("accuracy.png", "final_distribution.png"):
        assert is_png(out / "plots" / name), name


def test_results_read_with_pandas(smoke_run):
    out, store, _, _ = smoke_run
    run = load_run(out)
    metrics, rounds, summary = run["metrics"], run["rounds"], run["summary"]
    assert list(metrics.columns) == METRIC_COLUMNS
    test = metrics[(metrics.split == "test") & (metrics.task != "all")]
    # every client evaluated both tasks every round
    assert set(test["round"]) == {1, 2, 3}
    counts = test[test.metric == "accuracy"].groupby(["round", "task"])["client"].nunique()
    assert (counts == 4).all()
    assert test[test.metric == "accuracy"]["value"].between(0, 1).all()
    assert list(rounds["round"]) == [1, 2, 3]
    assert (rounds["sampled"] == 3).all() and (rounds["replies"] == 3).all() and (rounds["failures"] == 0).all()
    for task in ("left", "right"):
        last = test[(test["round"] == 3) & (test.task == task) & (test.metric == "accuracy")]["value"]
        assert rounds.loc[rounds["round"] == 3, f"{task}.accuracy.mean"].item() == pytest.approx(last.mean())
        assert rounds.loc[rounds["round"] == 3, f"{task}.accuracy.worst"].item() == pytest.approx(last.min())
        assert summary["final"][task]["mean"] == pytest.approx(last.mean())
    weights = metrics[(metrics.metric == "aggregation-weight")].groupby("round")["value"].sum()
    assert weights.to_numpy() == pytest.approx([1.0, 1.0, 1.0])
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["client"]["head-store"] == store
    assert resolved["client"]["head-store-dir"] == "heads"  # relative to the run folder


def test_heads_continue_across_rounds_in_the_real_engine(smoke_run):
    out, store, _, _ = smoke_run
    m = pd.read_csv(out / "metrics.csv")
    fp = m[m.metric.str.startswith("heads-fingerprint")].pivot_table(
        index=["client", "round"], columns="metric", values="value"
    )
    checked = 0
    for _, rows in fp.groupby(level="client"):
        rows = rows.droplevel("client").sort_index()
        for (_, prev), (_, cur) in zip(rows.iloc[:-1].iterrows(), rows.iloc[1:].iterrows(), strict=True):
            assert cur["heads-fingerprint-in"] == prev["heads-fingerprint-out"]
            checked += 1
        assert (rows["heads-fingerprint-in"] != rows["heads-fingerprint-out"]).all()
    assert checked >= 4
    if store == "disk":
        trained = sorted(fp.index.get_level_values("client").unique())
        files = sorted(p.name for p in (out / "heads").rglob("*.safetensors"))
        assert sorted({name.split(".")[0] for name in files}) == sorted(f"client-{i}" for i in trained)
        last = fp.reset_index().groupby("client")["round"].max()
        for client, round_ in last.items():  # the newest version is the round it last trained
            assert f"client-{client}.r{round_}.safetensors" in files
    else:
        assert not (out / "heads").exists()


def test_progress_display_and_final_table(smoke_run):
    """Output redirected (not a terminal): the header, plain round lines, the table, no colour
    codes, and nothing of Ray's or Flower's (without -v), nothing after the results line."""
    out, store, stdout, stderr = smoke_run
    assert "round 1/3" in stdout and "round 3/3" in stdout
    assert "left: mean" in stdout and "worst" in stdout
    assert "Personalized test metrics across clients (round 3)" in stdout
    lines = stdout.splitlines()
    assert lines[:2] == [f"config    {ROOT / 'configs/smoke.toml'}", f"run       {out}"]
    if store == "disk":  # the Ray run
        assert lines[2] == "engine    local Ray, all CPUs; 1 CPU per client"
    else:  # as many clients at a time as this machine has cores
        assert lines[2].startswith("engine    in this process, ") and lines[2].endswith("; 1 CPU per client")
    assert lines[3] == "clients   4 registered, 3 sampled per round (uniform)"
    assert lines[-1] == f"Results: {out}"
    assert "\x1b[" not in stdout + stderr
    for engine_line in ("Started a local Ray instance", "ClientAppActor", "INFO :", "WARNING :"):
        assert engine_line not in stdout + stderr, stderr[-3000:]


def test_centralized_baseline_writes_the_same_format(tmp_path):
    out = tmp_path / "central"
    _run(out, "run.mode=centralized", "run.rounds=2", config="configs/smoke.toml")
    run = load_run(out)
    assert run["summary"]["mode"] == "centralized"
    test = run["metrics"][(run["metrics"].split == "test") & (run["metrics"].metric == "accuracy")]
    assert test.groupby("round")["client"].nunique().tolist() == [2, 2]
    # two epochs over the pooled data must beat chance clearly
    assert test[test["round"] == 2]["value"].mean() > 0.3
    assert is_png(out / "plots" / "accuracy.png")


def test_existing_nonempty_out_folder_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(ROOT / "configs/smoke.toml"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "exists and is not empty" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_the_centralized_baseline_trains_with_client_num_cpus_threads_whatever_the_callers(tmp_path, monkeypatch):
    """Its numbers do not depend on the machine's core count (or OMP_NUM_THREADS): it trains
    with engine.client-num-cpus torch threads, as a client does, and puts the caller's back."""
    import torch

    from fedmtl.training import centralized

    seen: list[int] = []
    train_local = centralized.train_local

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return train_local(*args, **kwargs)

    monkeypatch.setattr(centralized, "train_local", counting)
    cfg = load_config(ROOT / "configs/smoke.toml", ["run.mode=centralized", "run.rounds=1"])
    caller = torch.get_num_threads()
    try:
        for threads, name in ((1, "one"), (3, "three")):
            torch.set_num_threads(threads)
            centralized.run_centralized(cfg, create_run_dir(cfg, tmp_path / name), quiet=True)
            assert torch.get_num_threads() == threads  # the caller's count, put back
    finally:
        torch.set_num_threads(caller)
    assert seen == [1, 1]  # engine.client-num-cpus = 1
    one, three = ((tmp_path / name / "metrics.csv").read_bytes() for name in ("one", "three"))
    assert one == three
