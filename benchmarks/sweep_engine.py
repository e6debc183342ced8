"""Sweeps pay start-up once: the per-run cost of a sweep of smoke-sized runs with and without
the shared engine (``fedmtl.launch.simulation.shared_engine``), side by side in one run.

The same sweep (``configs/smoke.toml``, ``--rounds`` rounds, seeds 0 .. ``--runs`` - 1) runs
three times, each time in a fresh interpreter, planned by ``plan_sweep``:

- ``separate``: every run through ``execute_run`` on its own, as sweeps ran before the shared
  engine (each run starts Ray; Flower's backend shuts it down at the end of the run);
- ``shared``: ``run_sweep`` itself (all runs share one Ray instance);
- ``inprocess``: ``run_sweep`` with ``engine.backend = "inprocess"`` (no Ray; ``--ray-runs``
  sets the runs of the two Ray sweeps).

For each run: its wall time (the ``execute_run`` call, as the sweep's ``duration_s``), the
ServerApp's own clock (``summary.json``'s ``duration_s``: from the ServerApp's start to its
last round) and its steady seconds per round (``(t_R - t_1) / (R - 1)`` from ``rounds.csv``).
Two overheads per run, beyond the runs' own rounds:

- *outside the ServerApp*: wall - ServerApp clock (Ray's start-up and shutdown, Flower's set-up
  and the run's figures, drawn after ``summary.json`` is written); also shown less the
  figures' time (from ``summary.json``'s modification time to the newest figure's). The
  figures are drawn in a thread while the engine stops (:mod:`fedmtl.background`), so the
  two overlap: "less the figures" is what the engine's stop and set-up add beyond them;
- *beyond steady rounds*: wall - R x steady seconds per round (also the first round's actor
  start-up, imports and data building in the actors).

The sweep's wall time also counts the interpreter's imports; the three sweeps' metrics must be
identical run by run (same seeds). Also recorded: the Ray processes (raylets, actors) left
after each sweep.

Usage (from the repository root, inside the venv)::

    python benchmarks/sweep_engine.py                 # 16 runs of 2 rounds each way
    python benchmarks/sweep_engine.py --runs 4        # quicker

Writes ``benchmarks/results/sweep_engine.md`` (run folders go to a temporary folder).
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
RESULT = ROOT / "benchmarks" / "results" / "sweep_engine.md"
MODES = ("separate", "shared", "inprocess")


def _ray_processes() -> list[str]:
    """Command names of this process's descendants that are Ray's (raylet, GCS, workers)."""
    from fedmtl.launch.interrupt import descendants

    names = []
    for pid in descendants():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmd:
            names.append(cmd.split()[0].rsplit("/", 1)[-1] if cmd.split() else cmd)
    return names


def worker(mode: str, runs: int, rounds: int, out: Path) -> dict:
    """One sweep in this interpreter; its timings (run by run) and what Ray left behind."""
    from fedmtl.launch.sweep import execute_run, plan_sweep, run_sweep

    t0 = time.monotonic()
    overrides = [f"run.rounds={rounds}"] + (["engine.backend=inprocess"] if mode == "inprocess" else [])
    sweep = plan_sweep(ROOT / "configs/smoke.toml", {}, runs, out, overrides, report=lambda _: None)
    walls: list[float] = []
    if mode in ("shared", "inprocess"):
        run_sweep(sweep, report=lambda _: None)
        walls = [r.duration_s for r in sweep.runs]
    else:
        for run in sweep.runs:
            start = time.monotonic()
            execute_run(sweep.config_of(run), out / run.folder, True)
            walls.append(time.monotonic() - start)
    total = time.monotonic() - t0
    time.sleep(2.0)  # let killed processes go
    ray_left = _ray_processes()
    rows = []
    for run, wall in zip(sweep.runs, walls, strict=True):
        folder = out / run.folder
        summary = json.loads((folder / "summary.json").read_text())
        elapsed = [float(line.split(",")[1]) for line in (folder / "rounds.csv").read_text().splitlines()[1:]]
        steady = (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1) if len(elapsed) > 1 else elapsed[0]
        figures = max((f.stat().st_mtime for f in (folder / "plots").rglob("*") if f.is_file()), default=None)
        rows.append({"seed": run.seed, "wall_s": wall, "server_s": summary["duration_s"], "steady_round_s": steady,
                     "rounds": len(elapsed), "metrics": (folder / "metrics.csv").read_text(),
                     "figures_s": figures - (folder / "summary.json").stat().st_mtime if figures else 0.0})
    return {"mode": mode, "sweep_s": total, "runs": rows, "ray_left": ray_left}


def _run_worker(mode: str, runs: int, rounds: int, out: Path) -> dict:
    result = out / f"{mode}.json"
    started = time.monotonic()
    subprocess.run([sys.executable, __file__, "--worker", mode, "--runs", str(runs), "--rounds", str(rounds),
                    "--out", str(out / mode), "--result", str(result)], check=True, cwd=ROOT)
    data = json.loads(result.read_text())
    data["process_s"] = time.monotonic() - started
    data["load"] = os.getloadavg()[0]
    return data


def _summary(data: dict) -> dict:
    runs = data["runs"]
    outside = [r["wall_s"] - r["server_s"] for r in runs]
    engine = [o - r["figures_s"] for o, r in zip(outside, runs, strict=True)]
    beyond = [r["wall_s"] - r["rounds"] * r["steady_round_s"] for r in runs]
    return {
        "process": data["process_s"] / len(runs),
        "wall": statistics.mean(r["wall_s"] for r in runs),
        "wall_later": statistics.mean(r["wall_s"] for r in runs[1:]) if len(runs) > 1 else runs[0]["wall_s"],
        "server": statistics.mean(r["server_s"] for r in runs),
        "steady": statistics.median(r["steady_round_s"] for r in runs),
        "outside": statistics.mean(outside),
        "outside_later": statistics.mean(outside[1:]) if len(outside) > 1 else outside[0],
        "figures": statistics.mean(r["figures_s"] for r in runs),
        "engine": statistics.mean(engine),
        "engine_later": statistics.mean(engine[1:]) if len(engine) > 1 else engine[0],
        "beyond": statistics.mean(beyond),
        "beyond_later": statistics.mean(beyond[1:]) if len(beyond) > 1 else beyond[0],
    }


def write_report(results: dict[str, dict], runs: int, rounds: int) -> str:
    s = {m: _summary(results[m]) for m in MODES}
    # the runs all three sweeps ran (the Ray sweeps may run fewer: --ray-runs)
    same = all(a["metrics"] == b["metrics"] == c["metrics"] for a, b, c in zip(
        results["separate"]["runs"], results["shared"]["runs"], results["inprocess"]["runs"], strict=False))
    counts = {m: len(results[m]["runs"]) for m in MODES}
    lines = [
        "# Sweeps pay start-up once (`benchmarks/sweep_engine.py`)",
        "",
        f"{date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPUs (shared with other jobs: "
        "load average at the end of each sweep below), Python {}.".format(platform.python_version()),
        f"A sweep of `configs/smoke.toml` ({rounds} rounds, 2 clients, seeds 0, 1, ...; runs: "
        + ", ".join(f"{m} {n}" for m, n in counts.items()) + "), "
        "each way in a fresh interpreter: `separate` = each run starts and stops Ray (sweeps before the shared "
        "engine), `shared` = `run_sweep` (one Ray instance for the sweep), `inprocess` = `run_sweep` with "
        "`engine.backend = \"inprocess\"` (no Ray: the ClientApps run in the sweep's process).",
        "",
        "Seconds per run (means over the runs; `later` = without the sweep's first run):",
        "",
        "| | separate | shared | inprocess |",
        "|---|---:|---:|---:|",
    ]
    rows = [
        ("sweep process / runs (imports included)", "process"),
        ("wall per run", "wall"),
        ("wall per run, later runs", "wall_later"),
        ("ServerApp clock per run", "server"),
        ("steady seconds per round (median)", "steady"),
        ("**outside the ServerApp** (wall - ServerApp clock)", "outside"),
        ("outside the ServerApp, later runs", "outside_later"),
        ("the run's figures (part of the above; drawn while the engine stops)", "figures"),
        ("**outside the ServerApp, less the figures**", "engine"),
        ("outside the ServerApp, less the figures, later runs", "engine_later"),
        ("**beyond steady rounds** (wall - rounds x steady round)", "beyond"),
        ("beyond steady rounds, later runs", "beyond_later"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(f"{s[m][key]:.2f}" for m in MODES) + " |")
    lines += [
        "| load average at the end | " + " | ".join(f"{results[m]['load']:.1f}" for m in MODES) + " |",
        "",
        f"Target (issue #22 item 2): ≤ 2 s per run beyond the runs' own rounds. In-process: "
        f"{s['inprocess']['beyond']:.2f} s, each run's figures included (drawn in {s['inprocess']['figures']:.2f} s, "
        f"while the engine stops): **{'met' if s['inprocess']['beyond'] <= 2 else 'not met'}**. Shared Ray: "
        f"{s['shared']['beyond']:.2f} s.",
        "",
        f"Metrics identical run by run (same seed, `metrics.csv` byte for byte): **{'yes' if same else 'NO'}**.",
        "Ray processes left after the sweep: " + ", ".join(f"{m} {len(results[m]['ray_left'])}" for m in MODES) + ".",
        "",
        "Wall per run, run by run (s): " + "; ".join(
            f"{m} " + ", ".join(f"{r['wall_s']:.1f}" for r in results[m]["runs"]) for m in MODES) + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--ray-runs", type=int, default=0,
                        help="runs of the two Ray sweeps (0 = --runs): they take 10x longer per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=MODES, help="time one mode's sweep only and print it (no page)")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        args.result.write_text(json.dumps(worker(args.worker, args.runs, args.rounds, args.out)))
        return
    if args.probe:
        with tempfile.TemporaryDirectory(prefix="sweep-engine-") as tmp:
            data = _run_worker(args.probe, args.runs, args.rounds, Path(tmp))
        print(json.dumps({k: round(v, 2) for k, v in _summary(data).items()}, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="sweep-engine-") as tmp:
        results = {mode: _run_worker(mode, args.runs if mode == "inprocess" else args.ray_runs or args.runs,
                                     args.rounds, Path(tmp)) for mode in MODES}
    report = write_report(results, args.runs, args.rounds)
    RESULT.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
