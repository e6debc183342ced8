"""How closely a run on a GPU reproduces the same run on the CPU, with and without TF32.

On Ampere and later GPUs, PyTorch lets cuDNN compute float32 convolutions in TF32 (a 10-bit
mantissa) unless ``torch.backends.cudnn.allow_tf32`` is false; float32 matrix products stay
in full float32 unless ``torch.backends.cuda.matmul.allow_tf32`` is true. fedmtl leaves both
flags at PyTorch's defaults. This script runs ``configs/smoke.toml`` (4 clients, 2 rounds,
in-process engine) on the CPU, then with clients (half a GPU each) and the server on the GPU,
once with TF32 off and once with PyTorch's defaults, for the fair configuration of
``tests/test_gpu_runs.py`` and several personalization methods; then at the calm settings of
``tests/test_gpu_runs.py`` (TF32 off) on the CPU and twice on the GPU, and reports:

- the largest ‖gpu − cpu‖ / ‖cpu‖ over the tensors of the final global backbone and heads;
- the largest relative difference of a loss row of ``metrics.csv``;
- the largest difference of an accuracy row.

Usage (from the repository root, inside the venv, on a machine with a GPU)::

    python benchmarks/gpu_agreement.py

Writes ``benchmarks/results/gpu_agreement.md`` and ``.json`` (``--out`` elsewhere). Without a
GPU it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOKE = ROOT / "configs" / "smoke.toml"
BASE = ["engine.backend=inprocess", "data.num-clients=4"]
ON_CPU = ["client.device=cpu", "server.device=cpu"]
ON_GPU = ["client.device=cuda", "server.device=cuda", "engine.client-num-gpus=0.5"]
CALM = ["client.lr=0.01", "client.momentum=0"]  # the settings of tests/test_gpu_runs.py
CASES: dict[str, list[str]] = {
    "fair (flat FairGrad, clients' FairGrad)": ["server.plan=flat", "server.weighting=fairgrad",
                                                "client.weighting=fairgrad"],
    "personalization none": ["personalization.method=none"],
    "ditto": ["personalization.method=ditto"],
    "apfl": ["personalization.method=apfl"],
    "fedbabu": ["personalization.method=fedbabu"],
    "fedrep": ["personalization.method=fedrep"],
    "fedrep, 1 head epoch": ["personalization.method=fedrep", "personalization.params.head-epochs=1"],
}


def tensors(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint entry, by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    return {}


def model_differences(reference: Path, other: Path) -> dict[str, float]:
    """‖other − reference‖ / ‖reference‖ of each tensor of the two runs' final global backbone and
    heads (their newest checkpoints)."""
    from fedmtl.results import load_checkpoint

    ref, oth = load_checkpoint(reference)[0], load_checkpoint(other)[0]
    a = {**tensors(ref["backbone"], "backbone"), **tensors(ref["heads"], "heads")}
    b = {**tensors(oth["backbone"], "backbone"), **tensors(oth["heads"], "heads")}
    if a.keys() != b.keys() or not a:
        raise ValueError(f"the runs' models differ in their tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    return {k: float((b[k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-12)) for k, v in a.items()}


def metric_differences(reference: Path, other: Path) -> dict[str, float]:
    """The largest relative difference of a loss row and absolute one of an accuracy row between
    two runs' ``metrics.csv`` (which must hold the same rows)."""
    from fedmtl.api import RunResult

    keys = ["round", "client", "task", "split", "metric"]
    ref = RunResult(reference).metrics.set_index(keys)["value"]
    oth = RunResult(other).metrics.set_index(keys)["value"]
    if not oth.index.equals(ref.index):
        raise ValueError("the runs' metrics.csv hold different rows")
    metric = ref.index.get_level_values("metric")
    loss, accuracy = metric == "loss", metric == "accuracy"
    return {"loss": float(np.max(np.abs(oth[loss] - ref[loss]) / np.abs(ref[loss]).clip(1e-12))),
            "accuracy": float(np.max(np.abs(oth[accuracy] - ref[accuracy])))}


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for convolutions and matrix products on (``True``), off (``False``) or PyTorch's
    defaults left as they are (``None``); put back after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def one_run(out: Path, overrides: list[str], flag: bool | None) -> Path:
    """The folder of a smoke run with ``overrides`` (after :data:`BASE`), TF32 as :func:`tf32` ``flag``."""
    import fedmtl

    with tf32(flag):
        return fedmtl.run(SMOKE, overrides=[*BASE, *overrides], out=out).folder


def measure(folder: Path, after_each: Callable[[dict], object] = lambda result: None,
            ) -> dict[str, dict[str, dict[str, float]]]:
    """For each case, at the smoke config's settings and at the calm ones: the GPU run's
    differences from the CPU run (TF32 off; at smoke's settings also PyTorch's defaults), and at
    the calm settings a second GPU run's from the first (the GPU's run-to-run reproducibility).
    ``after_each`` gets the result so far after each case (to write it: a run cut short keeps
    the cases before)."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for i, (case, extra) in enumerate(CASES.items()):
        result[case] = {}
        for setting, knobs in (("smoke's", []), ("calm", CALM)):
            name, on_gpu = f"{i}-{setting}", [*extra, *knobs, *ON_GPU]
            cpu = one_run(folder / f"{name}-cpu", [*extra, *knobs, *ON_CPU], False)
            gpu = one_run(folder / f"{name}-gpu", on_gpu, False)
            pairs = {"GPU, TF32 off, vs CPU": (cpu, gpu)}
            if setting == "calm":
                pairs["GPU, TF32 off, run again"] = (gpu, one_run(folder / f"{name}-again", on_gpu, False))
            else:
                pairs["GPU, PyTorch defaults, vs CPU"] = (cpu, one_run(folder / f"{name}-defaults", on_gpu, None))
            for compared, (a, b) in pairs.items():
                row = result[case][f"{setting} | {compared}"] = {"model": max(model_differences(a, b).values()),
                                                                  **metric_differences(a, b)}
                print(case, setting, compared, row, flush=True)
        after_each(result)
    return result


def write_results(out: Path, stem: str, data: dict, lines: list[str]) -> Path:
    """``<stem>.json`` holding ``data`` and ``<stem>.md`` holding ``lines`` in ``out``; prints the
    page and returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2))
    page = out / f"{stem}.md"
    page.write_text("\n".join([*lines, ""]))
    print("\n".join(lines))
    return page


def write(result: dict, out: Path) -> Path:
    """``gpu_agreement.md`` and ``.json`` in ``out``; returns the page."""
    device = torch.cuda.get_device_name(0)
    defaults = f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, " \
               f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
    data = {"date": date.today().isoformat(), "gpu": device, "torch": torch.__version__, "defaults": defaults,
            "cases": result}
    lines = ["# A run on a GPU against the same run on the CPU (`benchmarks/gpu_agreement.py`)", "",
             f"{date.today().isoformat()}, {device}, torch {torch.__version__} (its defaults: {defaults}).", "",
             "`configs/smoke.toml`, 4 clients, 2 rounds, in-process engine; clients on half a GPU each and the "
             "server on the GPU, against the CPU, at the smoke config's settings (lr 0.05, momentum 0.5) and at "
             "the calm ones of `tests/test_gpu_runs.py` (lr 0.01, no momentum); at the calm ones also a second "
             "GPU run against the first. Model: the largest ‖b − a‖ / ‖a‖ over the tensors of the final global "
             "backbone and heads; loss: the largest relative difference of a loss row; accuracy: the largest "
             "difference of an accuracy row.", "",
             "| configuration | settings | compared | model | loss | accuracy |", "|---|---|---|---:|---:|---:|"]
    for case, rows in result.items():
        for label, d in rows.items():
            lines.append(f"| {case} | {label} | {d['model']:.1e} | {d['loss']:.1e} | {d['accuracy']:.3f} |")
    return write_results(out, "gpu_agreement", data, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device (torch.cuda.is_available() is false): nothing measured")
        return
    with tempfile.TemporaryDirectory() as runs:
        measure(Path(runs), after_each=lambda result: write(result, args.out))


if __name__ == "__main__":
    main()
