"""The fedmtl ServerApp.

``flwr run . --run-config CONFIG`` loads ``app`` (see ``[tool.flwr.app.components]`` in
pyproject.toml) and reads the experiment from the run config; ``fedmtl run`` builds the
same server with :func:`make_server_app` around an already validated config and run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmtl import protocol as wire
from fedmtl.background import BackgroundWork
from fedmtl.config import RESUME_HEADS_ON_NODES, RESUME_RUN_DIR, ConfigError, ExperimentConfig
from fedmtl.data import dataset_input_shape, dataset_tasks
from fedmtl.determinism import use_deterministic
from fedmtl.folder_lock import holding
from fedmtl.models import build_model
from fedmtl.one_line import described
from fedmtl.progress import Progress, make_console
from fedmtl.results import (
    RunRecorder,
    create_run_dir,
    head_store_root,
    newest_checkpoint_round,
    recorded_head_store_dir,
    write_flower_run_id,
)
from fedmtl.screening import check_data_here
from fedmtl.seeds import Stream, seeded_torch_init
from fedmtl.server.discovery import discover_clients
from fedmtl.server.latency import poll_replies_often, signal_pushes, signal_replies
from fedmtl.server.strategy import FedMTLStrategy
from fedmtl.stop_record import clear_stop, record_stop
from fedmtl.validation import config_from_flat

log = logging.getLogger("fedmtl")


def resolve_paths(cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """The paths clients use: a relative ``client.head-store-dir`` (the default ``""`` =
    ``heads``) inside the run folder (:func:`fedmtl.results.head_store_root`)."""
    return cfg.with_values(client={"head_store_dir": str(head_store_root(cfg, run_dir))})


def run_server(
    grid: Grid, cfg: ExperimentConfig, run_dir: Path | None = None, quiet: bool = False,
    checkpoint: dict | None = None, background: BackgroundWork | None = None, flower_run_id: int | None = None,
) -> Path:
    """Run a whole federated experiment on ``grid``; return the run folder.

    With ``checkpoint`` (:func:`fedmtl.results.load_checkpoint` of ``run_dir``) the run
    continues after the checkpointed round: the run folder's files are cut back to that round
    and the server's state (model, optimizer, weightings, sampling RNG) is restored. With
    ``background`` the run's figures are drawn in its thread (the caller joins it). With
    ``flower_run_id`` (a ``flwr run`` submission) the folder records Flower's id of the run.
    """
    check_data_here(cfg.data, cfg.run.seed, cfg.server.max_examples)  # before any folder or client
    run_dir = run_dir or create_run_dir(cfg)
    # one process at a time writes a run folder (fedmtl.folder_lock); a resume holds it already
    with holding(run_dir, join=True):
        clear_stop(run_dir)  # a resume: the run goes on
        try:
            _run(grid, cfg, run_dir, quiet, checkpoint, background, flower_run_id)
        except Exception as exc:  # the folder says why its run stopped (fedmtl.stop_record)
            record_stop(run_dir, described(exc, None), newest_checkpoint_round(run_dir), exc)
            raise
    return run_dir


def _run(
    grid: Grid, cfg: ExperimentConfig, run_dir: Path, quiet: bool, checkpoint: dict | None,
    background: BackgroundWork | None, flower_run_id: int | None,
) -> None:
    """:func:`run_server`'s experiment, in its run folder (held)."""
    recorded = recorded_head_store_dir(cfg)  # config.toml keeps the head store relative to the run folder
    cfg = resolve_paths(recorded, run_dir)
    use_deterministic(cfg.run.deterministic)  # the server's aggregation on server.device
    poll_replies_often(grid)
    signal_pushes(grid)
    signal_replies(grid)
    tasks = dataset_tasks(cfg.data)
    done = int(checkpoint["round"]) if checkpoint else None
    recorder = RunRecorder(run_dir, recorded, tasks, resume_round=done, background=background)
    if flower_run_id is not None:  # with config.toml written: the folder is a run's
        write_flower_run_id(run_dir, flower_run_id)
    progress = Progress(cfg.run.rounds, enabled=not quiet)
    directory = discover_clients(grid, cfg)
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        model = build_model(cfg.model, dataset_input_shape(cfg.data), tasks)
    strategy = FedMTLStrategy(cfg, directory, recorder, progress)
    strategy.config_record[wire.RUN_ID] = recorder.run_id  # clients write it into their heads, refuse others'
    initial = model.federated_state(cfg.model.heads == "global")
    if checkpoint:
        strategy.restore(checkpoint)
        initial = strategy.state
        if not quiet:
            progress.console.print(f"Resuming {run_dir} after round {done} of {cfg.run.rounds}")
    strategy.start(grid, ArrayRecord(initial))
    strategy.check_progress()
    progress.final_table(strategy.last_stats)
    recorder.finish(strategy.last_stats)
    if (errors := strategy.errors.summary()) is not None:
        progress.notice(errors)
    if not quiet and background is None:  # else the caller names the folder once its figures are drawn
        progress.console.print(f"Results: {run_dir}")


def make_server_app(
    cfg: ExperimentConfig, run_dir: Path, quiet: bool = False, checkpoint: dict | None = None,
    background: BackgroundWork | None = None,
) -> ServerApp:
    """A ServerApp running ``cfg`` into ``run_dir`` (used by ``fedmtl run``; ``checkpoint``
    resumes it, ``background`` draws its figures, see :func:`run_server`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, run_dir, quiet=quiet, checkpoint=checkpoint, background=background)

    return server_app


def resume_submitted(
    grid: Grid, run_dir: Path, heads_on_nodes: bool, flower_run_id: int | None = None, quiet: bool = False,
) -> Path:
    """Continue the run in ``run_dir`` (on this machine) after its newest checkpoint, with its
    own ``config.toml``: a ``flwr run`` submission that resumes (``fedmtl flwr-run --resume``).

    The same checks as ``fedmtl run --resume`` (:func:`fedmtl.resumption.plan_resume`), but for
    the clients' heads when they live on the clients' hosts (``heads_on_nodes``): each client
    checks its own against what its last training left. A run that already finished is left
    as it is.

    Raises
    ------
    fedmtl.resumption.ResumeRefused
        The run cannot be continued exactly, or has no checkpoint (one line naming the folder).
    """
    from fedmtl.resumption import plan_resume, submitted_force_hint

    plan = plan_resume(run_dir, heads_on_nodes=heads_on_nodes, force_hint=submitted_force_hint(run_dir, heads_on_nodes),
                       restart=False)
    if plan.finished:
        if not quiet:
            make_console().print(
                f"'{run_dir}' already finished its {plan.cfg.run.rounds} rounds: nothing to resume")
        return run_dir
    return run_server(grid, plan.cfg, run_dir, quiet=quiet, checkpoint=plan.checkpoint, flower_run_id=flower_run_id)


def submission(run_config: dict) -> tuple[dict, Path | None, bool]:
    """A ``flwr run`` submission's run config split into the experiment's keys, the run folder
    to resume (``resume.run-dir``; ``None``: a new run) and whether its clients keep their heads
    on their own hosts (:data:`fedmtl.config.SUBMISSION_DEFAULTS`)."""
    values = dict(run_config)
    resume = str(values.pop(RESUME_RUN_DIR, "") or "")
    heads_on_nodes = _flag(values.pop(RESUME_HEADS_ON_NODES, False), RESUME_HEADS_ON_NODES)
    return values, Path(resume) if resume else None, heads_on_nodes


def _flag(value: object, key: str) -> bool:
    """A run-config switch: a boolean, or ``true`` / ``false`` as text (``flwr run --run-config
    'key="false"'`` passes a string: ``bool("false")`` would be ``True``).

    Raises
    ------
    ConfigError
        For anything else, naming ``key`` and the value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key} = {value!r}: must be true or false")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: the experiment comes from the run config, or from the run
    folder it names to resume (``resume.run-dir``)."""
    values, resume, heads_on_nodes = submission(context.run_config)
    if resume is not None:
        resume_submitted(grid, resume, heads_on_nodes, flower_run_id=context.run_id)
        return
    run_server(grid, config_from_flat(values), flower_run_id=context.run_id)
