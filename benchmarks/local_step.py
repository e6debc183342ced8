"""Local cross-task cost: time per local step of each cross-task weighting against ``mean``.

One client's local step (:func:`fedmtl.training.local.multitask_step` and the SGD steps)
on a LeNet backbone over 36 × 36 inputs (MultiMNIST's shape), batch 32, with T ∈ {2, 4, 10,
40} ten-class heads, on one CPU thread (a virtual client's default). The Gramian-based rules
see the tasks' gradients at the shared representation (MGDA-UB's rows, one backbone pass;
``client.gradients = "auto"``), so their extra cost is T small head passes and the weighting's
solve. Two more rows show the paths that need per-task *backbone* gradients (T backbone
passes): ``mean`` with per-task update parts (the server plans ``flat`` and two-level plans
ask for them) and DB-MTL's parameter rows. Inputs and labels are random: only time is measured.

Usage (from the repository root, inside the venv)::

    python benchmarks/local_step.py            # T in {2, 4, 10, 40}, 40 timed steps each
    python benchmarks/local_step.py --quick    # T in {2, 10}, 10 steps

Writes ``benchmarks/results/local_step.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.aggregation import make_weighting  # noqa: E402
from fedmtl.config import ModelSection  # noqa: E402
from fedmtl.models import build_model  # noqa: E402
from fedmtl.tasks import TaskSpec  # noqa: E402
from fedmtl.training.local import TaskPartsSGD, multitask_step  # noqa: E402

GRAMIAN = ["mgda", "upgrad", "dualproj", "pcgrad", "cagrad", "imtl-g", "aligned-mtl", "fairgrad", "nash-mtl"]
BATCH, SHAPE = 32, (1, 36, 36)


def local_step(weighting_name: str, num_tasks: int, *, parts: bool = False,
               gradients: str = "auto") -> Callable[[], None]:
    """One client's local step (gradients, weighting, SGD) on a fresh model, as a function
    that takes one step each call (on the same random batch)."""
    torch.manual_seed(0)
    tasks = [TaskSpec(f"t{i}", "multiclass", 10) for i in range(num_tasks)]
    model = build_model(ModelSection(), SHAPE, tasks)
    weighting = make_weighting(weighting_name)
    backbone = list(model.backbone.parameters())
    heads = [p for head in model.heads.values() for p in head.parameters()]
    head_sgd = torch.optim.SGD(heads, lr=0.01, momentum=0.5)
    parts_sgd = TaskPartsSGD(backbone, num_tasks, 0.01, 0.5) if parts else None
    backbone_sgd = None if parts else torch.optim.SGD(backbone, lr=0.01, momentum=0.5)
    x = torch.randn(BATCH, *SHAPE)
    targets = {t.name: torch.randint(0, 10, (BATCH,)) for t in tasks}

    def step() -> None:
        model.zero_grad(set_to_none=True)
        result = multitask_step(model, x, targets, tasks, weighting, gradients=gradients, track_parts=parts)
        head_sgd.step()
        if parts_sgd is not None:
            parts_sgd.step(result.contributions)
        else:
            backbone_sgd.step()

    return step


def time_steps(weighting_name: str, num_tasks: int, steps: int, *, parts: bool = False,
               gradients: str = "auto") -> float:
    """Median seconds of one local step (gradients, weighting, SGD) over ``steps`` steps."""
    step = local_step(weighting_name, num_tasks, parts=parts, gradients=gradients)
    times = []
    for i in range(steps + 3):  # three warm-up steps
        start = time.perf_counter()
        step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [2, 10] if args.quick else [2, 4, 10, 40]
    steps = 10 if args.quick else 40
    rows = {"mean": {}, **{name: {} for name in GRAMIAN}, "mean + task parts": {}, "db-mtl (parameter rows)": {}}
    for T in sizes:
        print(f"T = {T}", flush=True)
        rows["mean"][T] = time_steps("mean", T, steps)
        for name in GRAMIAN:
            rows[name][T] = time_steps(name, T, steps)
        rows["mean + task parts"][T] = time_steps("mean", T, steps, parts=True)
        rows["db-mtl (parameter rows)"][T] = time_steps("db-mtl", T, steps, gradients="backbone")
    suffix = "-quick" if args.quick else ""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    data = {"ms_per_step": {k: {str(t): 1000 * v for t, v in r.items()} for k, r in rows.items()},
            "ratio_to_mean": {k: {str(t): v / rows["mean"][t] for t, v in r.items()} for k, r in rows.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (1 thread used), torch {torch.__version__}",
            "date": date.today().isoformat(), "steps": steps}
    (out / f"local_step{suffix}.json").write_text(json.dumps(data, indent=2))
    header = "| weighting | " + " | ".join(f"T = {T}: ms (× mean)" for T in sizes) + " |"
    lines = [header, "|---|" + "---|" * len(sizes)]
    for name, r in rows.items():
        cells = [f"{1000 * r[T]:.2f} ({r[T] / rows['mean'][T]:.2f})" for T in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst10 = max(rows[name][10] / rows["mean"][10] for name in GRAMIAN) if 10 in sizes else float("nan")
    page = [
        f"# Local cross-task cost{' (quick)' if args.quick else ''}", "",
        f"Measured {data['date']} on {data['machine']}, no GPU.", "",
        f"Command: `python benchmarks/local_step.py{' --quick' if args.quick else ''}` "
        "(from the repository root, in the venv).", "",
        "Median time of one local step (LeNet backbone, 36 × 36 inputs, batch 32, T ten-class heads; "
        f"median of {steps} steps after 3 warm-up steps) and its ratio to `mean`. Gramian-based rules use "
        "representation gradients (one backbone pass); the last two rows need T backbone passes.", "",
        *lines, "",
        f"Largest ratio of a Gramian-based weighting to `mean` at T = 10: **{worst10:.2f}** (target ≤ 1.5).", "",
    ]
    (out / f"local_step{suffix}.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
