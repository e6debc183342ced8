"""How far a small change of the learning rate moves a smoke run's final model, on the CPU.

A run on a GPU rounds otherwise than on the CPU; whether those rounding differences stay small
depends on how strongly training amplifies a small change. This script changes the learning rate
by one part in a million (the size of a rounding difference) and by 1%, for the smoke config's
own settings (learning rate 0.05, momentum 0.5) and for the calm ones ``tests/test_gpu_runs.py``
trains with (0.01, no momentum), and reports the largest ‖changed − base‖ / ‖base‖ over the
tensors of the final global backbone and heads (``benchmarks/gpu_agreement.py``'s measure).

Usage (from the repository root, inside the venv)::

    python benchmarks/training_sensitivity.py

Writes ``benchmarks/results/training_sensitivity.md`` and ``.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_agreement import BASE, ON_CPU, SMOKE, model_differences, write_results  # noqa: E402

SETTINGS = {"smoke's (lr 0.05, momentum 0.5)": (0.05, 0.5), "calm (lr 0.01, no momentum)": (0.01, 0.0)}
METHODS: dict[str, list[str]] = {
    "none": ["personalization.method=none"],
    "fedbabu": ["personalization.method=fedbabu"],
    "fedrep": ["personalization.method=fedrep"],
    "fedrep, 1 head epoch": ["personalization.method=fedrep", "personalization.params.head-epochs=1"],
}
CHANGES = {"1e-6": 1e-6, "1%": 1e-2}


def measure(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """For each setting and method: the largest relative model change of each learning-rate change."""
    import fedmtl

    def run(name: str, lr: float, momentum: float, method: list[str]) -> Path:
        overrides = [*BASE, *ON_CPU, f"client.lr={lr!r}", f"client.momentum={momentum!r}", *method]
        return fedmtl.run(SMOKE, overrides=overrides, out=folder / name).folder

    result: dict[str, dict[str, dict[str, float]]] = {}
    for s, (setting, (lr, momentum)) in enumerate(SETTINGS.items()):
        result[setting] = {}
        for m, (method, extra) in enumerate(METHODS.items()):
            base = run(f"{s}-{m}", lr, momentum, extra)
            result[setting][method] = {
                label: max(model_differences(base, run(f"{s}-{m}-{label}", lr * (1 + c), momentum,
                                                       extra)).values())
                for label, c in CHANGES.items()}
            print(setting, method, result[setting][method], flush=True)
    return result


def write(result: dict, out: Path) -> Path:
    """``training_sensitivity.md`` and ``.json`` in ``out``; returns the page."""
    machine = f"{platform.machine()}, torch {torch.__version__}"
    data = {"date": date.today().isoformat(), "machine": machine, "results": result}
    lines = ["# Training sensitivity (`benchmarks/training_sensitivity.py`)", "",
             f"{date.today().isoformat()}, {machine}, on the CPU. `configs/smoke.toml`, 4 clients, 2 rounds, "
             "in-process engine. Each cell: the largest ‖changed − base‖ / ‖base‖ over the tensors of the final "
             "global backbone and heads when the learning rate is changed by the column's amount.", "",
             "| settings | method | lr × (1 + 1e-6) | lr × 1.01 |", "|---|---|---:|---:|"]
    for setting, methods in result.items():
        for method, d in methods.items():
            lines.append(f"| {setting} | {method} | {d['1e-6']:.1e} | {d['1%']:.1e} |")
    return write_results(out, "training_sensitivity", data, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        write(measure(Path(runs)), args.out)


if __name__ == "__main__":
    main()
