"""The run folder: the stable results format of fedmtl.

Each run writes one folder::

    config.toml     the fully resolved config
    metrics.csv     long format: round, client, task, split, metric, value
    placement.csv   where each reply was computed: round, client, stage, host, node, device
    rounds.csv      one row per round: server-side counts and across-client statistics
    summary.json    final per-task statistics, duration, paths
    checkpoints/    round-<r>.pt: the server's state after round r (the two latest)
    plots/*.png     figures (see fedmtl.plots)

``metrics.csv`` rows with ``task == "all"`` are client-level (example counts, the client's
aggregation weight, head fingerprints). pandas reads everything (``load_run``).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from fedmtl.atomic import torch_save, write_bytes
from fedmtl.config import ExperimentConfig
from fedmtl.fairness import summarize
from fedmtl.group_fairness import summarize_group_gaps
from fedmtl.tasks import TaskSpec

METRIC_COLUMNS = ["round", "client", "task", "split", "metric", "value"]
PLACEMENT_COLUMNS = ["round", "client", "stage", "host", "node", "device"]
CLIENT_LEVEL = "all"


def create_run_dir(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Create a new, empty run folder.

    ``out`` is used as given (it must be absent or empty); otherwise the folder is
    ``<run.output-dir>/<run.name>-<timestamp>``.
    """
    if out is not None:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"run folder '{path}' exists and is not empty; choose another --out")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}-{suffix}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


OVERALL = "overall"


@dataclass
class RoundStats:
    """Across-client statistics of one round's evaluation.

    Attributes
    ----------
    round : int
        The round evaluated.
    stats : dict[str, dict[str, float]]
        Per task, :func:`fedmtl.fairness.summarize` of its primary metric across clients.
    metric : dict[str, str]
        Per task, the name of its primary metric.
    overall : dict[str, float]
        The same statistics of each client's mean over the tasks it holds (empty when the
        tasks' primary metrics differ in name or direction); ``metric[OVERALL]`` names it.
    group : dict[str, dict[str, float]]
        Per task with group metrics, :func:`fedmtl.group_fairness.summarize_group_gaps`.
    """

    round: int
    stats: dict[str, dict[str, float]]
    metric: dict[str, str]
    overall: dict[str, float] = field(default_factory=dict)
    group: dict[str, dict[str, float]] = field(default_factory=dict)

    def columns(self) -> dict[str, float]:
        """The flat ``rounds.csv`` columns: ``<task>.<metric>.<stat>`` and the group gaps."""
        out = {f"{task}.{self.metric[task]}.{key}": value
               for task, values in self.stats.items() for key, value in values.items()}
        out.update({f"{OVERALL}.{self.metric[OVERALL]}.{key}": value for key, value in self.overall.items()})
        out.update({f"{task}.{key}": value for task, values in self.group.items() for key, value in values.items()})
        return out


class RunRecorder:
    """Writes a run folder incrementally while a run progresses.

    Parameters
    ----------
    run_dir : Path
        The (existing) run folder.
    cfg : ExperimentConfig
        The resolved config, written to ``config.toml``.
    tasks : list[TaskSpec]
        The dataset's tasks (their primary metrics are summarised per round).
    """

    def __init__(
        self, run_dir: Path, cfg: ExperimentConfig, tasks: list[TaskSpec], resume_round: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.tasks = tasks
        self.started = time.monotonic()
        self.rounds: list[dict[str, Any]] = []
        self.metrics_path = self.run_dir / "metrics.csv"
        self.placement_path = self.run_dir / "placement.csv"
        for sub in ("checkpoints", "plots"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if resume_round is not None:
            self._truncate(resume_round)
            return
        write_bytes(self.run_dir / "config.toml", cfg.to_toml().encode())
        with self.metrics_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(METRIC_COLUMNS)
        with self.placement_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(PLACEMENT_COLUMNS)

    def _truncate(self, last_round: int) -> None:
        """Drop what rounds after ``last_round`` wrote (a resumed run redoes them)."""
        metrics = pd.read_csv(self.metrics_path, dtype={"task": str, "split": str, "metric": str})
        kept = metrics[metrics["round"] <= last_round].to_csv(index=False)
        write_bytes(self.metrics_path, kept.encode())
        if self.placement_path.is_file():
            placement = pd.read_csv(self.placement_path, dtype=str, keep_default_na=False)
            placement = placement[placement["round"].astype(int) <= last_round]
            write_bytes(self.placement_path, placement.to_csv(index=False).encode())
        rounds_path = self.run_dir / "rounds.csv"
        if rounds_path.is_file():
            rounds = pd.read_csv(rounds_path)
            rounds = rounds[rounds["round"] <= last_round]
            self.rounds = [{k: v for k, v in row.items() if not pd.isna(v)} for row in rounds.to_dict("records")]
            write_bytes(rounds_path, rounds.to_csv(index=False).encode())
            if self.rounds:
                self.started -= float(self.rounds[-1]["elapsed_s"])
        (self.run_dir / "summary.json").unlink(missing_ok=True)

    @property
    def elapsed(self) -> float:
        """Seconds since the recorder was created."""
        return time.monotonic() - self.started

    def log_metrics(self, rows: list[tuple[int, int, str, str, str, float]]) -> None:
        """Append ``(round, client, task, split, metric, value)`` rows to ``metrics.csv``."""
        with self.metrics_path.open("a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def log_placement(self, rows: list[tuple[int, int, str, str, str, str]]) -> None:
        """Append ``(round, client, stage, host, node, device)`` rows to ``placement.csv``."""
        if rows:
            with self.placement_path.open("a", newline="") as handle:
                csv.writer(handle).writerows(rows)

    def placement_summary(self) -> dict[str, int]:
        """Replies per ``host/node/device`` over the run (``summary.json``'s ``placement``)."""
        if not self.placement_path.is_file():
            return {}
        rows = pd.read_csv(self.placement_path, dtype=str, keep_default_na=False)
        keys = rows["host"] + "/" + rows["node"].str[:12] + "/" + rows["device"]
        return {str(k): int(v) for k, v in keys.value_counts().sort_index().items()}

    def evaluation_stats(
        self, server_round: int, per_client: dict[int, dict[str, dict[str, float]]],
        num_examples: dict[int, int],
    ) -> RoundStats:
        """Across-client statistics of each task's primary metric, overall and of group gaps."""
        stats, metric, group = {}, {}, {}
        clients = sorted(per_client)
        for task in self.tasks:
            name = task.primary_metric
            higher = task.task_kind.metrics[name]
            held = [c for c in clients if task.name in per_client[c]]
            values = [per_client[c][task.name][name] for c in held]
            weights = [num_examples.get(c, 1) for c in held]
            stats[task.name] = summarize(values, weights, higher)
            metric[task.name] = name
            gaps = summarize_group_gaps([per_client[c][task.name] for c in held])
            if gaps:
                group[task.name] = gaps
        overall = {}
        directions = {(t.primary_metric, t.task_kind.metrics[t.primary_metric]) for t in self.tasks}
        if len(self.tasks) > 1 and len(directions) == 1:
            (name, higher), = directions
            held = [c for c in clients if any(t.name in per_client[c] for t in self.tasks)]
            values = [sum(per_client[c][t][name] for t in per_client[c] if t in metric)
                      / sum(1 for t in per_client[c] if t in metric) for c in held]
            overall = summarize(values, [num_examples.get(c, 1) for c in held], higher)
            metric[OVERALL] = name
        return RoundStats(server_round, stats, metric, overall, group)

    def record_evaluation(
        self, server_round: int, per_client: dict[int, dict[str, dict[str, float]]],
        num_examples: dict[int, int],
    ) -> RoundStats:
        """Log every client's test metrics to ``metrics.csv``; return the round's statistics.

        Parameters
        ----------
        server_round : int
            The round evaluated.
        per_client : dict[int, dict[str, dict[str, float]]]
            ``{client: {task: {metric: value}}}``.
        num_examples : dict[int, int]
            Test examples per client.
        """
        rows: list[tuple[int, int, str, str, str, float]] = []
        for client in sorted(per_client):
            rows.append((server_round, client, CLIENT_LEVEL, "test", "num-examples", num_examples[client]))
            for task, values in per_client[client].items():
                rows += [(server_round, client, task, "test", m, v) for m, v in values.items()]
        self.log_metrics(rows)
        return self.evaluation_stats(server_round, per_client, num_examples)

    def log_round(self, row: dict[str, Any], stats: RoundStats | None) -> None:
        """Add one ``rounds.csv`` row (server counts plus per-task statistics)."""
        row = {"round": row["round"], "elapsed_s": round(self.elapsed, 3), **row}
        if stats is not None:
            row.update(stats.columns())
        self.rounds.append(row)
        data = pd.DataFrame(self.rounds).to_csv(index=False).encode()
        write_bytes(self.run_dir / "rounds.csv", data)

    def save_checkpoint(self, server_round: int, state: dict[str, Any], keep: int = 2) -> Path:
        """Write ``checkpoints/round-<r>.pt`` atomically; delete all but the ``keep`` newest."""
        path = self.run_dir / "checkpoints" / f"round-{server_round}.pt"
        torch_save({"round": server_round, **state}, path)
        for old in checkpoint_files(self.run_dir)[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def finish(self, final: RoundStats | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` and the plots; return the summary."""
        summary: dict[str, Any] = {
            "name": self.cfg.run.name,
            "mode": self.cfg.run.mode,
            "dataset": self.cfg.data.dataset,
            "num_clients": self.cfg.data.num_clients,
            "rounds": self.cfg.run.rounds,
            "duration_s": round(self.elapsed, 3),
            "final_round": final.round if final else None,
            "final": {
                task: {"metric": final.metric[task], **values} for task, values in final.stats.items()
            }
            if final
            else {},
            OVERALL: {"metric": final.metric[OVERALL], **final.overall} if final and final.overall else {},
            "group": final.group if final else {},
            "placement": self.placement_summary(),
            "run_dir": str(self.run_dir),
            **(extra or {}),
        }
        write_bytes(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        from fedmtl.plots import plot_run

        plot_run(self.run_dir)
        return summary


class CheckpointError(RuntimeError):
    """No usable checkpoint in a run folder."""


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """``checkpoints/round-<r>.pt`` files, oldest first."""
    files = [p for p in (Path(run_dir) / "checkpoints").glob("round-*.pt")
             if p.stem.removeprefix("round-").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("round-")))


def load_checkpoint(run_dir: str | Path, path: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The newest checkpoint that loads (or ``path``), and a note per newer one that did not.

    Raises
    ------
    CheckpointError
        When no checkpoint loads (naming each file and its error).
    """
    import torch

    candidates = [Path(path)] if path is not None else list(reversed(checkpoint_files(run_dir)))
    if not candidates:
        raise CheckpointError(f"'{run_dir}' has no checkpoint (checkpoints/round-<r>.pt); nothing to resume")
    notes = []
    for candidate in candidates:
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "round" not in state or "backbone" not in state:
                raise ValueError("not a fedmtl checkpoint")
            return state, notes
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the next is tried
            notes.append(f"checkpoint '{candidate}' is unusable ({type(exc).__name__}: {str(exc)[:200]})")
    raise CheckpointError("\n".join(notes))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a run folder: ``metrics`` and ``rounds`` DataFrames, ``summary`` dict."""
    run_dir = Path(run_dir)
    return {
        "metrics": pd.read_csv(run_dir / "metrics.csv"),
        "rounds": pd.read_csv(run_dir / "rounds.csv"),
        "summary": json.loads((run_dir / "summary.json").read_text()),
    }
