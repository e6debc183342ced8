"""Today's code reproduces the run recorded before the redesign (tests/reference/README.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import fedmtl

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["round", "client", "task", "split", "metric"]


@pytest.mark.slow
def test_the_smoke_run_gives_the_rows_recorded_before_the_redesign(tmp_path):
    """Every recorded row is there with its value within 1e-6 (rows added since, the
    participation metrics, are allowed). The heads' fingerprints are sums of every head
    parameter times a ramp, in float32: compared relative to their size (1e-7)."""
    reference = pd.read_csv(ROOT / "tests/reference/smoke-metrics.csv")
    run = fedmtl.run(ROOT / "configs/smoke.toml", overrides=["engine.backend=inprocess"], out=tmp_path / "run")
    now = pd.read_csv(run.folder / "metrics.csv")
    rows = reference.merge(now, on=KEYS, how="left", suffixes=("_then", "_now"))
    missing = rows[rows["value_now"].isna()]
    assert missing.empty, missing[KEYS].to_string()
    assert len(rows) == len(reference)  # no key twice
    fingerprint = rows["metric"].str.startswith("heads-fingerprint")
    assert fingerprint.any() and (~fingerprint).sum() > 40
    exact = rows[~fingerprint]
    differences = (exact["value_then"] - exact["value_now"]).abs()
    assert differences.max() <= 1e-6, exact.assign(difference=differences).nlargest(3, "difference").to_string()
    checksums = rows[fingerprint]
    relative = ((checksums["value_then"] - checksums["value_now"]).abs() / checksums["value_then"].abs().clip(lower=1))
    assert relative.max() <= 1e-7, checksums.to_string()
