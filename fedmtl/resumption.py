"""Resuming a run folder: the one sequence of checks behind ``fedmtl run --resume``,
:func:`fedmtl.resume` and a ``flwr run`` submission that resumes (``fedmtl flwr-run --resume``,
whose ServerApp plans the resume where the run folder is).

:func:`plan_resume` reads the run's ``config.toml`` and newest usable checkpoint and either
returns what the resumed run starts from (:class:`Resumption`) or raises, in one line, why it
cannot continue exactly: the run is centralized or kept its heads in memory, it has no usable
checkpoint, another process writes it, or its identity, config, tables or heads do not match
the checkpoint (:func:`fedmtl.results.resume_problems`; ``force`` overrides the problems that
allow it). A resume may extend the run to more rounds, never fewer. The caller decides how to
speak (the command line prints notes, the Python API warns) and then runs the simulation.

A sweep continues its interrupted runs with its own check (:func:`fedmtl.launch.sweep.check_resume`:
the same problems, and the folder's config must still be the sweep's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

Checking = Callable[[str], AbstractContextManager[Any]]
"""Given a description, a context manager shown while a slow check runs."""

if TYPE_CHECKING:  # importing the results module (pandas) waits for a resume
    from fedmtl.config import ExperimentConfig
    from fedmtl.results import ResumeProblem


class ResumeRefused(RuntimeError):
    """A run cannot be continued exactly (one line naming its folder and what differs)."""


@dataclass(frozen=True)
class Resumption:
    """What a resumed run starts from.

    Attributes
    ----------
    cfg : ExperimentConfig
        The run's config, extended to the rounds asked for.
    checkpoint : dict or None
        The checkpoint the server continues from (the heads ``force`` let go are forgotten);
        ``None``: the run has no checkpoint and starts again from round 1 (:attr:`restart`).
    finished : bool
        The run already finished every round asked for: nothing is to run.
    skipped : list of str
        One note per newer checkpoint that could not be read (the one before it is used).
    forced : list of ResumeProblem
        The problems ``force`` overrode.
    extended : str or None
        A note when the extended run may differ from a run of that many rounds from the start.
    unfinished : list of str
        A finished run's outputs written after its summary that are missing (it was stopped
        while it wrote them: :func:`fedmtl.results.unfinished_outputs`); the caller writes them
        again (:func:`fedmtl.results.write_unfinished_outputs`).
    restart : str or None
        The run stopped before its first checkpoint: what starting it again from round 1, in
        its folder, deletes (the caller calls :func:`fedmtl.results.reset_run_dir` first).
    """

    cfg: ExperimentConfig
    checkpoint: dict[str, Any] | None
    finished: bool = False
    skipped: list[str] = field(default_factory=list)
    forced: list[ResumeProblem] = field(default_factory=list)
    extended: str | None = None
    restart: str | None = None
    unfinished: list[str] = field(default_factory=list)


def unresumable(cfg: ExperimentConfig) -> str | None:
    """Why a run of ``cfg`` can never be resumed (``None`` when it can)."""
    if cfg.run.mode == "centralized":
        return "a centralized run has no checkpoints to continue from; run the baseline again"
    if cfg.client.head_store != "disk":
        return "client.head-store = 'context' kept the clients' heads in memory, and they are lost; use 'disk'"
    return None


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A run folder's ``config.toml`` (with ``overrides``), its plugins imported.

    Raises
    ------
    fedmtl.plugins.PluginError
        A plugin ``run.plugins`` names cannot be imported; when it is not found, the line says
        where the run's plugins are named and how to point them to where the plugin is now
        (``run.plugins`` may change between a run and its resume; the names it registers may not).
    fedmtl.config.ConfigError
        Any other problem of the config.
    """
    from fedmtl.plugins import PluginError, PluginNotFound
    from fedmtl.validation import load_config

    path = Path(run_dir) / "config.toml"
    try:
        return load_config(path, overrides or [])
    except PluginNotFound as exc:  # one that is there but fails says what to fix in its own error
        raise PluginError(f"{exc}; the run's plugins are named in {path}: put the plugin back, or set run.plugins "
                          "there to where it is now (it must register the same names)") from exc


def submitted_force_hint(run_dir: str | Path, heads_on_nodes: bool) -> str:
    """What to do about a refusal ``--force`` would override, for a resume submitted with
    ``flwr run`` (``fedmtl flwr-run --resume``), which cannot force."""
    if heads_on_nodes:
        return ("a submitted resume cannot be forced: put back what differs, or submit the run's config.toml again "
                "as a new run")
    return (f"fedmtl run --resume {run_dir} --force continues it as a local simulation (a deployment whose clients "
            "keep their heads on their hosts: resume.heads-on-nodes = true, as fedmtl flwr-run --resume sets it "
            "with --superlink-address)")


def _recorded_files(run_dir: Path) -> list[str]:
    """What a run recorded in ``run_dir`` after its ``config.toml`` (written before them): its
    tables, summary and checkpoints; nothing when it stopped during its start-up."""
    from fedmtl.results import checkpoint_files

    found = [name for name in ("metrics.csv", "rounds.csv", "summary.json") if (run_dir / name).is_file()]
    return found + (["checkpoints"] if checkpoint_files(run_dir) else [])


def plan_resume(run_dir: str | Path, rounds: int | None = None, *, force: bool = False,
                force_hint: str = "--force resumes anyway",
                checking: Checking | None = None, heads_on_nodes: bool = False, restart: bool = True) -> Resumption:
    """Check that the run in ``run_dir`` can continue exactly, to ``rounds`` rounds (default:
    its own), and return what it continues from.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (it holds ``config.toml`` and ``checkpoints/``).
    rounds : int, optional
        Extend the run to this many rounds; its ``config.toml`` then records them.
    force : bool
        Resume despite the problems :func:`fedmtl.results.resume_problems` lets ``--force``
        override (the run takes the checkpoint's identity, or the heads it lacks start anew).
    force_hint : str
        Added to a refusal that ``force`` would override: how the caller forces.
    checking : callable, optional
        Given a description, a context manager shown while the heads are checked (a large
        federation's take seconds).
    heads_on_nodes : bool
        The clients keep their heads on their own hosts (a deployment's SuperNodes, each with
        its ``head-store-dir``), not in the run folder: they are not checked here. Each client
        checks its own when it is called: the server names the heads its last training left
        (the checkpoint's ledger), and a client whose heads are missing or replaced refuses
        in one line (:func:`fedmtl.clients.app.heads_refusal`), an error the run reports.
    restart : bool
        A run without a checkpoint may start again from round 1 in its folder
        (:attr:`Resumption.restart`); ``False`` refuses it (a ``flwr run`` submission that
        resumes continues from a checkpoint only).

    Raises
    ------
    ResumeRefused
        The folder is not a run folder, the run cannot be resumed, or not exactly.
    ValueError
        ``rounds`` is fewer than the run's, or not a whole number.
    fedmtl.results.CheckpointError
        No checkpoint loads.
    fedmtl.folder_lock.RunFolderBusy
        Another process writes the run folder.
    """
    from fedmtl.folder_lock import refuse_if_busy
    from fedmtl.results import (
        check_extension,
        checkpoint_files,
        extend_run,
        finished_table_problems,
        load_checkpoint,
        record_forced_resume,
        unfinished_outputs,
    )

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        from fedmtl.results import RUN_MARKER

        if (run_dir / RUN_MARKER).is_file() and (recorded := _recorded_files(run_dir)):
            raise ResumeRefused(f"'{run_dir}' has lost its config.toml but holds its run's {', '.join(recorded)}: "
                                "put the config.toml back (the run's own) to resume it")
        if (run_dir / RUN_MARKER).is_file():
            raise ResumeRefused(f"'{run_dir}' holds no config.toml: its run stopped during its start-up, before "
                                f"recording anything; run the config again (--out {run_dir} reuses the folder)")
        raise ResumeRefused(f"'{run_dir}' is not a run folder (no config.toml)")
    cfg = load_run_config(run_dir)
    rounds = cfg.run.rounds if rounds is None else rounds
    check_extension(cfg.run.rounds, rounds)
    why = unresumable(cfg)
    if why:
        raise ResumeRefused(f"cannot resume '{run_dir}': {why}")
    if not checkpoint_files(run_dir):
        plan = _plan_restart(run_dir, cfg, rounds)
        if plan.restart is not None and not restart:
            raise ResumeRefused(f"cannot resume '{run_dir}': it has no checkpoint to continue from; submit its "
                                "config.toml again")
        return plan
    checkpoint, skipped = load_checkpoint(run_dir)
    if int(checkpoint["round"]) >= rounds and (run_dir / "summary.json").is_file():
        if damaged := finished_table_problems(run_dir, checkpoint):
            raise ResumeRefused(f"cannot resume '{run_dir}': it finished all {checkpoint['round']} rounds, but "
                                f"{'; '.join(damaged)}; its results are not whole and no resume writes them again: "
                                "run its config.toml again into another folder")
        return Resumption(cfg, checkpoint, finished=True, skipped=skipped, unfinished=unfinished_outputs(run_dir, cfg))
    refuse_if_busy(run_dir)
    forced = _settle_problems(run_dir, cfg, checkpoint, force, force_hint, checking, heads_on_nodes)
    cfg, extended = extend_run(run_dir, cfg, rounds, int(checkpoint["round"]))  # config.toml records them
    if forced:  # the run's record of what --force let go (summary.json's provenance lists it)
        record_forced_resume(run_dir, int(checkpoint["round"]), forced, checkpoint.get("plugins"))
    return Resumption(cfg, checkpoint, skipped=skipped, forced=forced, extended=extended)


def _plan_restart(run_dir: Path, cfg: ExperimentConfig, rounds: int) -> Resumption:
    """A run folder without a checkpoint (stopped during its start-up or first round, or before
    its first checkpoint): the run starts again from round 1 with its own config, in its folder,
    whose files of the run are deleted first (:func:`fedmtl.results.reset_run_dir`; the new run
    computes them again, the same, as the seeds are). Refused for a folder fedmtl did not make,
    and when the run's heads live outside its folder (they are not the folder's to delete)."""
    from fedmtl.folder_lock import refuse_if_busy
    from fedmtl.results import head_store_root, written_by_run

    if (run_dir / "summary.json").is_file():  # finished, though without a checkpoint: never deleted
        if rounds == cfg.run.rounds:
            return Resumption(cfg, None, finished=True)
        raise ResumeRefused(f"'{run_dir}' finished without a checkpoint to continue from: run its config.toml "
                            f"again with run.rounds={rounds}")
    if why := _restart_refusal(run_dir, cfg):  # before the lock, which makes the marker
        raise ResumeRefused(f"'{run_dir}' has no checkpoint, and {why}")
    refuse_if_busy(run_dir)
    written = written_by_run(run_dir, head_store_root(cfg, run_dir).resolve())
    note = f"'{run_dir}' has no checkpoint: the run starts again from round 1 in it" + (
        f" (deleting its {', '.join(written)} first)" if written else "")
    return Resumption(cfg.with_values(run={"rounds": rounds}), None, restart=note)


def _restart_refusal(run_dir: Path, cfg: ExperimentConfig) -> str | None:
    """Why a folder without a checkpoint is not started again from round 1 (``None``: it is):
    fedmtl did not make it, a ``flwr run`` submission made it (a deployment's clients and heads
    are on other hosts), or its heads live outside it (they are not the folder's to delete)."""
    from fedmtl.results import FLOWER_RUN_FILE, RUN_MARKER, head_store_root

    if run_dir.is_symlink() or not (run_dir / RUN_MARKER).is_file():
        return f"is not a run folder fedmtl made (no {RUN_MARKER}): nothing to resume"
    if (run_dir / FLOWER_RUN_FILE).is_file():
        return (f"was submitted with flwr run (Flower run {(run_dir / FLOWER_RUN_FILE).read_text().strip()}): "
                "submit its config.toml again")
    heads = head_store_root(cfg, run_dir).resolve()
    if heads == run_dir.resolve() or not heads.is_relative_to(run_dir.resolve()):
        return (f"its heads are not kept in a folder of their own inside it ({heads}): run its config.toml again "
                "in a new folder")
    return None


def clear_for_restart(run_dir: Path, cfg: ExperimentConfig) -> list[str]:
    """Delete what the run of ``cfg`` wrote in ``run_dir`` (:func:`fedmtl.results.reset_run_dir`,
    its head store included), holding the folder's lock; return the names deleted."""
    from fedmtl.folder_lock import holding
    from fedmtl.results import head_store_root, reset_run_dir

    with holding(run_dir, join=True):  # within the resume's hold
        return reset_run_dir(run_dir, head_store_root(cfg, run_dir))


def not_resumable(run_dir: Path) -> str | None:
    """Why ``fedmtl run --resume RUN_DIR`` refuses the folder whatever is fixed (the rules of
    :func:`plan_resume` that need no lock or checkpoint check), ``None`` when it can continue
    the run, or start it again when it has no checkpoint. Advice printed after a stop names the
    resume only when this is ``None``."""
    from fedmtl.results import checkpoint_files
    from fedmtl.validation import load_config

    if not (run_dir / "config.toml").is_file():
        return "it holds no config.toml"
    try:
        cfg = load_config(run_dir / "config.toml")
    except Exception as error:  # noqa: BLE001 - any unreadable config refuses the resume
        return f"its config.toml does not load ({type(error).__name__})"
    if why := unresumable(cfg):
        return why
    if checkpoint_files(run_dir) or (why := _restart_refusal(run_dir, cfg)) is None:
        return None
    return f"it has no checkpoint, and {why}"


def _settle_problems(run_dir: Path, cfg: ExperimentConfig, checkpoint: dict[str, Any], force: bool,
                     force_hint: str, checking: Checking | None, heads_on_nodes: bool = False) -> list[ResumeProblem]:
    """Refuse a resume that would not be exact; with ``force``, let go of what the forced
    problems name (their clients' heads; a missing run identity is taken from the checkpoint)
    and return those problems."""
    from fedmtl.results import forget_heads, read_run_id, resume_problems, write_run_id

    shown = checking or (lambda _: contextlib.nullcontext())
    with shown(f"checking checkpoint round {checkpoint.get('round')} and the clients' heads before resuming ..."):
        problems = resume_problems(run_dir, cfg, checkpoint, heads=not heads_on_nodes)
    refused = [p for p in problems if not (force and p.forced)]
    if refused:
        hint = f"; {force_hint}" if all(p.forced for p in refused) else ""
        raise ResumeRefused(f"cannot resume '{run_dir}': " + "; ".join(p.message for p in refused) + hint)
    forget_heads(checkpoint, [c for p in problems for c in p.clients])  # the server then checks them no more
    if problems and not read_run_id(run_dir):
        written_by = checkpoint.get("run-id")
        write_run_id(run_dir, written_by if isinstance(written_by, str) else None)
    return problems
