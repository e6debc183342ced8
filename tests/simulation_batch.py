"""Run several simulations in one process, for tests that need many short ones.

``python -m tests.simulation_batch SPEC.json RESULT.json``: SPEC is a list of
``{"config": path, "overrides": [...], "out": run folder}``, of ``{"argv": [...], "out": key}``
(a ``fedmtl`` command line, e.g. ``run --resume``, run in this process) or of
``{"resume": run folder, "rounds": N, "out": key}`` (:func:`fedmtl.resume`); RESULT maps each
``out`` to "" (the run finished) or the error's traceback (a command's exit code and output).
Each run is a real Ray simulation exactly as ``fedmtl run`` starts it; one process saves the
interpreter's imports per run, and the runs share one Ray instance
(:func:`fedmtl.launch.simulation.shared_engine`, as a sweep's do).
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path


def main(spec_path: str, result_path: str) -> None:
    """Run every job of ``spec_path``; write the outcomes to ``result_path``."""
    from fedmtl.launch.simulation import shared_engine, simulate
    from fedmtl.results import create_run_dir
    from fedmtl.validation import load_config

    results = {}
    with shared_engine():
        for job in json.loads(Path(spec_path).read_text()):
            if "argv" in job:
                results[job["out"]] = command(job["argv"])
                continue
            if "resume" in job:
                results[job["out"]] = api_resume(job["resume"], job.get("rounds"))
                continue
            try:
                cfg = load_config(job["config"], job["overrides"])
                simulate(cfg, create_run_dir(cfg, Path(job["out"])), quiet=True)
                results[job["out"]] = ""
            except Exception as exc:  # noqa: BLE001 - reported per job, the batch goes on
                results[job["out"]] = "".join(traceback.format_exception(exc))[-4000:]
    Path(result_path).write_text(json.dumps(results))


def api_resume(folder: str, rounds: int | None) -> str:
    """``fedmtl.resume(folder, rounds=rounds)`` in this process: "" when it returns, else the error."""
    import fedmtl

    try:
        fedmtl.resume(folder, rounds=rounds)
    except Exception as exc:  # noqa: BLE001 - reported per job, the batch goes on
        return "".join(traceback.format_exception(exc))[-4000:]
    return ""


def command(argv: list[str]) -> str:
    """Run ``fedmtl ARGV`` in this process: "" when it exits 0, else its exit code and output."""
    import contextlib
    import io

    from fedmtl.cli import cli

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = cli(argv, prog_name="fedmtl", standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - reported per job, the batch goes on
        return "".join(traceback.format_exception(exc))[-4000:] + output.getvalue()[-2000:]
    return "" if not code else f"exit code {code}: {output.getvalue()[-4000:]}"


def run_batch(jobs: list[dict], folder: Path, timeout: float = 1800) -> dict[str, str]:
    """Run ``jobs`` in one subprocess; return ``{out: error or ""}``."""
    spec, result = folder / "batch.json", folder / "batch-result.json"
    spec.write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.simulation_batch", str(spec), str(result)],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1],
    )
    if not result.exists():
        raise RuntimeError(f"the simulation batch died (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(result.read_text())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
