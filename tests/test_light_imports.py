"""What a Ray actor pays before its first round: importing the ClientApp and building a
federation must not pull in libraries they do not use (each costs seconds per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "torchjd", "cvxpy", "scipy", "matplotlib", "seaborn", "flwr_datasets.visualization")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_client_app_imports_none_of_the_heavy_libraries():
    loaded = _modules_after("import fedmtl.clients.app")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_building_a_federation_skips_flower_datasets_visualization_but_the_package_stays_whole():
    loaded = _modules_after(
        "from fedmtl.validation import load_config\nfrom fedmtl.data import load_federation\n"
        "load_federation(load_config('configs/smoke.toml').data, 0)")
    assert "flwr_datasets.partitioner" in loaded
    assert not loaded & {"matplotlib", "seaborn", "flwr_datasets.visualization"}
    # the rest of flwr-datasets loads on first use
    loaded = _modules_after(
        "from fedmtl.validation import load_config\nfrom fedmtl.data import load_federation\n"
        "load_federation(load_config('configs/smoke.toml').data, 0)\n"
        "from flwr_datasets import FederatedDataset, visualization\nimport flwr_datasets\n"
        "assert flwr_datasets.__version__ and FederatedDataset.__name__ == 'FederatedDataset'")
    assert "flwr_datasets.visualization" in loaded
