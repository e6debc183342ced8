"""Soak benchmark: 200 rounds with 20% client dropout and 5% corrupted updates, next to the
same run without faults (``configs/studies/soak.toml``), each with and without norm screening.

Usage (from the repository root, inside the venv)::

    python benchmarks/soak.py                      # 200 rounds, all four runs
    python benchmarks/soak.py --rounds 40          # shorter

It writes ``benchmarks/results/soak.md``: for each run, the final per-task mean and worst-10%
accuracy, the totals of failed, rejected, retried and skipped work from ``rounds.csv``, and the
wall time. The runs are a resumable sweep (``runs/soak/``): run the command again after an
interruption and finished runs are skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.launch.sweep import plan_sweep, run_sweep  # noqa: E402
from fedmtl.results import read_summary  # noqa: E402

CONFIG = ROOT / "configs/studies/soak.toml"
FAULTS = {"faults.dropout": 0.2, "faults.corrupt": 0.05}
SCREENING = [5.0, 0.0]
"""``server.norm-screening`` of the runs: on (the config's), and off to show what it costs
honest clients and what it stops."""


def summarize(run_dir: Path) -> dict:
    """Final accuracies and the fault totals of one run folder."""
    summary = read_summary(run_dir)
    rounds = pd.read_csv(run_dir / "rounds.csv")
    row = {"duration_min": summary["duration_s"] / 60}
    for task, values in summary["final"].items():
        row[f"{task} mean"] = 100 * values["mean"]
        row[f"{task} worst-10%"] = 100 * values["worst10"]
    for key in ("sampled", "failures", "rejected", "retries", "skipped", "aggregated"):
        row[key] = int(rounds[key].sum()) if key in rounds else 0
    metrics = pd.read_csv(run_dir / "metrics.csv", usecols=["round", "client", "metric"])
    late = metrics[(metrics["metric"] == "aggregation-weight") & (metrics["round"] > summary["rounds"] // 2)]
    row["left out"] = summary["num_clients"] - late["client"].nunique()
    return row


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table, floats with one decimal."""
    cells = [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "soak")
    parser.add_argument("--page", type=Path, default=ROOT / "benchmarks" / "results" / "soak.md")
    args = parser.parse_args()
    grid = {**{key: [0.0, value] for key, value in FAULTS.items()}, "server.norm-screening": SCREENING}
    sweep = plan_sweep(
        CONFIG, grid, args.seeds, args.out, overrides=[f"run.rounds={args.rounds}"],
        keep=lambda values: (values["faults.dropout"] == 0) == (values["faults.corrupt"] == 0),
    )
    started = time.monotonic()
    run_sweep(sweep)
    rows = []
    for run in sweep.runs:
        label = "faulty" if run.values["faults.dropout"] else "clean"
        screen = run.values["server.norm-screening"]
        label += f", screening {screen:g}" if screen else ", no screening"
        rows.append({"run": label, "seed": run.seed, **summarize(sweep.out / run.folder)})
    table = pd.DataFrame(rows)
    means = table.drop(columns="seed").groupby("run", sort=False).mean()
    delta = means.loc["faulty, screening 5"] - means.loc["clean, screening 5"]
    accuracy = [c for c in means.columns if c.endswith(("mean", "worst-10%"))]
    lines = [
        "# Soak benchmark: faulty clients over a long run", "",
        f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"no GPU; {(time.monotonic() - started) / 60:.1f} min in all (finished runs that were resumed count as 0).", "",
        f"Command: `python benchmarks/soak.py{'' if args.rounds == 200 else f' --rounds {args.rounds}'}"
        f"{'' if args.seeds == 1 else f' --seeds {args.seeds}'}` (from the repository root, in the venv).", "",
        f"Config `configs/studies/soak.toml`, {args.rounds} rounds, {args.seeds} seed(s). The faulty run sets "
        + ", ".join(f"`{k} = {v}`" for k, v in FAULTS.items())
        + " (NaN, Inf, ×1e6 and misshapen updates, drawn uniformly); the server has "
        "`min-replies = 5` and `on-too-few = \"retry\"`; `norm-screening` is 5 or off.", "",
        "Final personalized test accuracy (%) over clients, and totals over all rounds from "
        "`rounds.csv`. `left out`: clients none of whose updates was aggregated in the second half "
        "of the run (each is sampled about 50 times there).", "",
        markdown(table), "",
        "Faulty minus clean, both with screening (accuracy in percentage points): "
        + ", ".join(f"{c} {delta[c]:+.1f}" for c in accuracy) + ".", "",
    ]
    marker = "<!-- findings -->"
    findings = ""
    if args.page.is_file() and marker in args.page.read_text():
        findings = args.page.read_text().split(marker, 1)[1]
    args.page.parent.mkdir(parents=True, exist_ok=True)
    args.page.write_text("\n".join(lines) + f"\n{marker}{findings}")
    print(f"page: {args.page}")


if __name__ == "__main__":
    main()
