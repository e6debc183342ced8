"""The ``tensorboard`` tracker: TensorBoard event files in ``<run>/tensorboard/``.

Scalars: each ``rounds.csv`` column at step = the round, tagged by :func:`tag` (a statistic
``<task>.<metric>.<stat>`` becomes ``<task>/<metric>.<stat>``, so TensorBoard groups a task's
statistics; a server count such as ``aggregated`` becomes ``run/aggregated``). Text: the
resolved config (``config``, step 0) and ``summary.json`` (``summary``, the final round).
``tensorboard --logdir <run>/tensorboard`` shows them; ``--logdir runs`` compares runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmtl.config import ExperimentConfig
from fedmtl.trackers import scalars

FOLDER = "tensorboard"
"""The event files' folder inside the run folder."""


def tag(column: str) -> str:
    """The TensorBoard tag of a ``rounds.csv`` column: its first ``.`` becomes ``/``; a column
    without one goes under ``run/``."""
    return column.replace(".", "/", 1) if "." in column else f"run/{column}"


class TensorBoardTracker:
    """Writes the run's scalars and texts with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(run_dir) / FOLDER
        if resume and folder.is_dir():
            shutil.rmtree(folder)  # replayed from rounds.csv: no round logged twice
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "```toml\n" + cfg.to_toml() + "```", global_step=0)
        self.last_round = 0

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Add one scalar per number of the row, at step ``row["round"]``."""
        step = int(row["round"])
        for key, value in scalars(row).items():
            self.writer.add_scalar(tag(key), value, global_step=step)
        self.last_round = step
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Add ``summary.json`` as text and close the event file."""
        step = int(summary.get("final_round") or self.last_round)
        self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=2, default=str) + "\n```",
                             global_step=step)
        self.close()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def start(run_dir: Path, cfg: ExperimentConfig, run_id: str, resume: bool) -> TensorBoardTracker:
    """The :data:`fedmtl.trackers.TRACKERS` entry point (``resume``: the event files are written again)."""
    return TensorBoardTracker(run_dir, cfg, resume)
