"""The Python API (``fedmtl.run``, ``fedmtl.sweep``, ``fedmtl.load_runs``; docs/python.md) and
plugins (``run.plugins``; docs/extending.md).

One test starts Ray: a custom weighting and a custom dataset, from a plugin file, run through the
real engine by ``fedmtl.run`` in a fresh interpreter, then a second experiment in the same
process; the caller's environment, loggers, working directory and stdout are checked. The rest
runs the centralized baseline in-process (no Ray).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedmtl.config import ConfigError, ExperimentConfig
from tests.plugin_support import restored_registries, write_study

ROOT = Path(__file__).resolve().parents[1]

registries = pytest.fixture(restored_registries, name="registries")


# -- through the Ray engine, in a fresh interpreter ----------------------------------------------
@pytest.mark.slow
def test_api_runs_a_plugin_weighting_and_dataset_on_ray_and_leaves_the_caller_alone(tmp_path):
    config = write_study(tmp_path / "study")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    code = textwrap.dedent(f"""
        import json, logging, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import fedmtl
        from tests.test_global_state import differences, snapshot

        os.chdir({str(elsewhere)!r})  # the plugin file is found relative to the config file
        os.environ["PYTHONPATH"] = "/caller/own/path"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        factory = logging.getLogRecordFactory()

        def state():  # the loggers a run configures (third-party ones that libraries add on import are theirs)
            s = snapshot(loggers=("", "flwr", "ray", "ray.rllib", "fedmtl"))
            return {{k: v for k, v in s.items() if k in ("environ", "cwd", "logging", "logging.disable")}}

        before = state()
        first = fedmtl.run({str(config)!r}, out={str(tmp_path / "first")!r})
        between = state()
        second = fedmtl.run(first.config.to_nested(), ["run.mode=centralized", "run.rounds=1"],
                            out={str(tmp_path / "second")!r})
        after = state()
        frame = fedmtl.load_runs([first.folder, second.folder])
        finished = fedmtl.resume(first.folder)  # finished: returned as it is, nothing runs
        print(json.dumps({{
            "first": differences(before, between), "second": differences(before, after),
            "factory": logging.getLogRecordFactory() is factory,
            "weighting": first.config.server.weighting, "dataset": first.config.data.dataset,
            "plugins": first.config.run.plugins,
            "metrics": sorted(set(first.metrics["task"])), "metric_rows": len(first.metrics),
            "rounds": first.rounds["round"].tolist(), "final": sorted(first.summary["final"]),
            "participation": None if first.participation is None else len(first.participation),
            "second_mode": second.config.run.mode, "resumed": finished.folder == first.folder,
            "frame_runs": frame["run"].unique().tolist(), "frame_rows": len(frame),
            "frame_modes": sorted(set(frame["run.mode"])), "frame_weighting": sorted(set(frame["server.weighting"])),
        }}))
    """)
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "quiet runs printed on stdout:\n" + proc.stdout[-3000:]  # only the JSON line
    out = json.loads(lines[0])
    assert out["first"] == [], "the first run changed:\n" + "\n".join(out["first"])
    assert out["second"] == [], "two runs changed:\n" + "\n".join(out["second"])
    assert out["factory"]
    assert "Started a local Ray instance" not in proc.stderr, proc.stderr[-3000:]
    assert (out["weighting"], out["dataset"]) == ("first-task-heavy", "blobs")
    assert out["plugins"] == [str(tmp_path / "study" / "plugins" / "my_plugin.py")]
    assert {"above", "right"} <= set(out["metrics"]) and out["metric_rows"] > 0
    assert out["rounds"] == [1, 2] and out["final"] == ["above", "right"]
    assert out["participation"] == 2
    assert out["second_mode"] == "centralized" and out["resumed"]
    assert out["frame_runs"] == [str(tmp_path / "first"), str(tmp_path / "second")]
    assert out["frame_modes"] == ["centralized", "federated"] and out["frame_weighting"] == ["first-task-heavy"]


# -- in-process: configs, the centralized baseline, sweeps, load_runs ----------------------------
def test_make_config_takes_a_file_a_dict_or_a_config_with_overrides(tmp_path):
    from fedmtl.api import make_config

    smoke = ROOT / "configs" / "smoke.toml"
    from_file = make_config(smoke, ["run.rounds=3"])
    assert from_file.run.rounds == 3 and from_file.data.num_clients == 2
    from_dict = make_config(from_file.to_nested(), ["server.weighting=qffl"])
    assert from_dict.server.weighting == "qffl" and from_dict.run.rounds == 3
    assert make_config(from_file) == from_file
    assert make_config(from_file, ["run.seed=4"]).run.seed == 4
    from fedmtl.config import ConfigError

    with pytest.raises(ConfigError, match="run.rounds"):
        make_config({"run": {"rounds": 0}})
    with pytest.raises(ConfigError, match="expected a file, a dict or an ExperimentConfig"):
        make_config(3)  # type: ignore[arg-type]


def test_sweep_and_load_runs_of_the_centralized_baseline(tmp_path, registries, monkeypatch):
    import fedmtl

    config = write_study(tmp_path / "study")
    done = fedmtl.sweep(config, grid={"client.weighting": ["first-task-heavy", "mean"]}, seeds=1,
                        overrides=["run.mode=centralized", "run.rounds=1"], out=tmp_path / "sweep")
    assert [r.status for r in done.plan.runs] == ["done", "done"] and not done.failed
    assert [r.config.client.weighting for r in done.runs] == ["first-task-heavy", "mean"]
    frame = done.metrics
    assert list(frame.columns[:7]) == ["run", "round", "client", "task", "split", "metric", "value"]
    assert sorted(set(frame["client.weighting"])) == ["first-task-heavy", "mean"]
    assert frame["run"].nunique() == 2 and (frame["data.params.examples"] == 40).all()
    again = fedmtl.sweep(config, grid={"client.weighting": ["first-task-heavy", "mean"]}, seeds=1,
                         overrides=["run.mode=centralized", "run.rounds=1"], out=tmp_path / "sweep")
    assert [r.status for r in again.plan.runs] == ["skipped", "skipped"]
    assert len(fedmtl.load_runs(tmp_path / "sweep")) == len(frame)
    monkeypatch.chdir(tmp_path)  # a relative path gives the same run column as RunResult.folder
    relative = fedmtl.load_runs("sweep")
    assert set(relative["run"]) == {str(r.folder) for r in done.runs} == set(frame["run"])

    # a config object (not a file) is written next to the runs for the sweep to read
    cfg = fedmtl.make_config(config, ["run.mode=centralized", "run.rounds=1"])
    from_object = fedmtl.sweep(cfg, seeds=2, out=tmp_path / "objects")
    assert (tmp_path / "objects" / "base-config.toml").is_file()
    assert [r.config.run.seed for r in from_object.runs] == [0, 1]
    # a refused plan takes back the base config it wrote, and the folders made for it
    from fedmtl.config import ConfigError

    with pytest.raises(ConfigError, match="run.roundz"):
        fedmtl.sweep(cfg, grid={"run.roundz": [1]}, out=tmp_path / "new" / "refused")
    assert not (tmp_path / "new").exists()
    kept = (tmp_path / "objects" / "base-config.toml").read_bytes()
    with pytest.raises(ConfigError, match="--seeds = 0"):
        fedmtl.sweep(fedmtl.make_config(config, ["run.rounds=7"]), seeds=0, out=tmp_path / "objects")
    assert (tmp_path / "objects" / "base-config.toml").read_bytes() == kept


@pytest.mark.parametrize("as_object", [False, True], ids=["dict", "object"])
def test_a_sweep_of_a_dict_or_object_gives_each_grid_value_its_own_defaults(tmp_path, monkeypatch, as_object):
    import fedmtl
    import fedmtl.launch.sweep

    monkeypatch.setattr(fedmtl.launch.sweep, "run_sweep", lambda planned, **kwargs: planned)  # plan only

    def base(values):
        return fedmtl.make_config(values) if as_object else values

    rules = fedmtl.sweep(base({"server": {"weighting": "qffl"}}), grid={"server.weighting": ["qffl", "fedavg"]},
                         out=tmp_path / "rules")
    qffl = dict(fedmtl.make_config({"server": {"weighting": "qffl"}}).server.params)
    assert [dict(rules.plan.config_of(r).server.params) for r in rules.plan.runs] == [qffl, {}]
    datasets = fedmtl.sweep(base({"model": {"backbone": "mlp"}}), grid={"data.dataset": ["multimnist", "synthetic"]},
                            out=tmp_path / "datasets")
    synthetic = datasets.plan.config_of(datasets.plan.runs[1])
    alone = fedmtl.make_config({"data": {"dataset": "synthetic"}, "model": {"backbone": "mlp"}})
    assert synthetic.data.params == alone.data.params
    methods = fedmtl.sweep(base({"personalization": {"method": "ditto"}}),
                           grid={"personalization.method": ["ditto", "fedper"]}, out=tmp_path / "methods")
    assert [methods.plan.config_of(r).model.heads for r in methods.plan.runs] == ["global", "personal"]
    # a table given in its Python spelling (task_params) is kept: it was dropped, and q fell back to 1
    spelt = fedmtl.sweep(base({"server": {"plan": "tasks-then-clients", "task_weighting": "qffl",
                                          "task_params": {"q": 3}}}), grid={"client.lr": [0.1, 0.2]},
                         out=tmp_path / "spelt")
    assert [dict(spelt.plan.config_of(r).server.task_params)["q"] for r in spelt.plan.runs] == [3, 3]
    # a parameter set for the rule that the grid replaces is a conflict, named on one line
    with pytest.raises(ConfigError, match=r"^sweep run 'server.weighting=fedavg': server.params: weighting "
                                          r"'fedavg' has no parameter 'q'[^\n]*$"):
        fedmtl.sweep(base({"server": {"weighting": "qffl", "params": {"q": 3}}}),
                     grid={"server.weighting": ["qffl", "fedavg"]}, out=tmp_path / "conflict")


def test_run_returns_lazily_read_results(tmp_path, registries):
    import fedmtl

    config = write_study(tmp_path / "study")
    result = fedmtl.run(config, ["run.mode=centralized", "run.rounds=1"], out=tmp_path / "run")
    assert result.folder == (tmp_path / "run").resolve()
    assert "_tables" not in vars(result)  # nothing read yet
    assert isinstance(result.config, ExperimentConfig) and result.config.data.dataset == "blobs"
    assert set(result.metrics["task"]) >= {"above", "right"}
    assert result.rounds["round"].tolist() == [1]
    assert set(result.summary["final"]) == {"above", "right"}
    with pytest.raises(FileExistsError, match=r"not empty; choose another \(--out; from Python: out=\)"):
        fedmtl.run(config, ["run.mode=centralized"], out=tmp_path / "run")


def test_import_fedmtl_stays_light():
    code = ("import sys, fedmtl; heavy = [m for m in ('torch', 'flwr', 'ray', 'pandas', 'fedmtl.api') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(fedmtl.run); "
            "assert 'run' in dir(fedmtl)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("call", "message"), [
    (lambda f: f.make_config("smoke", "run.rounds=3"),
     "overrides: expected a list of 'section.key=value' strings, got the string 'run.rounds=3'; "
     "write ['run.rounds=3']"),
    (lambda f: f.make_config("smoke", [3]), "overrides: every entry is a 'section.key=value' string; got 3 (int)"),
    (lambda f: f.sweep("smoke", grid={"client.lr": 0.1}), "grid: 'client.lr' maps to 0.1, not a list of values"),
    (lambda f: f.sweep("smoke", grid=[1]), "grid: expected a dict of 'section.key' to a list of values, got a list"),
])
def test_arguments_of_the_wrong_type_are_one_line_config_errors(call, message):
    import fedmtl
    from fedmtl.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        call(fedmtl)
    assert str(caught.value).startswith(message)


def test_load_runs_of_nothing_says_what_it_expects():
    import fedmtl

    with pytest.raises(FileNotFoundError, match=r"load_runs: expected a run folder or a list of them, got \[\]"):
        fedmtl.load_runs([])


def test_a_config_object_edited_around_its_checks_is_checked_again_before_anything_is_made(tmp_path):
    """``model_copy(update=...)`` checks nothing: make_config returned rounds = -5, and run
    refused it only after making its folder (found by a newcomer pass)."""
    import fedmtl
    from fedmtl.config import ConfigError

    cfg = fedmtl.make_config("smoke")
    bad = cfg.model_copy(update={"run": cfg.run.model_copy(update={"rounds": -5})})
    for call in (lambda: fedmtl.make_config(bad), lambda: fedmtl.run(bad, out=tmp_path / "run")):
        with pytest.raises(ConfigError, match="run.rounds = -5: Input should be greater than or equal to 1"):
            call()
    assert not (tmp_path / "run").exists()
    assert fedmtl.make_config(cfg) == cfg


@pytest.mark.parametrize("call", [lambda f: f.run("smoke", out=5), lambda f: f.sweep("smoke", out=5)])
def test_an_out_that_is_not_a_path_is_named(call):
    import fedmtl

    with pytest.raises(TypeError, match=r"^out: expected a folder path \(str or Path\), got int 5$"):
        call(fedmtl)


@pytest.mark.parametrize(("call", "message"), [
    (lambda f, d: f.run("smoke", out=d, quiet="no"), "quiet: expected True or False, got str 'no'"),
    (lambda f, d: f.run("smoke", out=d, verbose=1), "verbose: expected True or False, got int 1"),
    (lambda f, d: f.resume(d, force="yes"), "force: expected True or False, got str 'yes'"),
    (lambda f, d: f.sweep("smoke", out=d, seeds="3"), "seeds: expected a whole number (int), got str '3'"),
    (lambda f, d: f.sweep("smoke", out=d, jobs=True), "jobs: expected a whole number (int), got bool True"),
    (lambda f, d: f.sweep("smoke", out=d, skip_invalid=None),
     "skip_invalid: expected True or False, got NoneType None"),
])
def test_a_flag_or_count_of_the_wrong_type_is_named_before_anything_runs(tmp_path, call, message):
    """``quiet="no"`` ran quietly, as a truthy value (found by a newcomer pass)."""
    import fedmtl

    with pytest.raises(TypeError) as caught:
        call(fedmtl, tmp_path / "x")
    assert str(caught.value) == message
    assert not (tmp_path / "x").exists()


def test_load_runs_of_a_number_shows_it():
    import fedmtl

    with pytest.raises(FileNotFoundError, match=r"load_runs: expected a run folder or a list of them, got 3$"):
        fedmtl.load_runs(3)


def test_a_quiet_sweep_warns_of_each_invalid_combination_it_skips(tmp_path, capsys):
    """With the default quiet=True the skipped combination left no trace at all (found by a
    newcomer pass). The valid one runs: the centralized baseline, one epoch."""
    import fedmtl

    with pytest.warns(UserWarning, match=r"skipped invalid combination 'client.lr=-1': client.lr = -1"):
        done = fedmtl.sweep("smoke", grid={"client.lr": [0.05, -1]}, out=tmp_path / "sw", skip_invalid=True,
                            overrides=["run.mode=centralized", "run.rounds=1"])
    assert [r.values for r in done.plan.runs] == [{"client.lr": 0.05}]
    assert capsys.readouterr().out == ""


def test_a_run_result_reads_each_file_on_its_own(tmp_path):
    """A run stopped before it wrote rounds.csv: ``.metrics`` raised "No such file ...
    rounds.csv" though metrics.csv was there (found by a newcomer pass)."""
    import fedmtl
    from tests.test_report_compare import fake_run

    run = fake_run(tmp_path / "run", 0, "mean", {c: {"left": 0.5, "right": 0.4} for c in range(3)})
    (run / "rounds.csv").unlink()
    for parquet in run.glob("rounds.parquet"):
        parquet.unlink()
    result = fedmtl.RunResult(run)
    assert len(result.metrics) and result.summary["final"]["left"]["metric"] == "accuracy"
    with pytest.raises(FileNotFoundError, match="rounds.csv"):
        _ = result.rounds
    with pytest.raises(TypeError, match=r"^folder: expected a run folder \(str or Path\), got None$"):
        fedmtl.RunResult(None)
