"""Each dataset's shipped config runs in the real Ray simulation (one short round)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedmtl.config import load_config
from fedmtl.data import dataset_tasks
from tests.celeba_fixture import make_celeba

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides", [
    ("configs/synthetic.toml", ["data.num-clients=20", "server.fraction-train=0.2"]),
    ("configs/arrests.toml", []),
    ("configs/celeba.toml", ["data.num-clients=3", "data.image-size=32"]),
])
def test_dataset_config_runs_in_simulation(tmp_path, config, overrides):
    out = tmp_path / "run"
    sets = ["run.rounds=1", *overrides]
    if "celeba" in config:  # a tiny CelebA copy in the standard layout
        sets.append(f"data.path={make_celeba(tmp_path / 'celeba')}")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "run", str(ROOT / config), "--out", str(out), "--quiet",
         *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(ROOT / config, sets)
    metrics = pd.read_csv(out / "metrics.csv")
    test = metrics[(metrics.split == "test") & (metrics.metric == "accuracy")]
    assert set(test.task) == {t.name for t in dataset_tasks(cfg.data)}
    assert test.client.nunique() == cfg.data.num_clients
