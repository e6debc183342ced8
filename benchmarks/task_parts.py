"""Exact per-task update parts: what they cost, and the least the fair variant can cost.

The fair variant of ``benchmarks/simulation.py`` (d) trains with ``client.weighting = fairgrad``
and aggregates with ``server.plan = flat``: every client returns its backbone update split
exactly into one part per task (``Σ_t Δ_t = Δ``, :mod:`fedmtl.training.local`). An exact split
needs, at every local step, one vector-Jacobian product of the backbone per task: T backward
passes through the backbone where a plain step makes one.

Measured on the model and batch of ``benchmarks/simulation.py`` (LeNet over 36 × 36 inputs,
batch 32, T = 2 ten-class heads), on one torch thread as in one virtual client:

(a) **Local steps** as clients run them (:func:`fedmtl.training.local.multitask_step` and the
    SGD steps): ``mean`` without parts (fedmtl's default), ``mean`` with parts, ``fairgrad``
    with parts (the fair variant's client).
(b) **The backbone's backward passes alone**, from the shared representation, four ways: one
    pass (T = 1, for reference); one pass per task (fedmtl's way); one vmapped pass
    (``torch.autograd.grad(..., is_grads_batched=True)``); torchjd's ``autojac.jac``, all rows
    at once and one row at a time.
(c) **The convolution kernels** of LeNet's backward pass at batch B and at batch T·B (what any
    batching of the tasks' passes hands the kernels): whether batching can save compute here.

From (a), (b) and the last ``benchmarks/results/simulation.json`` it derives the fewest seconds
per round the fair variant can take on Ray if it added nothing to fedmtl's round but the one
extra backward pass per local step. The machine's speed moves from hour to hour, so the bound
takes the pass as a share of a plain local step (both timed here, in one run) and the local
steps' time per round as the floor's (simulation.py (a): the same steps, nothing else):
fedmtl's seconds per round + (one pass per task − one pass) / ``mean`` step × the floor's
seconds per round. Inputs and labels are random: only time is measured.

Usage (from the repository root, inside the venv)::

    python benchmarks/task_parts.py            # 500 timed repetitions each, in turn
    python benchmarks/task_parts.py --quick    # 20

Writes ``benchmarks/results/task_parts.md`` and ``.json`` (``task_parts-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
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

from benchmarks.local_step import BATCH, SHAPE, local_step  # noqa: E402
from fedmtl.config import ModelSection  # noqa: E402
from fedmtl.models import build_model  # noqa: E402
from fedmtl.tasks import TaskSpec  # noqa: E402

TASKS = 2
RESULTS = ROOT / "benchmarks" / "results"


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median milliseconds of each of ``fns`` over ``repeats`` rounds in which each runs once, in
    turn (a slow spell of the machine hits them alike), after ``warmup`` such rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def backward_passes(repeats: int) -> dict[str, float]:
    """(b): forward plus the backbone's per-task products, in ms, each way."""
    import torchjd.autojac

    torch.manual_seed(0)
    tasks = [TaskSpec(f"t{i}", "multiclass", 10) for i in range(TASKS)]
    backbone = build_model(ModelSection(), SHAPE, tasks).backbone
    params = list(backbone.parameters())
    x = torch.randn(BATCH, *SHAPE)
    upstream = torch.randn(TASKS, BATCH, backbone.out_dim)

    def one_pass() -> None:
        z = backbone(x)
        torch.autograd.grad((z * upstream[0]).sum(), params)

    def pass_per_task() -> None:
        z = backbone(x)
        for t in range(TASKS):
            torch.autograd.grad((z * upstream[t]).sum(), params, retain_graph=t < TASKS - 1)

    def vmapped() -> None:
        z = backbone(x)
        torch.autograd.grad(z, params, grad_outputs=upstream, is_grads_batched=True)

    def torchjd_jac(chunk: int | None) -> Callable[[], None]:
        def run() -> None:
            z = backbone(x)
            torchjd.autojac.jac(z, params, jac_outputs=upstream, parallel_chunk_size=chunk)
        return run

    return interleaved_ms({
        "forward + one pass (T = 1)": one_pass,
        "forward + one pass per task (fedmtl)": pass_per_task,
        "forward + one vmapped pass": vmapped,
        "forward + torchjd jac, all rows at once": torchjd_jac(None),
        "forward + torchjd jac, one row at a time": torchjd_jac(1),
    }, repeats)


def conv_kernels(repeats: int) -> dict[str, dict[str, float]]:
    """(c): ms of LeNet's convolution backward kernels at batch B and T·B."""
    backward = torch.ops.aten.convolution_backward
    conv1 = (torch.randn(1, *SHAPE[1:]), (10, SHAPE[0], 5, 5))   # input of one example, weight shape
    h = (SHAPE[1] - 4) // 2
    conv2 = (torch.randn(10, h, h), (20, 10, 5, 5))
    out = {}
    for name, (example, weight_shape), mask in (("conv1: weight gradient", conv1, [False, True, True]),
                                                ("conv2: input and weight gradients", conv2, [True, True, True])):
        weight = torch.randn(weight_shape)
        side = example.shape[-1] - 4
        calls = {}
        for label, batch in (("B", BATCH), ("T·B", TASKS * BATCH)):
            inputs = example.expand(batch, *example.shape).contiguous()
            grad = torch.randn(batch, weight_shape[0], side, side)
            calls[label] = lambda g=grad, i=inputs, w=weight, m=mask: backward(
                g, i, w, [w.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, m)
        out[name] = interleaved_ms(calls, repeats)
    return out


def steps_per_actor_per_round() -> tuple[float, dict[str, object]]:
    """Local steps one Ray actor runs per round of simulation.py's workload."""
    import benchmarks.simulation as simulation
    from fedmtl.data import load_federation
    from fedmtl.validation import load_config

    cfg = load_config(None, simulation.BASE)
    fed = load_federation(cfg.data, cfg.run.seed)
    examples = len(fed.client(0).train)
    steps = math.ceil(examples / cfg.client.batch_size) * cfg.client.epochs
    sampled = math.ceil(cfg.server.fraction_train * cfg.data.num_clients)
    actors = cfg.engine.clients_at_once()
    return sampled * steps / actors, {"examples_per_client": examples, "steps_per_client": steps,
                                      "sampled_per_round": sampled, "actors": actors}


def bound(steps_ms: dict[str, float], passes: dict[str, float]) -> dict[str, object]:
    """The fewest seconds per round of the fair variant on Ray, from simulation.json's fedmtl."""
    measured = json.loads((RESULTS / "simulation.json").read_text())
    fedmtl, floor = measured["fedmtl_s_per_round"], measured["floor_s_per_round"]
    per_actor, workload = steps_per_actor_per_round()
    extra_step = steps_ms["fairgrad + task parts"] - steps_ms["mean"]
    extra_pass = passes["forward + one pass per task (fedmtl)"] - passes["forward + one pass (T = 1)"]
    return {
        "simulation_json_date": measured.get("date"), "fedmtl_s_per_round": fedmtl, "floor_s_per_round": floor,
        "fair_s_per_round_measured": measured.get("fedmtl_fair_s_per_round"),
        "steps_per_actor_per_round": per_actor, **workload,
        "extra_ms_per_step": extra_step, "extra_backward_ms": extra_pass,
        "extra_backward_share_of_a_step": extra_pass / steps_ms["mean"],
        "least_fair_s_per_round_backward_only": fedmtl + floor * extra_pass / steps_ms["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 20 if args.quick else 500
    steps_ms = interleaved_ms({
        "mean": local_step("mean", TASKS),
        "mean + task parts": local_step("mean", TASKS, parts=True),
        "fairgrad + task parts": local_step("fairgrad", TASKS, parts=True),
    }, repeats)
    passes = backward_passes(repeats)
    kernels = conv_kernels(repeats)
    limits = bound(steps_ms, passes)
    data = {"local_step_ms": steps_ms, "backward_ms": passes, "conv_backward_ms": kernels, "bound": limits,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (1 thread used), torch {torch.__version__}",
            "date": date.today().isoformat(), "repeats": repeats, "load_average": os.getloadavg()[0]}
    suffix = "-quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"task_parts{suffix}.json").write_text(json.dumps(data, indent=2))
    page = render(data, args.quick)
    (RESULTS / f"task_parts{suffix}.md").write_text(page)
    print(page)


def render(data: dict, quick: bool) -> str:
    """The results page."""
    steps, passes, kernels, b = data["local_step_ms"], data["backward_ms"], data["conv_backward_ms"], data["bound"]
    fedmtl = b["fedmtl_s_per_round"]
    least_pass = b["least_fair_s_per_round_backward_only"]
    lines = [
        f"# Exact per-task update parts{' (quick)' if quick else ''}", "",
        f"Measured {data['date']} on {data['machine']}, no GPU; load average {data['load_average']:.1f}.", "",
        f"Command: `python benchmarks/task_parts.py{' --quick' if quick else ''}` (from the repository root, "
        "in the venv).", "",
        f"Model and batch of `benchmarks/simulation.py`: LeNet over 36 × 36 inputs, batch {BATCH}, T = {TASKS} "
        f"ten-class heads; medians of {data['repeats']} repetitions (in (a), (b) and (c) the ways run in turn).", "",
        "## (a) Local steps, as clients run them", "",
        "| step | ms | × `mean` |", "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {ms / steps['mean']:.2f} |" for name, ms in steps.items()], "",
        "## (b) The backbone's backward passes, from the shared representation", "",
        "| way | ms | × one pass |", "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {ms / passes['forward + one pass (T = 1)']:.2f} |" for name, ms in passes.items()],
        "",
        f"## (c) LeNet's convolution backward kernels at batch B = {BATCH} and T·B = {TASKS * BATCH}", "",
        "| kernel | B: ms | T·B: ms | T·B / B |", "|---|---|---|---|",
        *[f"| {name} | {row['B']:.3f} | {row['T·B']:.3f} | {row['T·B'] / row['B']:.2f} |"
          for name, row in kernels.items()], "",
        "## The least the fair variant can cost", "",
        f"simulation.py's workload: {b['sampled_per_round']} clients a round of {b['examples_per_client']} "
        f"examples ({b['steps_per_client']} steps each) on {b['actors']} actors: "
        f"{b['steps_per_actor_per_round']:.0f} local steps per actor per round.", "",
        f"- fedmtl on Ray (`simulation.json`, {b['simulation_json_date']}): {fedmtl:.3f} s per round; the floor, "
        f"the same local steps and nothing else: {b['floor_s_per_round']:.3f} s.",
        f"- The one extra backward pass ({b['extra_backward_ms']:.2f} ms, (b)) is "
        f"{100 * b['extra_backward_share_of_a_step']:.0f}% of a `mean` step ((a), same run): adding only it to "
        f"every step adds {1000 * (least_pass - fedmtl):.0f} ms to the floor's round, so the fair variant takes at "
        f"least {least_pass:.3f} s per round = **{least_pass / fedmtl:.2f}× fedmtl**.",
    ]
    if b.get("fair_s_per_round_measured"):
        measured = b["fair_s_per_round_measured"]
        lines.append(f"- Measured (`simulation.json`): {measured:.3f} s per round = {measured / fedmtl:.2f}× fedmtl.")
    per_task = passes["forward + one pass per task (fedmtl)"]
    batched = {k: v for k, v in passes.items() if "vmapped" in k or "at once" in k}
    best_name = min(batched, key=batched.get)
    kernel_ratio = min(row["T·B"] / row["B"] for row in kernels.values())
    if least_pass / fedmtl > 1.3:
        verdict = ("Issue #22's target, the fair variant ≤ 1.3× fedmtl: **not reachable** on this workload while "
                   "every step computes its T parts exactly and a backward pass costs what it costs here.")
    else:
        room = 1000 * (1.3 * fedmtl - least_pass)
        verdict = (f"Issue #22's target, the fair variant ≤ 1.3× fedmtl, leaves **{room:.0f} ms a round** for all "
                   "the fair variant adds besides the extra backward pass (FairGrad's local and server solves, "
                   "the parts' bookkeeping, replies twice the size)")
        if b.get("fair_s_per_round_measured"):
            verdict += f"; measured, they add {1000 * (b['fair_s_per_round_measured'] - least_pass):.0f} ms"
        verdict += "."
    lines += [
        "", verdict,
        f"- The fastest batched way in (b), {best_name}, takes {batched[best_name]:.2f} ms against "
        f"{per_task:.2f} ms for one pass per task ({batched[best_name] / per_task:.2f}×).",
        f"- The convolution kernels at T·B take at least {kernel_ratio:.2f}× their time at B (c): batching the "
        "tasks' passes cannot save their compute at this size.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
