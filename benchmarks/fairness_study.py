"""The reference fairness study: two sweeps, their reports, and one results page.

(i)  q-FFL against FedAvg on Synthetic(1, 1) (``configs/studies/qffl_synthetic.toml``):
     FedAvg (example-weighted), q-FFL with q = 0 (the uniform mean of the local models),
     q = 1 and q = 5; a single global model (``model.heads = "global"``), as in the paper.
     q-FFL's Lipschitz estimate is L = 1: the paper's L = 1/lr (= 20 here) made the steps
     about ten times shorter than FedAvg's (23% mean accuracy after 100 rounds, against 54%
     with L = 1).
(ii) FairGrad's α ∈ {0, 1, 2, 5} on MultiMNIST with heterogeneous task sets
     (``configs/studies/fairgrad_multimnist.toml``), locally and across tasks on the server.

Usage (from the repository root, inside the venv)::

    python benchmarks/fairness_study.py                # both parts, 2 seeds each
    python benchmarks/fairness_study.py --seeds 3 --out runs/fairness-study

The sweeps resume: finished runs are skipped. The page ``benchmarks/results/fairness_study.md``
gets both report tables, the measured changes against each part's baseline, the wall time
and the exact command; the figures stay in the run folder's ``report/`` subfolders.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.launch.sweep import plan_sweep, run_sweep  # noqa: E402
from fedmtl.report import make_report  # noqa: E402

PARTS = {
    "qffl-synthetic": {
        "title": "(i) q-FFL vs FedAvg on Synthetic(1, 1)",
        "config": "configs/studies/qffl_synthetic.toml",
        "grid": {
            "server.weighting": ["fedavg", "qffl"],
            "server.params": [{}] + [{"q": q, "lipschitz": 1.0} for q in (0.0, 1.0, 5.0)],
        },
        # FedAvg takes no parameters: keep (fedavg, {}) and (qffl, {q}) only
        "keep": lambda values: (values["server.weighting"] == "fedavg") == (values["server.params"] == {}),
        "reference": "server.weighting=fedavg",
    },
    "fairgrad-multimnist": {
        "title": "(ii) FairGrad α on MultiMNIST with heterogeneous task sets",
        "config": "configs/studies/fairgrad_multimnist.toml",
        "grid": {
            "client.params": [{"alpha": a} for a in (0.0, 1.0, 2.0, 5.0)],
            "server.task-params": [{"alpha": a} for a in (0.0, 1.0, 2.0, 5.0)],
        },
        "keep": lambda values: values["client.params"] == values["server.task-params"],
        "reference": "client.params={alpha = 0.0}",
    },
}


def run_part(name: str, seeds: int, out: Path) -> dict:
    """Run one part's sweep (resuming) and its report; return the report's outputs."""
    part = PARTS[name]
    sweep = plan_sweep(ROOT / part["config"], part["grid"], seeds, out / name, keep=part["keep"])
    run_sweep(sweep)
    return make_report([out / name], out / name / "report", part["reference"])


def changes(report_csv: Path, reference: str) -> list[str]:
    """One line per configuration: the change of each task's mean, worst-10% and std-like
    statistics against the reference configuration (percentage points)."""
    tidy = pd.read_csv(report_csv)
    ref = tidy[tidy["configuration"].str.contains(reference, regex=False)].set_index("statistic")["mean"]
    lines = []
    for label, rows in tidy.groupby("configuration", sort=False):
        if label.find(reference) >= 0:
            continue
        values = rows.set_index("statistic")["mean"]
        parts = []
        for key in values.index:
            if key.endswith(".mean") or key.endswith(".worst10"):
                parts.append(f"{key} {values[key] - ref[key]:+.1f} pp")
            elif key.endswith(".jain"):
                parts.append(f"{key} {values[key] - ref[key]:+.3f}")
        lines.append(f"- `{label}` vs `{reference}`: " + ", ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fairness-study", help="sweep folders")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--page", type=Path, default=ROOT / "benchmarks" / "results" / "fairness_study.md")
    args = parser.parse_args()
    started = time.monotonic()
    sections = []
    for name in args.parts:
        t0 = time.monotonic()
        written = run_part(name, args.seeds, args.out)
        minutes = (time.monotonic() - t0) / 60
        part = PARTS[name]
        report = args.out / name / "report"
        figures = report.relative_to(ROOT) if (args.out / name).is_relative_to(ROOT) else report
        sections += [
            f"## {part['title']}", "",
            f"Config `{part['config']}`, grid `{json.dumps(part['grid'])}` (combinations kept as "
            f"described in `benchmarks/fairness_study.py`), {args.seeds} seeds; {minutes:.1f} min "
            "(resumed runs count as 0).", "",
            written["table"], "",
            "Changes of the seed means against the reference (accuracy in percentage points):", "",
            *changes(written["csv"], part["reference"]), "",
            f"Figures: `{figures}/`"
            " (client CDF, fairness–accuracy plane, round curves, client × task heatmap).", "",
        ]
    total = (time.monotonic() - started) / 60
    seeds_arg = f" --seeds {args.seeds}" if args.seeds != 2 else ""
    header = [
        "# Reference fairness study", "",
        f"Measured {date.today().isoformat()} on {platform.machine()} with {__import__('os').cpu_count()} "
        f"CPU cores, no GPU; {total:.1f} min in all.", "",
        f"Command: `python benchmarks/fairness_study.py{seeds_arg}` (from the repository root, in the venv).", "",
    ]
    args.page.parent.mkdir(parents=True, exist_ok=True)
    marker = "<!-- findings -->"
    findings = ""
    if args.page.is_file() and marker in args.page.read_text():
        findings = args.page.read_text().split(marker, 1)[1]
    args.page.write_text("\n".join(header + sections) + f"\n{marker}{findings}")
    print(f"page: {args.page}  ({total:.1f} min)")


if __name__ == "__main__":
    main()
