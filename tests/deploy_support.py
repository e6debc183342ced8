"""Helpers of the deployment tests (tests/test_deploy.py, tests/test_deploy_stranger.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"deploy exited ({proc.returncode}) before {what}: {out[-3000:]}{err[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def processes(marker: str) -> dict[int, list[str]]:
    """``{pid: argv}`` of live processes whose command line contains ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if any(marker in a for a in argv):
                found[int(entry.name)] = [a for a in argv if a]
    return found


def last_round(run_dir: Path) -> int:
    rounds = run_dir / "rounds.csv"
    return int(pd.read_csv(rounds)["round"].max()) if rounds.is_file() else 0


def heads_chain(run_dir: Path, client: int) -> pd.DataFrame:
    """``round x (heads-fingerprint-in, heads-fingerprint-out)`` of one client's train replies."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    prints = metrics[(metrics.client == client) & (metrics.split == "train")
                     & metrics.metric.str.startswith("heads-fingerprint")]
    return prints.pivot(index="round", columns="metric", values="value").sort_index()


def free_port_number() -> int:
    from fedmtl.launch.deploy import free_port

    return free_port()


def assert_heads_chain_unbroken(table: pd.DataFrame) -> None:
    """Each round's heads-fingerprint-in equals the previous round's out (a :func:`heads_chain`)."""
    assert (table["heads-fingerprint-in"].iloc[1:].to_numpy()
            == table["heads-fingerprint-out"].iloc[:-1].to_numpy()).all()
