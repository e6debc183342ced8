"""GPUs: seconds per round with clients on a GPU (1, 1/2, 1/4 of it each) and a fair server rule
on CUDA, against the CPU.

The workload is ``benchmarks/simulation.py``'s (MultiMNIST, LeNet with two heads, 100 clients,
20 sampled per round, 1 local epoch of SGD; ``--quick``: 3 rounds and 2 canvases per digit, else
5 rounds). Two engines:

- ``--engine ray`` (needs flwr and ray): real ``fedmtl run``\\ s on the Ray Simulation Engine:

  ========================  ===================================================================
  ``cpu``                   clients on the CPU (``engine.client-num-cpus = 1``)
  ``gpu-1``                 ``client.device = "cuda"``, ``engine.client-num-gpus = 1``
  ``gpu-0.5``               the same with 0.5 of the GPU per client (2 clients share it)
  ``gpu-0.25``              0.25 (4 clients share it)
  ``fair-server-cpu``       flat FairGrad over (client, task) rows on the server, on the CPU
  ``fair-server-cuda``      the same rule with ``server.device = "cuda"``
  ``…-deterministic``       ``gpu-0.25`` and ``fair-server-cuda`` with ``run.deterministic =
                            true`` (deterministic kernels: what reproducibility costs)
  ========================  ===================================================================

- ``--engine none`` (needs only torch and fedmtl's core, for a machine without Flower or Ray):
  ``floor-cpu`` / ``floor-cuda``, the same local steps and averaging in one process
  (``benchmarks/simulation.py``'s floor) on each device, and ``fairgrad-cpu`` /
  ``fairgrad-cuda``, the server's FairGrad (α = 2) over rows the size of the workload's
  (20 clients × 2 tasks, the backbone's parameters), timed per call; ``floor-cuda-deterministic``
  is ``floor-cuda`` under :func:`fedmtl.determinism.use_deterministic` (the settings
  ``run.deterministic = true`` gives a process; ``CUBLAS_WORKSPACE_CONFIG`` is set when the row
  starts, after ``floor-cuda`` has used cuBLAS, so only the kernel choices differ).

The table's last column divides each row by its CPU row; a ``…-deterministic`` row is also
given against the same row without deterministic kernels, below the table.

Configurations that need CUDA are skipped, and said so, where ``torch.cuda.is_available()`` is
false: on a CPU-only machine the script measures its CPU rows (``tests/test_gpu_benchmark.py``
runs that path). Configurations alternate ``--repeat`` times; the table gives medians.

Usage (from the repository root, inside the venv)::

    python benchmarks/gpu.py                      # ray engine if installed, else none
    python benchmarks/gpu.py --engine none --quick
    python benchmarks/gpu.py --dry-run            # check every configuration, run nothing
    python benchmarks/gpu.py --only gpu-0.25 gpu-0.25-deterministic   # some rows

Writes ``benchmarks/results/gpu.md`` and ``gpu.json`` (Ray engine) or ``gpu-none.md`` and
``gpu-none.json`` (``-quick`` added with ``--quick``; ``--out`` elsewhere), after each pass over
the configurations.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.simulation import BASE, FAIR, floor, per_round  # noqa: E402
from fedmtl.config import ExperimentConfig  # noqa: E402
from fedmtl.validation import load_config  # noqa: E402

CPU_CLIENTS = ["client.device=cpu", "engine.client-num-gpus=0"]
RAY_CASES: dict[str, list[str]] = {
    "cpu": CPU_CLIENTS,
    "gpu-1": ["client.device=cuda", "engine.client-num-gpus=1"],
    "gpu-0.5": ["client.device=cuda", "engine.client-num-gpus=0.5"],
    "gpu-0.25": ["client.device=cuda", "engine.client-num-gpus=0.25"],
    "fair-server-cpu": [*CPU_CLIENTS, *FAIR, "server.device=cpu"],
    "fair-server-cuda": [*CPU_CLIENTS, *FAIR, "server.device=cuda"],
}
DETERMINISTIC = "-deterministic"
"""The suffix of a row that is another row with ``run.deterministic = true``."""
RAY_CASES |= {f"{name}{DETERMINISTIC}": [*RAY_CASES[name], "run.deterministic=true"]
              for name in ("gpu-0.25", "fair-server-cuda")}
NONE_CASES = ("floor-cpu", "floor-cuda", f"floor-cuda{DETERMINISTIC}", "fairgrad-cpu", "fairgrad-cuda")


def needs_cuda(name: str) -> bool:
    """Whether configuration ``name`` runs anything on CUDA."""
    return "gpu-" in name or name.removesuffix(DETERMINISTIC).endswith("cuda")


def workload(quick: bool, extra: list[str] | None = None) -> ExperimentConfig:
    """The simulation benchmark's workload, evaluated only after its last round, plus ``extra``."""
    size = ["run.rounds=3", "data.params.pairs-per-digit=2"] if quick else ["run.rounds=5"]
    return load_config(None, [*BASE, *size, "run.evaluate-every=1000", *(extra or [])])


def ray_round(cfg: ExperimentConfig, out: Path) -> float:
    """Seconds per round (after the first) of one real ``fedmtl run``."""
    from benchmarks.simulation import fedmtl_run

    return per_round(fedmtl_run(cfg, out / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"))


def fairgrad_call(cfg: ExperimentConfig, device: str, calls: int = 20) -> float:
    """Median seconds of one server FairGrad (α = 2) call on rows the size of the workload's."""
    from fedmtl.aggregation import Objectives, make_rule
    from fedmtl.data import dataset_input_shape, dataset_tasks
    from fedmtl.models import build_model

    model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    params = sum(p.numel() for p in model.backbone.parameters())
    rows = round(cfg.server.fraction_train * cfg.data.num_clients) * len(dataset_tasks(cfg.data))
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(rows, params, generator=generator).to(device)
    losses = torch.rand(rows, generator=generator) + 0.5
    rule = make_rule("fairgrad", alpha=2.0)
    times = []
    for _ in range(calls):
        started = time.monotonic()
        rule.combine(Objectives(updates=updates, losses=losses))
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.monotonic() - started)
    return statistics.median(times[1:])


def none_case(name: str, cfg: ExperimentConfig) -> float:
    """Seconds (per round, or per call for the rule) of an engine-free configuration."""
    from fedmtl.determinism import preserved_determinism, use_deterministic

    device = "cuda" if name.removesuffix(DETERMINISTIC).endswith("cuda") else "cpu"
    with preserved_determinism():
        use_deterministic(name.endswith(DETERMINISTIC))
        if name.startswith("floor"):
            return per_round(floor(cfg, device))
        return fairgrad_call(cfg, device)


def plan(engine: str, quick: bool, only: list[str] | None = None) -> dict[str, ExperimentConfig]:
    """Every configuration of ``engine`` (those named in ``only``, when given), validated (a
    bad one fails here, before any run); an unknown name in ``only`` is a ``ValueError``."""
    names = list(RAY_CASES if engine == "ray" else NONE_CASES)
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"no configuration {', '.join(map(repr, unknown))} for --engine {engine}; "
                         f"its configurations: {', '.join(names)}")
    names = [name for name in names if only is None or name in only]
    if engine == "ray":
        return {name: workload(quick, [f"run.name=gpu-{name}", *RAY_CASES[name]]) for name in names}
    return {name: workload(quick, ["run.name=gpu-none"]) for name in names}


def deterministic_lines(seconds: dict[str, float]) -> list[str]:
    """What deterministic kernels cost: each measured ``…-deterministic`` row against the same
    row without them."""
    pairs = [(name, name.removesuffix(DETERMINISTIC)) for name in seconds if name.endswith(DETERMINISTIC)]
    lines = [f"- `{name}` / `{base}` = {seconds[name]:.4f} / {seconds[base]:.4f} = {seconds[name] / seconds[base]:.2f}"
             for name, base in pairs if base in seconds]
    return ["", "Deterministic kernels (`run.deterministic = true`) against the same row without them:", "",
            *lines] if lines else []


def measure(configs: dict[str, ExperimentConfig], engine: str, repeat: int, out: Path,
            after_each: Callable[[dict], object] | None = None) -> dict:
    """Median seconds of each runnable configuration, interleaved; the skipped ones and why.

    ``after_each`` receives the result so far after each pass over the configurations (the
    script writes its page then, so a run stopped by a time limit keeps its finished passes)."""
    cuda = torch.cuda.is_available()
    seconds: dict[str, list[float]] = {name: [] for name in configs if cuda or not needs_cuda(name)}
    skipped = {name: "no CUDA device (torch.cuda.is_available() is false)" for name in configs if name not in seconds}
    for attempt in range(repeat):
        for name in seconds:
            cfg = configs[name]
            value = ray_round(cfg, out) if engine == "ray" else none_case(name, cfg)
            seconds[name].append(value)
            print(f"[{attempt + 1}/{repeat}] {name}: {value:.4f} s", flush=True)
        if after_each is not None:
            after_each(_result(seconds, skipped))
    return _result(seconds, skipped)


def _result(seconds: dict[str, list[float]], skipped: dict[str, str]) -> dict:
    """Medians of the repeats measured so far, the repeats themselves and the skipped rows."""
    measured = {name: values for name, values in seconds.items() if values}
    return {"seconds": {n: statistics.median(v) for n, v in measured.items()}, "repeats": measured,
            "skipped": skipped}


def stem(engine: str, quick: bool) -> str:
    """The results' file name without suffix: ``gpu`` (Ray engine), ``gpu-none``, ``…-quick``."""
    return "gpu" + ("-none" if engine == "none" else "") + ("-quick" if quick else "")


def write(result: dict, engine: str, quick: bool, repeat: int, folder: Path, only: list[str] | None = None) -> Path:
    """``<stem>.md`` and ``<stem>.json`` in ``folder`` (:func:`stem`); returns the page.

    ``repeat`` is the number of passes asked for; each row says how many it has (a pass cut
    short by a time limit leaves some rows with one repeat fewer); ``only`` the rows asked for
    (``--only``), named in the page's command."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, GPU: {gpu}, torch {torch.__version__}"
    folder.mkdir(parents=True, exist_ok=True)
    name = stem(engine, quick)
    (folder / f"{name}.json").write_text(json.dumps(
        {"date": date.today().isoformat(), "machine": machine, "engine": engine, "quick": quick, "repeat": repeat,
         **result}, indent=2))
    unit = "s / round" if engine == "ray" else "s / round (floor) or s / call (fairgrad)"
    base = {"ray": {"cpu": "cpu", "gpu": "cpu", "fair": "fair-server-cpu"},
            "none": {"floor": "floor-cpu", "fairgrad": "fairgrad-cpu"}}
    lines = [
        "# GPUs (`benchmarks/gpu.py`)", "",
        f"{date.today().isoformat()}, {machine}.", "",
        f"Command: `python benchmarks/gpu.py --engine {engine}{' --quick' if quick else ''} --repeat {repeat}"
        f"{' --only ' + ' '.join(only) if only else ''}`; "
        "the workload of `benchmarks/simulation.py`, medians of the repeats (see the script's docstring).", "",
        f"| configuration | {unit} | repeats | × its CPU row |", "|---|---:|---:|---:|",
    ]
    seconds = result["seconds"]
    for row in [*seconds, *result["skipped"]]:
        if row not in seconds:
            lines.append(f"| {row} | not run: {result['skipped'][row]} | 0 | – |")
            continue
        family = next((b for prefix, b in base[engine].items() if row.startswith(prefix)), None)
        ratio = f"{seconds[row] / seconds[family]:.2f}" if family in seconds else "–"
        lines.append(f"| {row} | {seconds[row]:.4f} | {len(result['repeats'][row])} | {ratio} |")
    lines += deterministic_lines(seconds)
    page = folder / f"{name}.md"
    page.write_text("\n".join([*lines, ""]))
    print("\n".join(lines))
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    have_ray = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("flwr") is not None
    parser.add_argument("--engine", choices=["ray", "none"], default="ray" if have_ray else "none")
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer canvases per digit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="validate every configuration and stop")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="measure only these configurations")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-gpu", help="run folders (ray engine)")
    args = parser.parse_args()
    try:
        configs = plan(args.engine, args.quick, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.dry_run:
        for name, cfg in configs.items():
            print(f"{name}: client.device={cfg.client.device} engine.client-num-gpus={cfg.engine.client_num_gpus} "
                  f"server.device={cfg.server.device} server.weighting={cfg.server.weighting} "
                  f"run.deterministic={cfg.run.deterministic}")
        return

    def page(result: dict) -> Path:
        return write(result, args.engine, args.quick, args.repeat, args.out, args.only)

    measure(configs, args.engine, args.repeat, args.runs, after_each=page)


if __name__ == "__main__":
    main()
