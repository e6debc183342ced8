"""Time to first round: ``fedmtl run configs/smoke.toml`` against a vanilla Flower app.

Each measurement is a fresh interpreter (as a user's command is), timed from just before the
process is spawned to the end of round 1 (its aggregation), with the phases in between:

- ``fedmtl``: what ``fedmtl run configs/smoke.toml`` runs (``fedmtl.cli.main``), with clocks
  around Ray's start (:func:`fedmtl.launch.simulation.connect`), the discovery of the clients
  (:func:`fedmtl.server.discovery.discover_clients`: the ClientApp actors start and import
  here) and each round's record (``RunRecorder.log_round``);
- ``flower``: a minimal Flower app on the same Ray Simulation Engine, the same 2 clients, data
  and model: ``flwr.serverapp.strategy.FedAvg`` over the whole model and a ClientApp that
  trains it one epoch (``benchmarks.simulation.vanilla_apps``), via ``run_simulation``;
- ``fedmtl-inprocess`` and ``flower-inprocess``: the same two with the ClientApps in the
  process, on the Simulation Engine's in-process backend (``engine.backend = "inprocess"``);
- ``fedmtl --help`` and ``fedmtl --version`` (median of ``--repeat`` × 2 calls), next to
  ``python -c pass``.

The configurations alternate (fedmtl, flower, fedmtl, ...) ``--repeat`` times; the tables give
medians. The load average of the machine is written with the figures: on a shared machine the
phases stretch.

Usage (from the repository root, inside the venv)::

    python benchmarks/startup.py              # 3 repeats
    python benchmarks/startup.py --repeat 5

Writes ``benchmarks/results/startup.md`` and ``startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"
PHASES = {
    "fedmtl": ["imports", "ray started", "clients discovered", "round 1 done"],
    "fedmtl-inprocess": ["imports", "clients discovered", "round 1 done"],
    "flower": ["imports", "ServerApp started", "round 1 done"],
    "flower-inprocess": ["imports", "ServerApp started", "round 1 done"],
}
"""The measured processes and their phases. ``-inprocess``: the same on the Simulation Engine's
in-process backend (``engine.backend = "inprocess"``, :mod:`fedmtl.launch.inprocess`) instead
of Ray's."""
COLUMNS = {"fedmtl": "fedmtl run (Ray)", "fedmtl-inprocess": "fedmtl run (in-process)",
           "flower": "vanilla Flower (Ray)", "flower-inprocess": "vanilla Flower (in-process backend)"}


# -- the measured processes ------------------------------------------------------------------
def _stamp(stamps: dict[str, float], name: str) -> None:
    stamps.setdefault(name, time.time())


def child_fedmtl(out: Path, stamps: dict[str, float], in_process: bool = False) -> None:
    """``fedmtl run configs/smoke.toml -q`` in this process (``in_process``: with
    ``--set engine.backend=inprocess``), stamping its phases."""
    from fedmtl import cli
    from fedmtl.launch import simulation
    from fedmtl.results import RunRecorder
    from fedmtl.server import app as server_app

    _stamp(stamps, "imports")
    connect, discover, log_round = simulation.connect, server_app.discover_clients, RunRecorder.log_round

    def timed_connect(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a pass-through
        result = connect(*args, **kwargs)
        _stamp(stamps, "ray started")
        return result

    def timed_discover(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = discover(*args, **kwargs)
        _stamp(stamps, "clients discovered")
        return result

    def timed_log_round(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = log_round(self, *args, **kwargs)
        _stamp(stamps, "round 1 done")
        return result

    simulation.connect, server_app.discover_clients = timed_connect, timed_discover
    RunRecorder.log_round = timed_log_round
    sys.argv = ["fedmtl", "run", str(SMOKE), "-q", "--set", f"run.output-dir={out}"]
    if in_process:
        sys.argv += ["--set", "engine.backend=inprocess"]
    try:
        cli.main()
    except SystemExit as exc:
        if exc.code:
            raise


def child_flower(out: Path, stamps: dict[str, float], in_process: bool = False) -> None:
    """The vanilla Flower app of ``benchmarks/simulation.py`` with the smoke run's clients, data
    and model (``in_process``: on the in-process backend), stamping its phases."""
    import contextlib

    from flwr.simulation import run_simulation

    from benchmarks.simulation import vanilla_apps
    from fedmtl.launch.inprocess import use_in_process_backend
    from fedmtl.launch.simulation import backend_config
    from fedmtl.validation import load_config

    _stamp(stamps, "imports")
    # in-process: as many clients at once as fedmtl's in-process runs (engine.backend sizes the backend)
    cfg = load_config(SMOKE, ["engine.backend=inprocess"] if in_process else [])
    server_app, client_app = vanilla_apps(cfg, lambda: _stamp(stamps, "round 1 done"),
                                          lambda: _stamp(stamps, "ServerApp started"))
    with use_in_process_backend() if in_process else contextlib.nullcontext():
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.data.num_clients,
                       backend_config=backend_config(cfg))


def child(kind: str, out: Path, result: Path) -> None:
    """Run one measured process's work; write its phase stamps (wall clock) to ``result``."""
    stamps: dict[str, float] = {}
    try:
        work = child_fedmtl if kind.startswith("fedmtl") else child_flower
        work(out, stamps, in_process=kind.endswith("-inprocess"))
    finally:
        stamps["exit"] = time.time()
        result.write_text(json.dumps(stamps))


# -- the driver --------------------------------------------------------------------------------
def measure_run(kind: str, folder: Path) -> dict[str, float]:
    """One fresh process of ``kind``: seconds from spawn to each phase, and to its exit."""
    result = folder / f"{kind}-{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--child-out", str(folder), "--child-result",
                           str(result)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode or not result.exists():
        raise RuntimeError(f"{kind} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    stamps = json.loads(result.read_text())
    return {name: stamps[name] - started for name in [*PHASES[kind], "exit"] if name in stamps}


def measure_command(args: list[str], repeat: int) -> float | None:
    """Median wall seconds of ``args`` over ``repeat`` calls (``None`` if it fails)."""
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        if subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120).returncode:
            return None
        times.append(time.monotonic() - started)
    return statistics.median(times)


def write(results: dict, commands: dict[str, float], repeat: int, load: tuple[float, ...]) -> None:
    """``benchmarks/results/startup.md`` and ``.json``."""
    out = ROOT / "benchmarks" / "results"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    medians = {kind: {p: statistics.median(r[p] for r in runs) for p in runs[0]} for kind, runs in results.items()}
    (out / "startup.json").write_text(json.dumps(
        {"date": date.today().isoformat(), "machine": machine, "repeat": repeat, "load_average_end": load,
         "runs": results, "medians": medians, "commands": commands}, indent=2))
    lines = [
        "# Time to first round (`benchmarks/startup.py`)", "",
        f"{date.today().isoformat()}, {machine}; load average at the end {load[0]:.1f} "
        "(the machine is shared with other work: phases stretch with the load).", "",
        f"Command: `python benchmarks/startup.py --repeat {repeat}`. Each figure is the median of {repeat} fresh "
        "processes, in seconds from the spawn of the process (configs/smoke.toml: 2 clients, MultiMNIST, LeNet "
        "with two heads).", "",
    ]
    kinds = [k for k in COLUMNS if k in medians]
    lines += ["| phase (s from process start) | " + " | ".join(COLUMNS[k] for k in kinds) + " |",
              "|---|" + "---:|" * len(kinds)]
    rows = ["imports", "ray started", "ServerApp started", "clients discovered", "round 1 done", "exit"]
    for phase in rows:
        cells = [f"{medians[k][phase]:.2f}" if phase in medians[k] else "–" for k in kinds]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    ray_first = medians.get("fedmtl", {}).get("round 1 done")
    target = medians.get("fedmtl-inprocess", {}).get("round 1 done")
    lines += ["", "| command | median wall (s) |", "|---|---:|"]
    lines += [f"| `{name}` | {seconds:.2f} |" if seconds is not None else f"| `{name}` | fails |"
              for name, seconds in commands.items()]
    help_s = commands.get("fedmtl --help")
    lines += ["", "Targets (issue #22 item 1): time to first round ≤ 5 s: "
              + (f"**{'met' if target <= 5 else 'not met'}** ({target:.1f} s) with `engine.backend = "
                 f"\"inprocess\"`" if target else "not measured")
              + (f"; on Ray (the default) {ray_first:.1f} s, not met" if ray_first else "")
              + "; `fedmtl --help` ≤ 1 s: "
              + (f"**{'met' if help_s <= 1 else 'not met'}** ({help_s:.2f} s)." if help_s else "not measured."), ""]
    (out / "startup.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--child", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args.child, args.child_out, args.child_result)
        return
    fedmtl = str(Path(sys.executable).with_name("fedmtl"))
    commands = {
        "python -c pass": measure_command([sys.executable, "-c", "pass"], 2 * args.repeat),
        "fedmtl --help": measure_command([fedmtl, "--help"], 2 * args.repeat),
        "fedmtl --version": measure_command([fedmtl, "--version"], 2 * args.repeat),
    }
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in args.only}
    with tempfile.TemporaryDirectory(prefix="fedmtl-startup-") as tmp:
        for i in range(args.repeat):
            for kind in args.only:
                results[kind].append(measure_run(kind, Path(tmp)))
                phases = {k: round(v, 2) for k, v in results[kind][-1].items()}
                print(f"[{i + 1}/{args.repeat}] {kind}: {json.dumps(phases)}", flush=True)
    write(results, commands, args.repeat, os.getloadavg())


if __name__ == "__main__":
    main()
