"""A run ends with results or with an error, never "finished" without them.

A task kind of a plugin that reports a metric it does not declare: the server rejects every
evaluation reply (each names the metric), so the run has no accepted evaluation at all. It
must stop with exit code 1 and one error line saying so, keeping its checkpoints and writing no
``summary.json`` (it used to exit 0 with ``final: {}``). A kind that declares no metrics at
all is refused before anything runs; one reporting a metric of its own that it declares has
results. Runs use the in-process engine: the end-of-run check, not
the engine, is the subject.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
import torch
from fedmtl.config import Section
from fedmtl.data import DATASETS, ClientData, DatasetEntry, Federation, Split
from fedmtl.seeds import rng
from fedmtl.tasks import TASK_KINDS, TaskKind, TaskSpec


class NoParams(Section):
    """No options."""


@TASK_KINDS.register("hinge")
class Hinge(TaskKind):
    """Binary targets scored by the sign of one logit."""

    metrics = {METRICS}

    def output_dim(self, num_classes):
        return 1

    def loss(self, output, target):
        return torch.clamp(1 - (target.float() * 2 - 1) * output.squeeze(-1), min=0).mean()

    def metric_sums(self, output, target):
        return {{REPORTED}: float(((output.squeeze(-1) > 0).long() == target).sum())}


TASKS = (TaskSpec("sign", "hinge", 2),)


def build(cfg, seed):
    def client(cid):
        x = rng(seed, cid, 7).normal(0, 1, (40, 8)).astype("float32")
        def split(a, b):
            return Split(torch.from_numpy(x[a:b]), {"sign": torch.from_numpy((x[a:b, 0] > 0).astype("int64"))})
        return ClientData(cid, train=split(10, 40), test=split(0, 10))
    return Federation((8,), list(TASKS), cfg.num_clients, client)


DATASETS.register("hinge-blobs")(DatasetEntry(input_shape=lambda c: (8,), tasks=lambda c: TASKS, build=build,
                                              description="one hinge task", params=NoParams, moved={}))
'''

CONFIG = '''[run]
plugins = ["hinge.py"]
rounds = 2
[data]
dataset = "hinge-blobs"
num-clients = 2
[model]
backbone = "mlp"
width = 8
[engine]
backend = "inprocess"
'''


def _run(tmp_path: Path, metrics: str, reported: str = '"accuracy"') -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "hinge.py").write_text(PLUGIN.replace("{METRICS}", metrics).replace("{REPORTED}", reported))
    (tmp_path / "exp.toml").write_text(CONFIG)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "run", str(tmp_path / "exp.toml"), "--out", str(out),
                           "-q"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    return proc, out


def test_a_run_whose_evaluations_were_all_rejected_fails_and_keeps_its_checkpoints(tmp_path):
    proc, out = _run(tmp_path, '{"hit-rate": True}')
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert errors and errors[0].startswith("error: no evaluation reply was accepted in any of the run's 2 "
                                           "evaluation round(s) here, so the run has no results; first problem: "
                                           "client "), proc.stderr[-3000:]
    assert errors[0].endswith("no 'hit-rate', which a hinge task reports") and "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints" / "round-2.pt").is_file() and (out / "metrics.csv").is_file()


def test_a_task_kind_reporting_a_metric_of_its_own_has_results(tmp_path):
    """A metric fedmtl has no range for, declared by the kind that reports it, is accepted: the
    server used to reject every reply ("unexpected metric 'test.sign.hit-rate'")."""
    proc, out = _run(tmp_path, '{"hit-rate": True}', '"hit-rate"')
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "rejected" not in proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["sign"]["metric"] == "hit-rate"
    assert 0 <= summary["final"]["sign"]["mean"] <= 1
    # its report loads the run's plugins: the kind says which way hit-rate is better (a traceback,
    # KeyError "unknown metric 'hit-rate'", before); with the plugin gone, one line says what is missing
    report = [sys.executable, "-m", "fedmtl", "report", str(out), "--out"]
    done = subprocess.run([*report, str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hit-rate" in (tmp_path / "report" / "report.md").read_text()
    (tmp_path / "hinge.py").rename(tmp_path / "hinge.moved")
    done = subprocess.run([*report, str(tmp_path / "report-2")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: metric 'hit-rate' is of no registered task kind, so whether higher is better is unknown (a plugin's "
        "task kind: its plugin, the run's run.plugins, must be importable from here)"], done.stderr[-3000:]
    assert not (tmp_path / "report-2").exists()


def test_a_task_kind_without_metrics_is_refused_before_anything_runs(tmp_path):
    proc, out = _run(tmp_path, "{}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0] == ("error: data.dataset = 'hinge-blobs': task 'sign' is of kind 'hinge', whose metrics = {} "
                        "is not a non-empty {name: higher_is_better} dict naming what its metric_sums returns "
                        "(docs/extending.md)")
    assert not out.exists()
