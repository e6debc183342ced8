"""Which metric a run's figures draw, and what the final-distribution figure says.

Found by an audit: a plugin task kind's first metric (the one ``summary.json`` and
``rounds.csv`` use) was not the one the figures drew (``fedmtl.plots`` preferred accuracy, MSE,
MAE, then the loss), so ``plots/fairness_rounds.png`` was never drawn and a resume of the
finished run said it had been stopped before writing it; the final distribution's title
counted the clients of the first task only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import fedmtl.plots as plots
from tests.plugin_support import restored_registries

registries = pytest.fixture(restored_registries, name="registries")

HINGE = '''
import torch
from fedmtl.config import Section
from fedmtl.data import DATASETS, ClientData, DatasetEntry, Federation, Split
from fedmtl.seeds import rng
from fedmtl.tasks import TASK_KINDS, TaskKind, TaskSpec


class NoOptions(Section):
    """No options."""


@TASK_KINDS.register("hinge")
class Hinge(TaskKind):
    """Binary targets scored by the sign of one output: its own hit-rate first, then the loss."""

    metrics = {"hit-rate": True, "loss": False}

    def output_dim(self, num_classes):
        return 1

    def loss(self, output, target):
        return torch.clamp(1 - (target.float() * 2 - 1) * output.squeeze(-1), min=0).mean()

    def metric_sums(self, output, target):
        margin = torch.clamp(1 - (target.float() * 2 - 1) * output.squeeze(-1), min=0)
        return {"hit-rate": float(((output.squeeze(-1) > 0).long() == target).sum()), "loss": float(margin.sum())}


TASKS = (TaskSpec("sign", "hinge", 2),)


def build(cfg, seed):
    def client(cid):
        x = rng(seed, cid, 7).normal(0.2 * cid, 1, (40 + 8 * cid, 8)).astype("float32")

        def split(a, b):
            return Split(torch.from_numpy(x[a:b]), {"sign": torch.from_numpy((x[a:b, 0] > 0).astype("int64"))})

        return ClientData(cid, train=split(10, len(x)), test=split(0, 10))

    return Federation((8,), list(TASKS), cfg.num_clients, client)


DATASETS.register("hinge-blobs")(DatasetEntry(input_shape=lambda c: (8,), tasks=lambda c: TASKS, build=build,
                                              description="one hinge task", params=NoOptions, moved={}))
'''


def test_a_plugin_kind_s_first_metric_is_what_the_figures_draw(tmp_path, registries):
    import fedmtl
    from fedmtl.results import unfinished_outputs

    (tmp_path / "hinge.py").write_text(HINGE)
    sets = [f"run.plugins={tmp_path / 'hinge.py'}", "data.dataset=hinge-blobs", "data.num-clients=4",
            "model.backbone=mlp", "model.width=8", "engine.backend=inprocess", "run.rounds=2"]
    run = fedmtl.run(None, overrides=sets, out=tmp_path / "run")
    metrics = pd.read_csv(run.folder / "metrics.csv")
    test = metrics[(metrics["split"] == "test") & (metrics["task"] != "all")]
    rounds = pd.read_csv(run.folder / "rounds.csv")
    assert plots.primary_metric(test, "sign", rounds) == "hit-rate"
    assert plots.primary_metric(test, "sign") == "loss"  # without rounds.csv: the names it knows first
    assert sorted(p.stem for p in (run.folder / "plots").iterdir()) == sorted(plots.EVERY_RUN_FIGURES)
    assert unfinished_outputs(run.folder, fedmtl.make_config(run.folder / "config.toml")) == []


def test_the_final_distribution_counts_every_evaluated_client(monkeypatch, tmp_path):
    rows = [(3, c, "left", "test", "accuracy", 0.1 + c / 100) for c in (1, 2, 4, 5)]  # 'left': 4 of the 5
    rows += [(3, c, "right", "test", "accuracy", 0.2 + c / 100) for c in (0, 1, 2, 4, 5)]
    test = pd.DataFrame(rows, columns=["round", "client", "task", "split", "metric", "value"])
    seen = {}

    def keep(fig, path: Path, dpi: int = plots.DEFAULT_DPI) -> Path:
        seen["title"], seen["ylabel"] = fig.axes[0].get_title(), fig.axes[0].get_ylabel()
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    plots._final(test, {"left": "accuracy", "right": "accuracy"}, tmp_path / "f.png")
    assert seen == {"title": "Client distribution at round 3 (5 clients)", "ylabel": "client test accuracy (%)"}
    plots._final(test.assign(metric="mse"), {"left": "mse", "right": "mse"}, tmp_path / "f.png")
    assert seen["ylabel"] == "client test mse"  # not "accuracy in %" for a regression run
