"""fedmtl from Python: run an experiment or a sweep and read the results as pandas objects.

>>> import fedmtl
>>> result = fedmtl.run("configs/smoke.toml", overrides=["run.rounds=1"], out="/tmp/smoke")
>>> result.summary["final"]                      # doctest: +SKIP
>>> frame = fedmtl.load_runs(["/tmp/smoke", "/tmp/other"])  # doctest: +SKIP

A config is a TOML file (or a shipped config's name), a nested ``{section: {key: value}}``
dict, or an :class:`~fedmtl.config.ExperimentConfig`; ``overrides`` are the command line's
``--set`` strings. Every call leaves the caller's process as it found it: environment
variables (what importing Ray and Flower set included), the ``flwr``, ``ray``, ``fedmtl`` and
root loggers, the log-record factory and the working directory
(:func:`fedmtl.launch.simulation.preserved_caller`), so a notebook can run many experiments
one after the other. ``docs/python.md`` is the guide.

This module is part of the composition root (it launches simulations); ``import fedmtl``
does not import it until one of its names is used.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w

from fedmtl.config import ConfigError, ExperimentConfig, apply_override, parse_override
from fedmtl.plugins import resolve_plugin_files
from fedmtl.validation import build_config, load_config, unresolved_values

ConfigLike = str | Path | Mapping[str, Any] | ExperimentConfig
"""What :func:`run` and :func:`sweep` accept as a config."""

__all__ = ["RunResult", "SweepResult", "load_runs", "make_config", "resume", "run", "sweep"]


# -- results ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """A run folder and what it holds, read on first use.

    Attributes
    ----------
    folder : Path
        The run folder (absolute).
    """

    folder: Path

    def __post_init__(self) -> None:
        folder = _folder("folder", self.folder)
        if folder is None:
            raise TypeError("folder: expected a run folder (str or Path), got None")
        self.folder = folder.resolve()

    @functools.cached_property
    def config(self) -> ExperimentConfig:
        """The resolved config the run recorded (``config.toml``)."""
        return load_config(self.folder / "config.toml")

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        """``metrics.csv``: one row per round, client, task, split and metric (a tidy frame)."""
        from fedmtl.parquet import read_table

        return read_table(self.folder, "metrics")

    @functools.cached_property
    def rounds(self) -> pd.DataFrame:
        """``rounds.csv``: one row per round (cross-client statistics, aggregation, timings)."""
        from fedmtl.parquet import read_table

        return read_table(self.folder, "rounds")

    @functools.cached_property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: the final statistics per task, provenance, timings (a statistic
        that was not finite, written as ``null``, is NaN here: :func:`fedmtl.results.read_summary`)."""
        from fedmtl.results import read_summary

        return read_summary(self.folder)

    @functools.cached_property
    def participation(self) -> pd.DataFrame | None:
        """``participation.csv`` (``None`` when the run did not record it)."""
        from fedmtl.results import read_participation

        return read_participation(self.folder)


@dataclass
class SweepResult:
    """A sweep folder and its runs.

    Attributes
    ----------
    folder : Path
        The sweep folder (``sweep.json`` and one folder per run).
    plan : fedmtl.launch.sweep.Sweep
        The grid, the seeds and every run with its status (``done``, ``skipped``: finished
        earlier with the same config, ``failed`` with its ``error``).
    """

    folder: Path
    plan: Any

    @property
    def runs(self) -> list[RunResult]:
        """The finished runs, in grid × seed order."""
        return [RunResult(self.folder / r.folder) for r in self.plan.runs if r.status in ("done", "skipped")]

    @property
    def failed(self) -> list[Any]:
        """The runs that failed (:class:`fedmtl.launch.sweep.SweepRun`, with ``error``)."""
        return [r for r in self.plan.runs if r.status == "failed"]

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        """Every finished run's metrics in one frame (:func:`load_runs`)."""
        return load_runs(self.folder)


# -- configs ------------------------------------------------------------------------------------
def override_list(overrides: Iterable[str] | None) -> list[str]:
    """``overrides`` as a list of ``"section.key=value"`` strings.

    Raises
    ------
    ConfigError
        For a single string (it would be read one character at a time) or an entry that is
        not a string, saying what to pass instead.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str | bytes):
        raise ConfigError(f"overrides: expected a list of 'section.key=value' strings, got the string "
                          f"{overrides[:60]!r}; write [{overrides[:60]!r}]")
    try:
        items = list(overrides)
    except TypeError:
        raise ConfigError(f"overrides: expected a list of 'section.key=value' strings, got a "
                          f"{type(overrides).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"overrides: every entry is a 'section.key=value' string; got {item!r} "
                              f"({type(item).__name__})")
    return items


def grid_lists(grid: Mapping[str, Iterable[Any]] | None) -> dict[str, list[Any]]:
    """A sweep's ``grid`` as ``{key: [values]}``.

    Raises
    ------
    ConfigError
        When it is not a mapping of keys to lists of values, saying what to pass instead.
    """
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"grid: expected a dict of 'section.key' to a list of values, got a {type(grid).__name__}")
    out = {}
    for key, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise ConfigError(f"grid: {key!r} maps to {values!r}, not a list of values; "
                              f"write {{{key!r}: [{values!r}]}}")
        out[str(key)] = list(values)
    return out


def _with_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    values = copy.deepcopy(values)
    for text in overrides:
        apply_override(values, *parse_override(text))
    return values


def make_config(config: ConfigLike | None = None, overrides: Iterable[str] | None = None) -> ExperimentConfig:
    """The validated config of ``config`` with ``overrides`` applied.

    Parameters
    ----------
    config : str, Path, dict or ExperimentConfig, optional
        A TOML file or a shipped config's name (as ``fedmtl run`` takes), nested values
        ``{"run": {"rounds": 2}, ...}``, or a config object; ``None``: the defaults.
    overrides : iterable of str, optional
        ``"section.key=value"`` strings (``--set``), applied in order.

    Raises
    ------
    ConfigError
        One line per bad key or value (a plugin that does not import included).
    """
    overrides = override_list(overrides)
    if config is None or isinstance(config, str | Path):
        return load_config(config, overrides)
    if isinstance(config, ExperimentConfig):  # checked in full again: model_copy(update=...) checks nothing
        config = config.to_nested()
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a file, a dict or an ExperimentConfig, got {type(config).__name__}")
    # a dict's relative plugin files are relative to the working directory
    return build_config(resolve_plugin_files(_with_overrides(dict(config), overrides), None))


# -- running ------------------------------------------------------------------------------------
def _folder(name: str, value: object) -> Path | None:
    """``value`` as a folder path (``None`` stays ``None``).

    Raises
    ------
    TypeError
        Naming the argument, when ``value`` is not a ``str`` or ``Path``.
    """
    if value is None:
        return None
    if not isinstance(value, str | Path):
        raise TypeError(f"{name}: expected a folder path (str or Path), got {type(value).__name__} {value!r}")
    return Path(value)


def _check_flags(**flags: object) -> None:
    """Refuse a flag argument that is not a bool (``quiet="no"`` would count as true).

    Raises
    ------
    TypeError
        Naming the argument and its value.
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")


def _check_counts(**counts: object) -> None:
    """Refuse a count argument that is not a whole number (a bool or ``"3"`` is not; ``None``
    passes, where the argument allows it).

    Raises
    ------
    TypeError
        Naming the argument and its value.
    """
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name}: expected a whole number (int), got {type(value).__name__} {value!r}")


def _execute(cfg: ExperimentConfig, run_dir: Path, quiet: bool, verbose: bool,
             checkpoint: dict[str, Any] | None = None) -> None:
    if cfg.run.mode == "centralized":
        from fedmtl.training.centralized import run_centralized

        run_centralized(cfg, run_dir, quiet=quiet)
    else:
        from fedmtl.launch.simulation import simulate

        simulate(cfg, run_dir, quiet=quiet, verbose=verbose, checkpoint=checkpoint)


def run(config: ConfigLike | None = None, overrides: Iterable[str] | None = None, out: str | Path | None = None,
        quiet: bool = True, verbose: bool = False) -> RunResult:
    """Run one experiment (a Ray simulation, or the centralized baseline) and return its results.

    Parameters
    ----------
    config : str, Path, dict or ExperimentConfig, optional
        See :func:`make_config`.
    overrides : iterable of str, optional
        ``--set`` strings, e.g. ``["run.rounds=3", "server.weighting=qffl"]``.
    out : str or Path, optional
        The run folder to create (absent or empty); default
        ``<run.output-dir>/<run.name>-<timestamp>``.
    quiet : bool
        No progress lines and no Ray or Flower log lines (warnings and errors still show).
    verbose : bool
        Show Flower's INFO logs.

    Returns
    -------
    RunResult
        The run folder, its config, metrics, rounds, summary and participation.

    Raises
    ------
    ConfigError
        An invalid config, before anything runs.
    FileExistsError
        ``out`` exists and is not empty.
    fedmtl.launch.simulation.EngineError
        Ray cannot host the run (the empty run folder is removed).
    fedmtl.data.checks.DataError
        The data cannot be built as configured (no partition fits the config, or a dataset's
        data does not fit what it declares), before the engine starts (the empty run folder
        is removed).
    Exception
        Whatever stopped the run (``fedmtl.server.strategy.ClientsFailed`` when too many
        clients failed, ``fedmtl.server.strategy.RuleFailed`` when a server rule raised; the run
        folder then holds the results so far and checkpoints).
    """
    from fedmtl.data.checks import DataError
    from fedmtl.launch.simulation import EngineError, preserved_caller
    from fedmtl.results import create_run_dir, remove_unused_run_dir

    _check_flags(quiet=quiet, verbose=verbose)
    cfg = make_config(config, overrides)
    run_dir = create_run_dir(cfg, _folder("out", out))
    with preserved_caller(quiet_engine=quiet and not verbose and cfg.run.mode == "federated"):
        try:
            _execute(cfg, run_dir, quiet, verbose)
        except (EngineError, DataError):
            remove_unused_run_dir(run_dir)
            raise
    return RunResult(run_dir)


def resume(folder: str | Path, quiet: bool = True, verbose: bool = False, *, rounds: int | None = None,
           force: bool = False) -> RunResult:
    """Continue an interrupted federated run from its newest usable checkpoint, with the config
    it recorded, when the resume is exact (as ``fedmtl run --resume``); a finished run is
    returned as it is. A run stopped before its first checkpoint starts again from round 1 in
    its folder (a ``UserWarning`` says so).

    Parameters
    ----------
    folder : str or Path
        The run folder.
    quiet, verbose : bool
        As for :func:`run`.
    rounds : int, optional
        Extend the run, finished or not, to this many rounds (as ``fedmtl run --resume RUN --set
        run.rounds=N``); its ``config.toml`` then records them. When the result may differ from
        a run of that many rounds from the start, a ``UserWarning`` says why.
    force : bool
        Resume despite what ``--force`` overrides (as ``fedmtl run --resume RUN --force``): a
        ``UserWarning`` names each such problem and what is done about it.

    Raises
    ------
    ValueError
        ``rounds`` is fewer than the run's.
    fedmtl.results.CheckpointError
        The run has checkpoints, and none loads.
    fedmtl.resumption.ResumeRefused
        The folder is not a run folder; the run is centralized or kept its heads in memory
        (``client.head-store = "context"``); or its identity, config, tables or heads do not
        match its checkpoint (one line saying what).
    fedmtl.folder_lock.RunFolderBusy
        Another process writes the run folder.
    """
    from fedmtl.folder_lock import holding_run

    _check_flags(quiet=quiet, verbose=verbose, force=force)  # rounds: checked with the run's config
    run_dir = Path(folder).resolve()
    with holding_run(run_dir):  # from the checks to the run's end: no other process writes it between
        return _plan_and_resume(run_dir, rounds, force, quiet, verbose)


def _plan_and_resume(run_dir: Path, rounds: int | None, force: bool, quiet: bool, verbose: bool) -> RunResult:
    """:func:`resume`'s checks (:func:`fedmtl.resumption.plan_resume`) and run."""
    from fedmtl.launch.simulation import preserved_caller
    from fedmtl.resumption import plan_resume

    plan = plan_resume(run_dir, rounds, force=force, force_hint="force=True resumes anyway")
    if plan.finished:
        if plan.unfinished:  # stopped while it wrote its last files, after its summary
            from fedmtl.results import write_unfinished_outputs

            warnings.warn(f"{run_dir} was stopped before writing {', '.join(plan.unfinished)}; writing them now",
                          UserWarning, stacklevel=2)
            write_unfinished_outputs(run_dir, plan.cfg)
        return RunResult(run_dir)
    for note in plan.skipped:
        warnings.warn(f"{note}; using the previous one", UserWarning, stacklevel=2)
    for problem in plan.forced:
        warnings.warn(f"force: {problem.message}: {problem.forced}", UserWarning, stacklevel=2)
    if plan.extended:
        warnings.warn(plan.extended, UserWarning, stacklevel=2)
    if plan.restart:
        from fedmtl.resumption import clear_for_restart

        warnings.warn(plan.restart, UserWarning, stacklevel=2)
        clear_for_restart(run_dir, plan.cfg)
    with preserved_caller(quiet_engine=quiet and not verbose):
        _execute(plan.cfg, run_dir, quiet, verbose, plan.checkpoint)
    return RunResult(run_dir)


def sweep(config: ConfigLike | None = None, grid: Mapping[str, Iterable[Any]] | None = None, seeds: int = 1,
          out: str | Path | None = None, overrides: Iterable[str] | None = None, quiet: bool = True,
          skip_invalid: bool = False, rerun_changed: bool = False, jobs: int = 1) -> SweepResult:
    """Run every combination of ``grid`` for ``seeds`` seeds (``fedmtl sweep``): finished runs
    with the same config are skipped, a failed run is recorded and the others go on.

    Parameters
    ----------
    config : str, Path, dict or ExperimentConfig, optional
        The base config (:func:`make_config`). A dict or a config object is written to
        ``<out>/base-config.toml``, which the sweep then reads: a dict as given, an object
        without its parameters at their defaults, so that a grid over a rule, dataset or method
        gives each value its own defaults.
    grid : mapping of str to list, optional
        Values per key, e.g. ``{"server.weighting": ["fedavg", "qffl"]}``.
    seeds : int
        Seeds per combination: ``run.seed``, ``run.seed + 1``, ...
    out : str or Path, optional
        The sweep folder; default ``<run.output-dir>/sweep-<run.name>``.
    overrides : iterable of str, optional
        ``--set`` strings applied to every run.
    quiet : bool
        No progress lines (the sweep's and the runs').
    skip_invalid, rerun_changed : bool
        As ``fedmtl sweep --skip-invalid`` and ``--rerun-changed``.
    jobs : int
        Runs at once, each in its own worker process, as ``fedmtl sweep --jobs``: every federated
        run must have ``engine.backend = "inprocess"``; the results are those of ``jobs = 1``.

    Returns
    -------
    SweepResult
        The sweep folder, its plan with every run's status, its finished runs and their metrics.
    """
    from fedmtl.launch.simulation import preserved_caller
    from fedmtl.launch.sweep import check_sweep_folder, plan_sweep, run_sweep

    _check_flags(quiet=quiet, skip_invalid=skip_invalid, rerun_changed=rerun_changed)
    _check_counts(seeds=seeds, jobs=jobs)
    overrides = override_list(overrides)
    base = make_config(config, overrides)
    folder = _folder("out", out) or Path(base.run.output_dir) / f"sweep-{base.run.name}"
    check_sweep_folder(folder)
    path: str | Path | None = config if config is None or isinstance(config, str | Path) else None
    base_file: Path | None = None  # a refused plan takes back the base config it wrote ...
    made: list[Path] = []  # ... the folders made for it ...
    before: bytes | None = None  # ... and the base config it replaced
    if path is None and config is not None:
        made = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        base_file = path = folder / "base-config.toml"
        before = path.read_bytes() if path.is_file() else None
        path.write_text(_base_toml(config, base, overrides))
        overrides = []
    report = (lambda line: None) if quiet else print
    try:
        planned = plan_sweep(path, grid_lists(grid), seeds, folder, overrides, skip_invalid=skip_invalid,
                             report=_skipped_warning if quiet else print, rerun_changed=rerun_changed)
    except BaseException:
        if base_file is not None:
            _take_back(base_file, before, made)
        raise
    with preserved_caller(quiet_engine=quiet):
        done = run_sweep(planned, quiet_runs=quiet, report=report, jobs=jobs)
    return SweepResult(folder.resolve(), done)


def _base_toml(config: Mapping[str, Any] | ExperimentConfig, base: ExperimentConfig, overrides: list[str]) -> str:
    """The ``base-config.toml`` of a sweep of ``config`` (``base``: it resolved with ``overrides``):
    the values a dict set, or an object's values but the parameters at their defaults, so that a
    grid over ``server.weighting`` or ``data.dataset`` gives each value its own defaults, as a
    config file does (:func:`fedmtl.validation.unresolved_values`)."""
    given = None if isinstance(config, ExperimentConfig) else _with_overrides(dict(config), overrides)
    return tomli_w.dumps(unresolved_values(base, given))


def _skipped_warning(line: str) -> None:
    """A quiet sweep's line on an invalid combination it skipped, as a warning (never lost)."""
    warnings.warn(line, UserWarning, stacklevel=3)


def _take_back(path: Path, before: bytes | None, made: list[Path]) -> None:
    """Put ``path`` back as it was (``before``; ``None``: absent) and remove the empty folders
    in ``made`` (innermost first)."""
    with contextlib.suppress(OSError):
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
        for folder in made:
            folder.rmdir()


# -- reading many runs ----------------------------------------------------------------------------
def _flat(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"params": {"seed": 1}}}`` -> ``{"data.params.seed": 1}``; lists become tuples."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every finished run at or under ``paths`` (run folders, sweep folders, or folders holding
    them, as ``fedmtl report`` takes) in one tidy frame.

    Parameters
    ----------
    paths : str, Path or iterable of them
        Run folders, sweep folders, or folders holding them.

    Returns
    -------
    pandas.DataFrame
        The rows of every run's ``metrics.csv`` (``round``, ``client``, ``task``, ``split``,
        ``metric``, ``value``), a ``run`` column (the run folder's absolute path, as
        :attr:`RunResult.folder`) and one column per config key
        of the run's ``config.toml`` (``run.seed``, ``server.weighting``,
        ``data.params.pairs-per-digit``, ...; a key a run does not have is missing there).
        Runs are in the order ``fedmtl report`` uses (the paths' order; a sweep's grid order).

    Raises
    ------
    FileNotFoundError
        A path that does not exist or holds no finished run.
    ValueError
        A run folder ``fedmtl report`` refuses (:func:`fedmtl.report.read_run`), naming its file:
        one whose files do not parse or disagree with each other.
    """
    from fedmtl.parquet import read_table
    from fedmtl.report import find_run_dirs, read_run

    given = paths
    if isinstance(paths, str | Path):
        paths = [paths]
    paths = list(paths) if isinstance(paths, Iterable) else []
    if not paths or not all(isinstance(p, str | Path) for p in paths):
        raise FileNotFoundError(f"load_runs: expected a run folder or a list of them, got {given!r}")
    frames = []
    for folder in find_run_dirs(list(paths)):
        read_run(folder)  # refuses, naming the file, what the report refuses
        metrics = read_table(folder, "metrics")
        config = _flat(tomllib.loads((folder / "config.toml").read_text()))
        metrics.insert(0, "run", str(Path(folder).resolve()))
        frames.append(metrics.assign(**{key: [value] * len(metrics) for key, value in config.items()}))
    return pd.concat(frames, ignore_index=True)
