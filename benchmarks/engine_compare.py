"""The local step before and after a change of the aggregation engine, side by side.

Times one client's local step (:func:`fedmtl.training.local.multitask_step` plus the SGD
steps; LeNet backbone, 36 × 36 inputs, batch 32, T ten-class heads, one CPU thread) with
``mean`` and ``fairgrad`` in two checkouts: this one and a baseline commit (by default the
last commit before the engine's redesign into weightings and aggregators). Each repeat runs
both checkouts in fresh processes, in alternating order, so that machine load hits both alike;
the figure is the median over repeats of each process's median step time.

Usage (from the repository root, inside the venv)::

    python benchmarks/engine_compare.py                     # baseline a3d8823, 5 repeats
    python benchmarks/engine_compare.py --baseline <commit> --repeats 7

Writes ``benchmarks/results/engine_compare.md`` and ``.json``. Needs git (the baseline is
checked out in a temporary worktree, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a3d8823"
RULES = ("mean", "fairgrad")
SIZES = (2, 4, 10)

# Runs inside a fresh interpreter whose sys.path starts with the checkout under test; it uses
# only names that both checkouts have (make_weighting, multitask_step, build_model).
PROBE = r"""
import json, sys, time
import numpy as np, torch
from fedmtl.aggregation import make_weighting
from fedmtl.config import ModelSection
from fedmtl.models import build_model
from fedmtl.tasks import TaskSpec
from fedmtl.training.local import multitask_step

torch.set_num_threads(1)
steps, rules, sizes = int(sys.argv[1]), sys.argv[2].split(","), [int(t) for t in sys.argv[3].split(",")]
out = {}
for name in rules:
    for T in sizes:
        torch.manual_seed(0)
        tasks = [TaskSpec(f"t{i}", "multiclass", 10) for i in range(T)]
        model = build_model(ModelSection(), (1, 36, 36), tasks)
        weighting = make_weighting(name)
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
        x = torch.randn(32, 1, 36, 36)
        y = {t.name: torch.randint(0, 10, (32,)) for t in tasks}
        times = []
        for i in range(steps + 3):
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            multitask_step(model, x, y, tasks, weighting)
            sgd.step()
            if i >= 3:
                times.append(time.perf_counter() - start)
        out[f"{name}/{T}"] = float(np.median(times))
print(json.dumps(out))
"""


def probe(tree: Path, steps: int) -> dict[str, float]:
    """Median step seconds per ``rule/T`` measured in a fresh process importing ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-c", PROBE, str(steps), ",".join(RULES), ",".join(map(str, SIZES))]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tree, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], cwd=ROOT, check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
            for repeat in range(args.repeats):
                order = [("baseline", base), ("current", ROOT)]
                for label, tree in order if repeat % 2 == 0 else order[::-1]:
                    runs[label].append(probe(tree, args.steps))
                print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    keys = list(runs["current"][0])
    median = {label: {k: float(np.median([r[k] for r in rs])) for k in keys} for label, rs in runs.items()}
    ratio = {k: median["current"][k] / median["baseline"][k] for k in keys}
    data = {"baseline": args.baseline, "repeats": args.repeats, "steps": args.steps, "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (1 thread used)",
            "ms_per_step": {label: {k: 1000 * v for k, v in m.items()} for label, m in median.items()},
            "ratio": ratio}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_compare.json").write_text(json.dumps(data, indent=2))
    lines = ["| rule | T | baseline ms | current ms | current / baseline |", "|---|---|---|---|---|"]
    for k in keys:
        rule, T = k.split("/")
        lines.append(f"| {rule} | {T} | {1000 * median['baseline'][k]:.2f} | {1000 * median['current'][k]:.2f} "
                     f"| {ratio[k]:.3f} |")
    worst = max(ratio.values())
    page = [
        "# The local step before and after the aggregation engine's redesign", "",
        f"Measured {data['date']} on {data['machine']}, no GPU. Baseline: commit `{args.baseline}`; "
        f"{args.repeats} repeats, each a fresh process per checkout in alternating order, {args.steps} timed steps "
        "(after 3 warm-up steps) per cell; the median over repeats of each process's median.", "",
        "Command: `python benchmarks/engine_compare.py`", "",
        *lines, "",
        f"Largest ratio: **{worst:.3f}** (target: within 5% of the baseline, ≤ 1.05).", "",
    ]
    (out / "engine_compare.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
