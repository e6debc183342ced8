"""The personalization reference comparison: fair aggregation against personalization.

Two federations with strong heterogeneity:

(i)  MultiMNIST (``configs/quickstart.toml``) with Dirichlet label skew α = 0.3, 20 clients,
     half sampled per round, LeNet, two tasks (left and right digit);
(ii) Synthetic(1, 1) with two related tasks (``configs/synthetic.toml``), 100 devices with
     power-law sizes, a fifth sampled per round.

On each, eleven methods: three aggregation rules with one global model (FedAvg, q-FFL with
q = 1, FairGrad across each client's tasks with α = 2) and eight personalization methods
(FedPer, Ditto with λ = 0.1 and λ = 1, FedRep, FedBABU, fine-tuning, FedProx, local training).
Every configuration runs ``--seeds`` seeds; evaluation happens once, after the last round, on
every client.

Usage (from the repository root, inside the venv)::

    python benchmarks/personalization.py                 # both parts, 3 seeds
    python benchmarks/personalization.py --parts synthetic --seeds 1 --rounds 5
    python benchmarks/personalization.py --no-run       # the page from the runs that finished

The runs resume: finished runs are skipped. ``benchmarks/results/personalization.md`` gets,
per part, the mean, worst-10% and Jain index of each task's accuracy over clients (mean ± std
over seeds) for the personal model (split ``test``) and, where the method has one, the global
model (split ``test-global``), the seconds per training round relative to FedPer, and the
exact command; ``fedmtl report``'s figures stay in each part's ``report/`` folder.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.launch.sweep import plan_sweep, run_sweep  # noqa: E402
from fedmtl.report import make_report  # noqa: E402
from fedmtl.results import read_summary  # noqa: E402

# label -> overrides (``--set`` strings) of each method, on top of the part's base.
METHODS: dict[str, list[str]] = {
    "fedavg": ["personalization.method=none", "server.weighting=fedavg"],
    "qffl": ["personalization.method=none", "server.weighting=qffl",
             "server.params={q = 1.0, lipschitz = 1.0}"],
    "fairgrad-tasks": ["personalization.method=none", "client.weighting=fairgrad",
                       "client.params={alpha = 2.0}"],
    "fedper": ["personalization.method=fedper"],
    "ditto-0.1": ["personalization.method=ditto", "personalization.params={lambda = 0.1}"],
    "ditto-1": ["personalization.method=ditto", "personalization.params={lambda = 1.0}"],
    "fedrep": ["personalization.method=fedrep"],
    "fedbabu": ["personalization.method=fedbabu"],
    # FedBABU's fine-tuning at client.lr collapsed on MultiMNIST (see the page's findings);
    # 1e-3 was picked after that, by looking at three clients of one seed: an optimistic variant
    "fedbabu-ftlr": ["personalization.method=fedbabu", "personalization.params={finetune-lr = 0.001}"],
    "finetune": ["personalization.method=finetune"],
    "fedprox": ["personalization.method=fedprox", "personalization.params={mu = 0.01}"],
    "local": ["personalization.method=local"],
}

PARTS: dict[str, dict] = {
    "multimnist": {
        "title": "(i) MultiMNIST, Dirichlet label skew α = 0.3, 20 clients",
        "config": "configs/quickstart.toml",
        "overrides": ["data.dirichlet-alpha=0.3", "client.epochs=1", "server.fraction-train=0.5"],
        "rounds": 25,
    },
    "synthetic": {
        "title": "(ii) Synthetic(1, 1), two related tasks, 100 devices",
        "config": "configs/synthetic.toml",
        "overrides": ["server.fraction-train=0.2"],
        "rounds": 30,  # the shipped config's own
        "skip": ["fedbabu-ftlr"],  # the variant answers MultiMNIST's collapse
    },
}

STATISTICS = ("mean", "worst10", "jain")


def methods_of(part: dict) -> dict[str, list[str]]:
    """The methods a part runs (all but its ``skip``)."""
    return {label: sets for label, sets in METHODS.items() if label not in part.get("skip", ())}


def part_overrides(part: dict, rounds: int) -> list[str]:
    """The overrides shared by every method of a part."""
    return [*part["overrides"], f"run.rounds={rounds}", f"run.evaluate-every={rounds}",
            "run.checkpoint-every=5"]


def run_part(name: str, seeds: int, rounds: int, out: Path, run: bool = True) -> tuple[list[dict], list[str]]:
    """Run every method of one part (resuming; ``run=False`` only reads what finished); return
    one record per finished run and the labels of the runs that have not finished."""
    part = PARTS[name]
    records, missing = [], []
    for label, overrides in methods_of(part).items():
        folder = out / name / label
        sweep = plan_sweep(ROOT / part["config"], {}, seeds, folder,
                           [*part_overrides(part, rounds), *overrides])
        if run:
            run_sweep(sweep)
        for one in sweep.runs:
            run_dir = folder / one.folder
            if (run_dir / "summary.json").is_file():
                records.append(read_record(name, label, one.seed, run_dir) | {"run_dir": str(run_dir)})
            else:
                missing.append(f"`{label}` seed {one.seed}")
    return records, missing


def round_seconds(rounds_csv: Path) -> float:
    """Median seconds of a training round (rounds 2..R-1: no start-up, no evaluation)."""
    elapsed = pd.read_csv(rounds_csv)["elapsed_s"].to_numpy()
    steps = np.diff(elapsed)
    middle = steps[:-1] if len(steps) > 1 else steps
    return float(np.median(middle)) if len(middle) else math.nan


def read_record(part: str, label: str, seed: int, run_dir: Path) -> dict:
    """The final statistics of one finished run, both views."""
    summary = read_summary(run_dir)
    record = {"part": part, "method": label, "seed": seed,
              "round_s": round_seconds(run_dir / "rounds.csv"),
              "never_trained": summary.get("participation", {}).get("never_trained")}
    views = {"personal": summary, "global": summary.get("global")}
    for view, block in views.items():
        if not block:
            continue
        for task, stats in block["final"].items():
            for statistic in STATISTICS:
                record[f"{view}.{task}.{statistic}"] = stats[statistic]
    return record


def _cell(values: pd.Series, scale: float, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    mean = values.mean() * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {values.std(ddof=1) * scale:.{digits}f}"


def table(records: pd.DataFrame, view: str) -> list[str]:
    """A markdown table of one view: per method, per task, mean / worst-10% / Jain."""
    tasks = sorted({c.split(".")[1] for c in records.columns if c.startswith(f"{view}.")})
    header = ["method"] + [f"{t} {s}" for t in tasks for s in ("mean %", "worst-10% %", "Jain")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, rows in records.groupby("method", sort=False):
        if rows[[c for c in rows.columns if c.startswith(f"{view}.")]].isna().all().all():
            continue
        cells = [f"`{method}`"]
        for task in tasks:
            cells += [_cell(rows[f"{view}.{task}.mean"], 100, 1),
                      _cell(rows[f"{view}.{task}.worst10"], 100, 1),
                      _cell(rows[f"{view}.{task}.jain"], 1, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cost_table(records: pd.DataFrame) -> list[str]:
    """Seconds per training round, absolute and relative to FedPer (seed medians)."""
    per_method = records.groupby("method", sort=False)["round_s"].median()
    reference = per_method.get("fedper", math.nan)
    lines = ["| method | s / training round | × FedPer |", "|---|---|---|"]
    for method, seconds in per_method.items():
        lines.append(f"| `{method}` | {seconds:.3f} | {seconds / reference:.2f} |")
    return lines


def method_costs(name: str, rounds: int, repeats: int = 3, clients: int = 4) -> pd.DataFrame:
    """Seconds of one client's training call and one evaluation call of each method, measured
    in this process (the ClientApp's work without the engine), the methods interleaved
    ``repeats`` times (after one warm-up pass) on the first ``clients`` clients so that a busy
    spell hits all alike; the median per method. Server-side work (q-FFL's step) is not in it."""
    import torch

    from fedmtl.aggregation import make_weighting
    from fedmtl.data import load_federation
    from fedmtl.models import build_model
    from fedmtl.personalization.head_store import init_heads
    from fedmtl.training.methods.base import ClientRun, make_method
    from fedmtl.validation import load_config

    part, rows = PARTS[name], []
    torch.set_num_threads(1)  # as a client with engine.client-num-cpus = 1
    for repeat in range(repeats + 1):  # the first pass warms up (imports, first calls) and is not kept
        for label, overrides in methods_of(part).items():
            cfg = load_config(ROOT / part["config"], [*part_overrides(part, rounds), *overrides])
            fed = load_federation(cfg.data, cfg.run.seed)
            method = make_method(cfg.personalization.method, cfg.personalization.params)
            for client in range(clients):
                tasks = fed.client_tasks(client)
                model = build_model(cfg.model, fed.input_shape, tasks)
                if cfg.model.heads == "personal":
                    init_heads(model, cfg.run.seed, client)
                method.first_visit(model, cfg, client)
                run = ClientRun(cfg, client, 2, model, fed.client(client), tasks, torch.device("cpu"), {},
                                lambda cfg=cfg: make_weighting(cfg.client.weighting, **cfg.client.params))
                started = time.perf_counter()
                method.train(run, run.new_weighting())
                trained = time.perf_counter()
                method.evaluate(run)
                if repeat:
                    rows.append({"method": label, "train_s": trained - started,
                                 "evaluate_s": time.perf_counter() - trained})
    return pd.DataFrame(rows).groupby("method", sort=False).median()


def cost_lines(costs: pd.DataFrame) -> list[str]:
    """The in-process cost table, relative to FedPer."""
    ref = costs.loc["fedper"] if "fedper" in costs.index else None
    lines = ["| method | training call (s) | × FedPer | evaluation call (s) | × FedPer |", "|---|---|---|---|---|"]
    for method, row in costs.iterrows():
        train = f"{row.train_s / ref.train_s:.2f}" if ref is not None else "–"
        evaluate = f"{row.evaluate_s / ref.evaluate_s:.2f}" if ref is not None else "–"
        lines.append(f"| `{method}` | {row.train_s:.3f} | {train} | {row.evaluate_s:.3f} | {evaluate} |")
    return lines


def verdict(records: pd.DataFrame) -> list[str]:
    """Ditto's claim checked on the task-averaged mean and worst-10% of the personal view."""
    def averaged(method: str, statistic: str) -> float:
        rows = records[records["method"] == method]
        columns = [c for c in rows.columns if c.startswith("personal.") and c.endswith(f".{statistic}")]
        return float(rows[columns].mean(axis=1).mean()) * 100 if not rows.empty else math.nan

    lines = []
    for ditto in ("ditto-0.1", "ditto-1"):
        d_mean, d_worst = averaged(ditto, "mean"), averaged(ditto, "worst10")
        for other in ("fedavg", "local"):
            o_mean, o_worst = averaged(other, "mean"), averaged(other, "worst10")
            lines.append(
                f"- `{ditto}` vs `{other}`: worst-10% {d_worst:.1f} vs {o_worst:.1f} "
                f"({d_worst - o_worst:+.1f} pp), mean {d_mean:.1f} vs {o_mean:.1f} "
                f"({d_mean - o_mean:+.1f} pp)")
    return lines


def copy_figures(report: Path, target: Path) -> Path:
    """Copy the report's PNG figures next to the page (run folders are not committed)."""
    target.mkdir(parents=True, exist_ok=True)
    for figure in sorted(report.rglob("*.png")):
        shutil.copyfile(figure, target / figure.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: each part's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "personalization")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--no-run", action="store_true",
                        help="run nothing: write the page from the runs that finished (and name the others)")
    parser.add_argument("--page", type=Path,
                        default=ROOT / "benchmarks" / "results" / "personalization.md")
    args = parser.parse_args()
    for name in args.parts:  # every config is checked before anything runs
        for label, overrides in methods_of(PARTS[name]).items():
            plan_sweep(ROOT / PARTS[name]["config"], {}, args.seeds, args.out / name / label,
                       [*part_overrides(PARTS[name], args.rounds or PARTS[name]["rounds"]), *overrides])
    started = time.monotonic()
    sections = []
    for name in args.parts:
        part = PARTS[name]
        rounds = args.rounds or part["rounds"]
        t0 = time.monotonic()
        found, missing = run_part(name, args.seeds, rounds, args.out, run=not args.no_run)
        records = pd.DataFrame(found)
        records.to_csv(args.out / name / "records.csv", index=False)
        report = make_report(list(records["run_dir"]), args.out / name / "report")
        minutes = (time.monotonic() - t0) / 60
        figures = copy_figures(Path(report["report"]).parent, args.page.parent / f"personalization-{name}")
        figures = figures.relative_to(ROOT) if figures.is_relative_to(ROOT) else figures
        never = records.groupby("method", sort=False)["never_trained"].max()
        sections += [
            f"## {part['title']}", "",
            f"Config `{part['config']}` with `{' '.join(part_overrides(part, rounds))}`; "
            f"{args.seeds} seeds, {rounds} rounds; {minutes:.1f} min (resumed runs count as 0).", "",
            *([f"**Not finished, so not in the tables** ({len(missing)} runs): {', '.join(missing)}.", ""]
              if missing else []),
            "**Personal model** (split `test`: the model each client keeps; for one-model "
            "methods their only model). Accuracy in %, mean ± std over seeds:", "",
            *table(records, "personal"), "",
            "**Global model** (split `test-global`, methods with two views):", "",
            *table(records, "global"), "",
            "**Cost per client**, measured in one process with the methods interleaved (median of "
            "3 repeats × 4 clients; a training call and an evaluation call, one CPU thread; the "
            "server's work, e.g. q-FFL's step, is not in it):", "",
            *cost_lines(method_costs(name, rounds)), "",
            "Time per training round in the runs above (median over rounds 2..R-1 and seeds; the last "
            "round also evaluates and is left out). The runs ran at different times on a shared "
            "machine whose load went from about 2 to 17, so these differences are mostly the load's; "
            "the table before is the comparison:", "",
            *cost_table(records), "",
            "Clients never trained at the end (most over seeds): "
            + ", ".join(f"`{m}` {int(v) if not pd.isna(v) else '–'}" for m, v in never.items()), "",
            "**Ditto's claim** (task-averaged personal accuracy, seed means):", "",
            *verdict(records), "",
            f"Figures of `fedmtl report`: `{figures}/`.", "",
        ]
    total = (time.monotonic() - started) / 60
    command = "python benchmarks/personalization.py"
    if args.seeds != 3:
        command += f" --seeds {args.seeds}"
    if args.rounds:
        command += f" --rounds {args.rounds}"
    if args.parts != list(PARTS):
        command += " --parts " + " ".join(args.parts)
    header = [
        "# Personalization against fair aggregation", "",
        f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} "
        f"CPU cores, no GPU; {total:.1f} min in all; load average {os.getloadavg()[0]:.1f} at the end (the "
        "machine was shared with other work, which stretches the times per round).", "",
        f"Command: `{command}` (from the repository root, in the venv).", "",
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
