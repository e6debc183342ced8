"""The centralized multi-task baseline: pooled data, the same training loop.

All clients' training splits are pooled and one multi-task model (shared heads) is trained
with the configured cross-task weighting; each "round" is ``client.epochs`` epochs. Every
evaluation round the model is scored on *each client's* test split, so its results have the
same format as a federated run and the across-client statistics compare directly.

It trains with ``engine.client-num-cpus`` torch threads (default 1), as one simulated client
does, so its numbers do not depend on the machine's core count (a matrix product summed by
more threads rounds differently); the caller's thread count is put back after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from fedmtl.aggregation import make_weighting
from fedmtl.config import ExperimentConfig
from fedmtl.data import Split, load_federation
from fedmtl.determinism import preserved_determinism, use_deterministic
from fedmtl.models import build_model
from fedmtl.progress import Progress
from fedmtl.results import RoundStats, RunRecorder
from fedmtl.seeds import Stream, seeded_torch_init, torch_generator
from fedmtl.training.evaluate import evaluate
from fedmtl.training.local import train_local
from fedmtl.training.setup import select_device


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads; the caller's count is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_centralized(cfg: ExperimentConfig, run_dir: Path, quiet: bool = False) -> Path:
    """Train on the pooled data and write a run folder; return it (with
    ``engine.client-num-cpus`` torch threads, :func:`torch_threads`, and ``run.deterministic``;
    the caller's settings are put back)."""
    with torch_threads(cfg.engine.client_num_cpus), preserved_determinism():
        use_deterministic(cfg.run.deterministic)
        return _train_pooled(cfg, run_dir, quiet)


def _train_pooled(cfg: ExperimentConfig, run_dir: Path, quiet: bool) -> Path:
    fed = load_federation(cfg.data, cfg.run.seed)
    clients = fed.clients()
    pooled = Split.concat([c.train for c in clients])
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        model = build_model(cfg.model, fed.input_shape, fed.tasks)
    device = select_device(cfg.client.device)
    model.to(device)
    weighting = make_weighting(cfg.client.weighting, **cfg.client.params)
    recorder = RunRecorder(run_dir, cfg, fed.tasks)
    progress = Progress(cfg.run.rounds, enabled=not quiet, replies=False,
                        title="Pooled-data model: test metrics on each client's test split")
    stats: RoundStats | None = None
    with progress.rounds():
        for epoch in range(1, cfg.run.rounds + 1):
            result = train_local(
                model, pooled, fed.tasks, weighting,
                epochs=cfg.client.epochs, batch_size=cfg.client.batch_size, lr=cfg.client.lr,
                momentum=cfg.client.momentum, device=device,
                generator=torch_generator(Stream.BATCHES, cfg.run.seed, epoch), gradients=cfg.client.gradients,
            )
            row = {"round": epoch, "train_loss": sum(result.task_losses.values()) / len(result.task_losses)}
            round_stats = None
            if epoch % cfg.run.evaluate_every == 0 or epoch == cfg.run.rounds:
                per_client = {c.client_id: evaluate(model, c.test, fed.tasks, device=device) for c in clients}
                counts = {c.client_id: len(c.test) for c in clients}
                round_stats = stats = recorder.record_evaluation(epoch, per_client, counts)
                progress.round(round_stats, recorder.elapsed, {})
            recorder.log_round(row, round_stats)
            progress.advance(epoch, recorder.elapsed, {}, evaluated=round_stats is not None)
    progress.final_table(stats)
    recorder.finish(stats)
    if not quiet:
        progress.console.print(f"Results: {run_dir}")
    return run_dir
