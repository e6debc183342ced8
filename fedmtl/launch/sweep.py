"""Sweeps: one config, a grid of overrides and several seeds, each run in its own folder.

``fedmtl sweep CONFIG --grid 'server.weighting=[fedavg,qffl]' --seeds 3 --out runs/study``
(or Hydra's form, ``--grid server.weighting=fedavg,qffl``: :func:`parse_grid_option`)
runs every combination of the grid values for seeds ``run.seed, run.seed + 1, …`` and writes::

    runs/study/
      sweep.json                              the grid, the seeds and every run's status
      server.weighting=fedavg/seed-0/         a run folder (see fedmtl.results)
      server.weighting=qffl/seed-0/
      ...

Running the same command again resumes: finished runs (those with a ``summary.json``) whose
config is the one the sweep now asks for are skipped, a federated run that was interrupted
continues from its latest checkpoint (as ``fedmtl run --resume``, with the same checks: a resume
that would not be exact, or whose ``config.toml`` is no longer the sweep's config of that run, is
refused and the run recorded as failed, :func:`check_resume`), and any other unfinished folder is
cleared and run again, but only one that fedmtl created (it holds ``.fedmtl-run``,
:data:`fedmtl.results.RUN_MARKER`); a sweep never deletes or writes through a symbolic link.
Every combination is validated before the first run starts, so a bad value fails at once, not
hours in.

A finished run is reused only when its config is the sweep's config of that run (its
``summary.json``'s ``config_fingerprint``, else its ``config.toml``, compared on every key but
:data:`fedmtl.results.RESUME_FREE_KEYS`: names, folders and where Ray runs). When one differs
(``--set run.rounds=3`` on a sweep run with 2 rounds), the sweep refuses before running
anything, one line per such run naming the keys that differ (``run.rounds: 2 → 3``,
:class:`ChangedRunsError`); ``--rerun-changed`` (``rerun_changed=True``) runs them again, each
folder deleted first under the same rule as an unfinished one (only a folder fedmtl created).

``--jobs N`` (``run_sweep(..., jobs=N)``) runs up to N runs at once, each in a worker process
(:mod:`fedmtl.launch.sweep_jobs`), for sweeps of in-process runs (``engine.backend =
"inprocess"``, :func:`check_jobs`); this process alone prints, writes ``sweep.json`` and moves
run folders, and the results are those of one job.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import numbers
import re
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.atomic import write_bytes
from fedmtl.config import ConfigError, ExperimentConfig, parse_override
from fedmtl.labels import format_value, toml_inline
from fedmtl.launch.simulation import shared_engine
from fedmtl.one_line import counted, error_and_traceback, one_line, shell_path
from fedmtl.progress import format_duration, sweep_eta
from fedmtl.resumption import ResumeRefused
from fedmtl.validation import load_config

MAX_SEEDS = 100_000
"""The most seeds per combination of a sweep (each is a run folder)."""

MANIFEST = "sweep.json"


def _split_top_level(body: str) -> list[str]:
    """Split ``a, {x = 1, y = 2}, [1, 2], "c,d"`` at the commas outside brackets, braces and quotes."""
    items, depth, quote, current = [], 0, "", ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quote:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    return items


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """Parse one ``--grid``: ``key=v1,v2,...`` (as Hydra's) or ``key=[v1, v2, ...]``.

    Values are TOML (``0.5,1``, ``{q = 1},{q = 5}``, ``[{q = 1}, {q = 5}]``); bare words are
    strings (``fedavg,qffl``). Commas inside brackets, braces or quotes do not split
    (``'faults.corrupt-kinds="nan,inf",huge'`` is two values). A single value is a one-value
    grid.

    Raises
    ------
    ConfigError
        When the text is not ``key=values``, or a value or the list is empty.
    """
    if "=" not in text:
        raise ConfigError(f"--grid expects key=v1,v2,... or key=[v1,v2,...], got '{text}'")
    key, raw = (part.strip() for part in text.split("=", 1))
    if "." not in key:
        raise ConfigError(f"--grid key '{key}' must be 'section.key', e.g. 'server.weighting'")
    unquoted = re.sub(r'"[^"]*"|\'[^\']*\'', "", raw)
    for opening, closing in ("[]", "{}"):
        if unquoted.count(opening) > unquoted.count(closing):
            raise ConfigError(f"--grid '{text}': a '{opening}' is not closed (key=[v1, v2] or key=v1,v2)")
    items = _split_top_level(raw)
    if len(items) == 1 and raw.startswith("[") and raw.endswith("]"):  # the list form
        try:
            values = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            items = _split_top_level(raw[1:-1])
            items = items[:-1] if len(items) > 1 and items[-1] == "" else items  # TOML allows [a, b,]
            values = [] if items == [""] else _grid_values(key, text, items)
    else:
        values = _grid_values(key, text, items)
    if not values:
        raise ConfigError(f"--grid {key}: the list of values is empty")
    return key, values


def _grid_values(key: str, text: str, items: list[str]) -> list[Any]:
    """Each item as a ``--set`` value (TOML; a bare word is a string)."""
    if "" in items and len(items) > 1:
        raise ConfigError(f"--grid '{text}': an empty value; separate values with one comma (key=v1,v2)")
    return [parse_override(f"{key}={item}")[1] for item in items]


def _slug(text: str) -> str:
    """A folder name for ``text``: safe characters only, short, unique by a hash if altered."""
    safe = re.sub(r"[^A-Za-z0-9.=,+_-]+", "_", text).strip("_") or "default"
    if safe != text or len(safe) > 80:
        digest = hashlib.sha1(text.encode()).hexdigest()[:6]
        safe = f"{safe[:72]}-{digest}"
    return safe


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "+".join(_compact(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def folder_name(values: dict[str, Any]) -> str:
    """The folder of a combination: ``weighting=qffl__params=q=1`` (short keys unless ambiguous)."""
    if not values:
        return "default"
    short = [k.split(".")[-1] for k in values]
    keys = short if len(set(short)) == len(short) else list(values)
    return _slug("__".join(f"{k}={_compact(v)}" for k, v in zip(keys, values.values(), strict=True)))


@dataclass
class SweepRun:
    """One run of a sweep.

    Attributes
    ----------
    values : dict[str, Any]
        The grid's values for this run (``{key: value}``).
    seed : int
        ``run.seed`` of the run.
    folder : str
        The run folder, relative to the sweep folder.
    status : str
        ``pending``, ``done``, ``failed`` or ``skipped`` (finished earlier, with the same config).
    duration_s : float or None
        Seconds the run took (this invocation).
    error : str
        A failed run's error in one line (``DataError: ...``; :func:`failure`).
    traceback : str
        The end of a failed run's traceback (its last 2,000 characters), for a bug report.
    changed : list[str]
        For a run found finished with another config: ``"key: old → new"`` per key that differs
        (:func:`finished_changes`); it is run again only with ``rerun_changed``.
    """

    values: dict[str, Any]
    seed: int
    folder: str
    status: str = "pending"
    duration_s: float | None = None
    error: str = ""
    changed: list[str] = field(default_factory=list)
    traceback: str = ""

    @property
    def label(self) -> str:
        """``key=value key=value`` of the grid values (``default`` for an empty grid)."""
        return " ".join(f"{k}={format_value(v)}" for k, v in self.values.items()) or "default"


@dataclass
class Sweep:
    """A planned sweep: the base config, the grid, the seeds and the runs; ``rerun_changed``:
    run again the runs found finished with another config (else the sweep refuses them)."""

    config: str | None
    overrides: list[str]
    grid: dict[str, list[Any]]
    seeds: list[int]
    out: Path
    runs: list[SweepRun] = field(default_factory=list)
    rerun_changed: bool = False

    def overrides_of(self, run: SweepRun) -> list[str]:
        """The ``--set`` strings that make ``run``'s config from the base config."""
        grid = [f"{k}={toml_inline(v)}" for k, v in run.values.items()]
        return [*self.overrides, *grid, f"run.seed={run.seed}",
                f"run.name={folder_name(run.values)}-seed-{run.seed}"]

    def config_of(self, run: SweepRun) -> ExperimentConfig:
        """The validated config of ``run``."""
        return load_config(self.config, self.overrides_of(run))

    def write_manifest(self) -> None:
        """Write ``sweep.json`` atomically."""
        data = {
            "config": self.config, "overrides": self.overrides, "grid": self.grid,
            "seeds": self.seeds, "runs": [asdict(r) for r in self.runs],
        }
        write_bytes(self.out / MANIFEST, json.dumps(data, indent=2).encode())


GRID_SET_KEYS = {"run.seed": "the seeds are --seeds (seeds=): run.seed, run.seed + 1, ... of the base config",
                 "run.name": "the sweep names each run after its folder"}
"""Config keys a sweep sets for every run itself, so a grid over them would be ignored."""


def check_grid_keys(grid: dict[str, list[Any]]) -> None:
    """Refuse a grid over a key the sweep sets itself (:data:`GRID_SET_KEYS`).

    Raises
    ------
    ConfigError
        Naming the key and what to do instead.
    """
    for key in grid:
        if key in GRID_SET_KEYS:
            raise ConfigError(f"--grid {key}: a sweep sets {key} for every run itself, so the grid's values would "
                              f"be ignored; {GRID_SET_KEYS[key]}")


def check_sweep_folder(out: Path) -> None:
    """Refuse a sweep folder that is a file or a run's folder (a sweep's runs would be written
    inside a run, where neither ``fedmtl report`` nor ``fedmtl.load_runs`` looks for them).

    Raises
    ------
    ConfigError
        Naming the folder.
    """
    from fedmtl.results import RUN_MARKER

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file: give the sweep a folder")
    if (out / RUN_MARKER).exists() or (out / "summary.json").exists():
        raise ConfigError(f"--out '{out}' is a run's folder: give the sweep a folder of its own")


def plan_sweep(
    config: str | Path | None, grid: dict[str, list[Any]], seeds: int, out: str | Path,
    overrides: list[str] | None = None,
    *,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    skip_invalid: bool = False,
    report: Callable[[str], None] = print,
    rerun_changed: bool = False,
) -> Sweep:
    """Expand the grid × seeds, validate every run's config and check the finished runs'
    configs (:func:`check_changed`).

    Parameters
    ----------
    config : str or Path, optional
        The base config file (``None``: the defaults).
    grid : dict[str, list]
        Values per key; every combination is run.
    seeds : int
        Seeds per combination: ``run.seed``, ``run.seed + 1``, ...
    out : str or Path
        The sweep folder.
    overrides : list[str], optional
        ``--set`` strings applied to every run.
    keep : callable, optional
        Keeps only the combinations (``{key: value}``) for which it returns ``True``.
    skip_invalid : bool
        Drop combinations whose config is invalid (each is reported) instead of failing.
    report : callable
        Receives the lines about skipped combinations.
    rerun_changed : bool
        Run again the runs found finished with another config than the sweep's (their folders
        replaced); else such a run fails the plan.

    Raises
    ------
    ConfigError
        Naming the run whose values are invalid (before anything runs), unless
        ``skip_invalid``; or when no combination is left.
    ChangedRunsError
        Without ``rerun_changed``, when a finished run's config differs (one line per run).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral):
        raise ConfigError(f"--seeds = {seeds!r}: must be a whole number of seeds")
    seeds = int(seeds)
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds = {seeds}: must be between 1 and {MAX_SEEDS:,} (seeds per combination)")
    check_grid_keys(grid)
    check_sweep_folder(Path(out))
    overrides = list(overrides or [])
    base = load_config(config, overrides)
    sweep = Sweep(str(config) if config is not None else None, overrides, dict(grid),
                  [base.run.seed + i for i in range(seeds)], Path(out), rerun_changed=rerun_changed)
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    for values in combos:
        if keep is not None and not keep(values):
            continue
        runs = [SweepRun(values, seed, f"{folder_name(values)}/seed-{seed}") for seed in sweep.seeds]
        if any(r.folder == runs[0].folder for r in sweep.runs):
            raise ConfigError(f"sweep run '{runs[0].label}': its folder '{folder_name(values)}' is another "
                              "combination's (a value listed twice in --grid?): list each value once")
        try:
            for run in runs:
                sweep.config_of(run)
        except ConfigError as exc:
            if not skip_invalid:
                raise ConfigError(f"sweep run '{runs[0].label}': " + "; ".join(str(exc).splitlines())) from None
            report(f"skipped invalid combination '{runs[0].label}': {str(exc).splitlines()[0]}")
            continue
        sweep.runs += runs
    if not sweep.runs:
        raise ConfigError("the sweep has no valid combination to run")
    check_changed(sweep, rerun_changed)
    return sweep


def is_finished(run_dir: Path) -> bool:
    """A run folder is finished when it has its ``summary.json``."""
    return (run_dir / "summary.json").is_file()


class DamagedRunsError(ConfigError):
    """Finished runs of a sweep whose ``summary.json`` is not a run's summary, or whose tables
    lost rows (one line per run)."""


def summary_problem(run_dir: Path) -> str | None:
    """Why a finished run's ``summary.json`` is not a run's summary (it does not parse, is not a
    table, or has no ``final`` table of per-task tables), or ``None`` when it is one."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot be read ({one_line(exc, 120)})"
    if not isinstance(summary, dict):
        return f"holds {type(summary).__name__}, not a table"
    final = summary.get("final")
    if not isinstance(final, dict) or not all(isinstance(stats, dict) for stats in final.values()):
        return "has no final table of per-task statistics"
    return None


def check_summaries(sweep: Sweep) -> None:
    """Refuse a sweep with a finished run whose ``summary.json`` is damaged (:func:`summary_problem`),
    or whose tables lack rows of the rounds its newest checkpoint holds
    (:func:`fedmtl.results.finished_table_problems`): the run would count as finished with
    results that are not whole.

    Raises
    ------
    DamagedRunsError
        One line per run, its file and what is wrong, and how to go on. Nothing was run, written
        or deleted.
    """
    from fedmtl.results import finished_table_problems

    damaged = []
    for run in sweep.runs:
        folder = sweep.out / run.folder
        if not is_finished(folder):
            continue
        if (problem := summary_problem(folder)) is not None:
            damaged.append(f"{run.folder}/summary.json: {problem}")
        elif tables := finished_table_problems(folder):
            damaged.append(f"{run.folder}: {'; '.join(tables)}")
    if damaged:
        raise DamagedRunsError(
            f"{len(damaged)} finished run(s) in '{sweep.out}' have a damaged summary.json or tables; nothing was "
            "run; put the files back, or delete the run's folder to run it again:\n"
            + "\n".join(f"  {line}" for line in damaged))


class ChangedRunsError(ConfigError):
    """Finished runs of a sweep ran another config than the sweep's now (one line per run)."""


SHOWN_CHANGES = 6
"""The most differing keys one line of :class:`ChangedRunsError` names."""
_UNSET = object()


def comparable_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The values of ``cfg`` that make its results: ``{"section.key": value}`` with each parameter
    table spread into its entries (``server.params.q``), without
    :data:`fedmtl.results.RESUME_FREE_KEYS` (names, folders, where Ray runs)."""
    from fedmtl.results import RESUME_FREE_KEYS

    out: dict[str, Any] = {}
    for section, values in cfg.to_nested().items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in RESUME_FREE_KEYS:
                continue
            if isinstance(value, dict):
                out.update({f"{name}.{k}": v for k, v in value.items()})
            else:
                out[name] = value
    return out


def describe_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key: old → new"`` for every key whose value differs (``unset`` for a key one side lacks)."""
    def shown(values: dict[str, Any], key: str) -> str:
        return format_value(values[key]) if key in values else "unset"

    return [f"{key}: {shown(before, key)} → {shown(now, key)}"
            for key in sorted(set(before) | set(now)) if before.get(key, _UNSET) != now.get(key, _UNSET)]


def finished_changes(cfg: ExperimentConfig, run_dir: Path) -> list[str]:
    """How the config a finished run ran with differs from ``cfg`` (:func:`describe_changes` of
    :func:`comparable_config`); ``[]`` when it does not.

    The run's ``summary.json`` records the fingerprint of its config
    (:func:`fedmtl.results.config_fingerprint`): equal to ``cfg``'s, nothing differs but, maybe,
    the text of a plugin file (``provenance.plugins``, :func:`fedmtl.results.plugin_changes`:
    a rule edited since computes other numbers). Otherwise (or for a run written before
    fingerprints) its ``config.toml`` is compared; one that is missing or no longer loads counts
    as a difference.
    """
    from fedmtl.plugins import plugin_digests
    from fedmtl.results import config_fingerprint, plugin_changes

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        recorded = summary.get("config_fingerprint")
        ran_plugins = summary.get("provenance", {}).get("plugins")
    except (OSError, ValueError, AttributeError):
        recorded, ran_plugins = None, None
    if recorded is not None and recorded == config_fingerprint(cfg):
        if not isinstance(ran_plugins, dict):
            return []
        return [f"{change} (the plugin's text changed since the run)"
                for change in plugin_changes(ran_plugins, plugin_digests(list(cfg.run.plugins)))]
    path = run_dir / "config.toml"
    if not path.is_file():
        return ["config.toml: missing (the config it ran is unknown)"]
    try:
        ran = load_config(path)
    except (ConfigError, OSError) as exc:
        return [f"config.toml: no longer loads ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"]
    return describe_changes(comparable_config(ran), comparable_config(cfg))


def check_changed(sweep: Sweep, rerun_changed: bool = False) -> list[SweepRun]:
    """Find the runs of ``sweep`` found finished with another config than the sweep's (their
    :attr:`SweepRun.changed` is set, every other run's emptied); return them.

    Raises
    ------
    ChangedRunsError
        Without ``rerun_changed``, when there is one: one line per run, its folder and the keys
        that differ, and how to go on. Nothing was run or written.
    """
    for run in sweep.runs:
        run_dir = sweep.out / run.folder
        run.changed = finished_changes(sweep.config_of(run), run_dir) if is_finished(run_dir) else []
    changed = [r for r in sweep.runs if r.changed]
    if changed and not rerun_changed:
        lines = [f"  {r.folder}: " + ", ".join(r.changed[:SHOWN_CHANGES])
                 + (f", and {len(r.changed) - SHOWN_CHANGES} more" if len(r.changed) > SHOWN_CHANGES else "")
                 for r in changed]
        raise ChangedRunsError(
            f"{len(changed)} finished run(s) in '{sweep.out}' ran another config than this sweep's; nothing was "
            "run; to run them again with the sweep's config (their folders are replaced): --rerun-changed; "
            "to keep them: another --out:\n"
            + "\n".join(lines))
    return changed


def resumable(cfg: ExperimentConfig, run_dir: Path) -> bool:
    """An interrupted federated run that ``fedmtl run --resume`` can continue."""
    from fedmtl.results import checkpoint_files
    from fedmtl.resumption import unresumable

    return unresumable(cfg) is None and (run_dir / "config.toml").is_file() and bool(checkpoint_files(run_dir))


class UnsafeFolderError(RuntimeError):
    """A run's folder is a symbolic link, or an unfinished folder fedmtl did not create."""


def check_resume(cfg: ExperimentConfig, run_dir: Path, checkpoint: dict[str, Any]) -> ExperimentConfig:
    """The config an interrupted run continues with (its ``config.toml``), once the resume is
    known to be exact: :func:`fedmtl.results.resume_problems` finds nothing (as for
    ``fedmtl run --resume``) and ``config.toml`` equals ``cfg``, the sweep's config of the run,
    but for :data:`fedmtl.results.RESUME_FREE_KEYS`.

    Raises
    ------
    ResumeRefused
        Naming the folder, what differs, and how to go on.
    """
    from fedmtl.results import config_changes, resume_config, resume_problems

    recorded = load_config(run_dir / "config.toml")
    problems = resume_problems(run_dir, recorded, checkpoint)
    changed = config_changes(resume_config(recorded), resume_config(cfg))
    if not problems and not changed:
        return recorded
    messages = [p.message for p in problems]
    if changed:
        messages.append(f"config.toml differs from the sweep's: {', '.join(changed)}")
        hint = f"; delete '{run_dir}' to run it again with the sweep's config"
    elif all(p.forced for p in problems):
        hint = f"; to continue it anyway: fedmtl run --resume {shell_path(run_dir)} --force, then this sweep again"
    else:
        hint = ""
    raise ResumeRefused(f"cannot resume '{run_dir}': " + "; ".join(messages) + hint)


def check_no_links(root: Path, run_dir: Path) -> None:
    """Fail when ``run_dir`` or a folder between it and ``root`` is a symbolic link.

    Raises
    ------
    UnsafeFolderError
        Naming the link.
    """
    path = run_dir
    while path != root and path != path.parent:
        if path.is_symlink():
            raise UnsafeFolderError(f"'{path}' is a symbolic link; a sweep never writes or deletes through one; "
                                    "remove the link")
        path = path.parent


def _check_owned(run_dir: Path, what: str) -> None:
    """Raise :class:`UnsafeFolderError` unless ``run_dir`` is a real folder fedmtl created."""
    from fedmtl.results import RUN_MARKER

    if run_dir.is_symlink():
        raise UnsafeFolderError(f"'{run_dir}' is a symbolic link; a sweep never deletes through one; remove the link")
    marker = run_dir / RUN_MARKER
    if marker.is_symlink() or not marker.is_file():
        raise UnsafeFolderError(f"'{run_dir}' holds {what} that fedmtl did not create (no {RUN_MARKER}); "
                                "nothing was deleted: move it away or delete it yourself")


def clear_unfinished(run_dir: Path, what: str = "an unfinished run") -> None:
    """Delete an unfinished run folder (or ``what`` it holds), only if fedmtl created it (it
    holds ``RUN_MARKER``).

    Raises
    ------
    UnsafeFolderError
        When ``run_dir`` is a link or lacks the marker (nothing is deleted).
    """
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    _check_owned(run_dir, what)
    from fedmtl.folder_lock import refuse_if_busy

    refuse_if_busy(run_dir)  # a process still writing it (a worker orphaned by a killed sweep)
    shutil.rmtree(run_dir)


def set_aside(run_dir: Path) -> Path:
    """Move a finished run of a changed config out of the way of its rerun (to
    ``<folder>.replaced``); :func:`put_back` restores it if the rerun does not finish.

    Raises
    ------
    UnsafeFolderError
        When ``run_dir`` is a link or lacks the marker, or an earlier set-aside copy is still
        there (nothing is moved).
    """
    _check_owned(run_dir, "a finished run of another config")
    aside = run_dir.with_name(run_dir.name + ".replaced")
    if aside.exists() or aside.is_symlink():
        raise UnsafeFolderError(f"'{aside}' is still there from an earlier rerun of '{run_dir}'; nothing was moved: "
                                "keep one of the two folders and delete the other")
    run_dir.rename(aside)
    return aside


def put_back(aside: Path, run_dir: Path) -> None:
    """Restore a run set aside by :func:`set_aside`, deleting what its rerun left in ``run_dir``."""
    clear_unfinished(run_dir, "the unfinished rerun")
    aside.rename(run_dir)


def execute_run(cfg: ExperimentConfig, run_dir: Path, quiet: bool) -> None:
    """Run one config into ``run_dir`` (a Ray simulation, or the centralized baseline);
    continue an interrupted federated run from its latest usable checkpoint when the resume is
    exact (:func:`check_resume`, else :class:`ResumeRefused`); clear any other unfinished
    folder first (:func:`clear_unfinished`). A new run stopped before it starts (its data
    cannot be built, the engine cannot start) leaves no folder."""
    from fedmtl.results import CheckpointError, create_run_dir, load_checkpoint

    if resumable(cfg, run_dir):
        from fedmtl.folder_lock import holding

        with holding(run_dir):  # from the checks to the run's end: no other process writes it between
            try:
                checkpoint, _ = load_checkpoint(run_dir)
            except CheckpointError as exc:  # its checkpoints are there but none loads: its rounds are kept
                raise ResumeRefused(f"cannot resume '{run_dir}': no checkpoint of it loads "
                                    f"({one_line(exc)}); delete '{run_dir}' to run it again from round 1") from None
            from fedmtl.launch.simulation import simulate

            simulate(check_resume(cfg, run_dir, checkpoint), run_dir, quiet=quiet, checkpoint=checkpoint)
            return
    clear_unfinished(run_dir)  # left by an interrupted run that cannot be continued
    create_run_dir(cfg, run_dir)
    if cfg.run.mode == "centralized":
        from fedmtl.training.centralized import run_centralized

        run_centralized(cfg, run_dir, quiet=quiet)
        return
    from fedmtl.data.checks import DataError
    from fedmtl.launch.simulation import EngineError, simulate
    from fedmtl.results import remove_unused_run_dir

    try:
        simulate(cfg, run_dir, quiet=quiet)
    except (EngineError, DataError):  # stopped before it started (as fedmtl.run): no folder left
        if remove_unused_run_dir(run_dir):
            with contextlib.suppress(OSError):  # its configuration's folder, made for it, while empty
                run_dir.parent.rmdir()
        raise


@shared_engine()  # the runs share one Ray instance
def run_sweep(
    sweep: Sweep,
    *,
    quiet_runs: bool = True,
    report: Callable[[str], None] = print,
    runner: Callable[[ExperimentConfig, Path, bool], None] = execute_run,
    rerun_changed: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    jobs: int = 1,
) -> Sweep:
    """Run every unfinished run of ``sweep`` in order; a failed run is recorded, not fatal. The
    federated runs share one Ray instance (:func:`fedmtl.launch.simulation.shared_engine`).

    Parameters
    ----------
    sweep : Sweep
        From :func:`plan_sweep`.
    quiet_runs : bool
        Hide each run's per-round lines (the sweep prints one line per run).
    report : callable
        Receives the progress lines.
    runner : callable
        Runs one config into a folder (:func:`execute_run`); with ``jobs > 1``, a function the
        workers can import by name.
    rerun_changed : bool, optional
        Run again the runs found finished with another config than the sweep's, each folder
        set aside first and put back if their rerun fails (:func:`set_aside`); default: ``sweep.rerun_changed``.
    progress : callable, optional
        Called with ``(runs done, runs to do, ETA text)`` before the first run and after each
        (:func:`fedmtl.progress.sweep_eta`; ``fedmtl sweep`` draws a bar with it on a terminal).
    jobs : int
        Runs at once, each in its own worker process (:mod:`fedmtl.launch.sweep_jobs`); above 1,
        every federated run must run in-process (``engine.backend = "inprocess"``,
        :func:`check_jobs`). The results are those of ``jobs = 1``.

    Raises
    ------
    ChangedRunsError
        Without ``rerun_changed``, when a finished run's config differs (:func:`check_changed`);
        raised before anything is run or written.
    ConfigError
        When ``jobs`` is below 1, or above 1 with a run on Ray (:func:`check_jobs`); raised
        before anything is run or written.
    RunFolderBusy
        When another sweep is running into the same folder (:func:`fedmtl.folder_lock.holding_sweep`).
    """
    check_jobs(sweep, jobs)
    sweep.out.mkdir(parents=True, exist_ok=True)
    from fedmtl.folder_lock import holding_sweep

    with holding_sweep(sweep.out):  # one sweep at a time in a folder, checked while held
        check_summaries(sweep)
        changed = check_changed(sweep, sweep.rerun_changed if rerun_changed is None else rerun_changed)
        return _run_sweep(sweep, jobs, quiet_runs, report, runner, progress, changed)


def _run_sweep(sweep: Sweep, jobs: int, quiet_runs: bool, report: Callable[[str], None],
               runner: Callable[[ExperimentConfig, Path, bool], None],
               progress: Callable[[int, int, str], None] | None, changed: list) -> Sweep:
    """:func:`run_sweep` once its checks passed and it holds its folder."""
    total = len(sweep.runs)
    todo = [r for r in sweep.runs if r.changed or not is_finished(sweep.out / r.folder)]
    for r in sweep.runs:
        r.status = "pending" if r in todo else "skipped"
    sweep.write_manifest()
    report(f"sweep: {counted(total, 'run')} ({counted(len(sweep.runs) // len(sweep.seeds), 'configuration')} × "
           f"{counted(len(sweep.seeds), 'seed')}), {total - len(todo)} already finished, {len(changed)} changed, "
           f"{len(todo)} to run → {sweep.out}" + (f", {jobs} at a time" if jobs > 1 else ""))
    started = time.monotonic()
    if progress is not None:
        progress(0, len(todo), sweep_eta(0, len(todo), []))
    if jobs > 1:
        _run_jobs(sweep, todo, jobs, quiet_runs, report, runner, progress)
    else:
        _run_each(sweep, todo, quiet_runs, report, runner, progress)
    failed = [r for r in sweep.runs if r.status == "failed"]
    report(f"sweep finished in {(time.monotonic() - started) / 60:.1f} min: "
           f"{total - len(failed)}/{total} runs finished" + (f", {len(failed)} failed" if failed else ""))
    return sweep


def check_jobs(sweep: Sweep, jobs: int) -> None:
    """Refuse ``jobs`` below 1, or above 1 when a federated run of ``sweep`` runs on Ray (Ray's
    clients already use every CPU; the workers of :mod:`fedmtl.launch.sweep_jobs` run the runs
    in-process, each with its share of the cores: :func:`share_cores`).

    Raises
    ------
    ConfigError
        One line naming the option or the key, and the fix.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral):
        raise ConfigError(f"--jobs = {jobs!r}: must be a whole number of runs at once")
    if jobs < 1:
        raise ConfigError(f"--jobs = {jobs}: must be at least 1")
    if jobs == 1:
        return
    for run in sweep.runs:
        cfg = sweep.config_of(run)
        if cfg.run.mode == "federated" and cfg.engine.backend != "inprocess":
            fix = ("drop engine.backend from --grid" if "engine.backend" in sweep.grid
                   else "add --set engine.backend=inprocess")
            raise ConfigError(
                f"--jobs {jobs} runs in-process runs only, but run '{run.folder}' has engine.backend = "
                f"'{cfg.engine.backend}' (Ray's clients already use every CPU); {fix}, or use --jobs 1")


def share_cores(cfg: ExperimentConfig, jobs: int) -> list[str]:
    """The override that gives an in-process run its share of the CPUs when ``jobs`` runs go at once.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's config.
    jobs : int
        Runs at once (``--jobs``).

    Returns
    -------
    list of str
        ``["engine.max-concurrent-clients=K"]`` with K = ⌊its clients at once / jobs⌋ (at least
        1); empty with one job, for a centralized run, or when the config sizes the engine itself
        (``max-concurrent-clients`` or ``num-cpus``) or its clients use GPUs. Not a
        result-changing key (:data:`fedmtl.results.RESUME_FREE_KEYS`): the run's numbers are the same.
    """
    engine = cfg.engine
    if (jobs <= 1 or cfg.run.mode != "federated" or engine.max_concurrent_clients or engine.num_cpus
            or engine.client_num_gpus):  # a GPU run keeps the count its GPUs allow
        return []
    return [f"engine.max-concurrent-clients={max(1, engine.clients_at_once() // jobs)}"]


def _start_line(run: SweepRun, number: int, count: int, eta: str) -> str:
    """``[2/8] lr=0.1 seed 0 ... (about 1 min left)``."""
    again = f" (changed: {', '.join(run.changed[:SHOWN_CHANGES])})" if run.changed else ""
    return f"[{number}/{count}] {run.label} seed {run.seed}{again} ... ({eta})"


def _prepare(sweep: Sweep, run: SweepRun) -> Path | None:
    """Check the run's folder (:func:`check_no_links`); set a changed run's finished folder aside
    (kept until the rerun finishes, put back if it does not); return where, if it was."""
    run_dir = sweep.out / run.folder
    check_no_links(sweep.out, run_dir)
    return set_aside(run_dir) if run.changed else None


def _finished(sweep: Sweep, run: SweepRun, number: int, count: int, done: int, eta: str,
              report: Callable[[str], None], progress: Callable[[int, int, str], None] | None) -> None:
    """Record a run's end in ``sweep.json``, report its line (``number`` of ``count``) and call
    ``progress`` (``done`` runs of ``count`` ended)."""
    sweep.write_manifest()
    outcome = (_outcome(sweep.out / run.folder) if run.status == "done"
               else f"FAILED: {run.error}")
    report(f"[{number}/{count}] {run.label} seed {run.seed}: {outcome} "
           f"({format_duration(run.duration_s)}" + (f"; {eta})" if eta else ")"))
    if progress is not None:
        progress(done, count, eta)


def _run_each(sweep: Sweep, todo: list[SweepRun], quiet_runs: bool, report: Callable[[str], None],
              runner: Callable[[ExperimentConfig, Path, bool], None],
              progress: Callable[[int, int, str], None] | None) -> None:
    """Run ``todo`` one after the other in this process (:func:`run_sweep` with one job)."""
    durations: list[float] = []
    for done, run in enumerate(todo, start=1):
        run_dir = sweep.out / run.folder
        report(_start_line(run, done, len(todo), sweep_eta(done - 1, len(todo), durations)))
        t0 = time.monotonic()
        aside: Path | None = None
        try:
            aside = _prepare(sweep, run)
            runner(sweep.config_of(run), run_dir, quiet_runs)
            run.status = "done"
            if aside is not None:
                shutil.rmtree(aside)
        except BaseException as exc:
            if aside is not None and aside.exists():
                put_back(aside, run_dir)
            if not isinstance(exc, Exception):
                raise  # Ctrl-C, SIGTERM: stop the sweep, the earlier run is back in its folder
            run.status = "failed"
            run.error, run.traceback = error_and_traceback(exc)
        run.duration_s = round(time.monotonic() - t0, 2)
        durations.append(run.duration_s)
        _finished(sweep, run, done, len(todo), done, sweep_eta(done, len(todo), durations), report, progress)


def _run_jobs(sweep: Sweep, todo: list[SweepRun], jobs: int, quiet_runs: bool, report: Callable[[str], None],
              runner: Callable[[ExperimentConfig, Path, bool], None],
              progress: Callable[[int, int, str], None] | None) -> None:
    """Run ``todo`` ``jobs`` at a time in worker processes (:class:`fedmtl.launch.sweep_jobs.WorkerPool`).

    This process alone prints, writes ``sweep.json`` and sets changed runs aside and back, as
    :func:`run_sweep` does with one job. The ETA counts ``jobs`` runs at once. On Ctrl-C or
    SIGTERM the workers are stopped first, then the changed runs in flight are put back; the
    interrupted runs continue from their checkpoints at the next invocation.
    """
    from fedmtl.launch.sweep_jobs import Job, WorkerPool

    if not todo:
        return
    count, durations = len(todo), []
    waiting = list(enumerate(todo, start=1))
    running: dict[int, tuple[SweepRun, Path | None]] = {}  # key: the run's number

    def eta(done: int) -> str:  # the runs go `jobs` at a time
        return sweep_eta(done, count, [d / min(jobs, count) for d in durations])

    def end(number: int, run: SweepRun, error: str, aside: Path | None, trace: str = "") -> None:
        run_dir = sweep.out / run.folder
        if not error:
            run.status = "done"
            if aside is not None:
                shutil.rmtree(aside)
        else:
            if aside is not None and aside.exists():
                put_back(aside, run_dir)
            run.status, run.error, run.traceback = "failed", error, trace
        durations.append(run.duration_s)
        _finished(sweep, run, number, count, len(durations), eta(len(durations)), report, progress)

    with WorkerPool(min(jobs, count), runner, quiet_runs) as pool:
        try:
            while waiting or running:
                while waiting and pool.idle:
                    number, run = waiting.pop(0)
                    report(_start_line(run, number, count, eta(len(durations))))
                    try:
                        overrides = [*sweep.overrides_of(run), *share_cores(sweep.config_of(run), jobs)]
                        aside = _prepare(sweep, run)
                    except Exception as exc:
                        run.duration_s = 0.0
                        error, trace = error_and_traceback(exc)
                        end(number, run, error, None, trace)
                        continue
                    running[number] = (run, aside)
                    pool.submit(Job(number, sweep.config, overrides, str(sweep.out / run.folder)))
                for outcome in pool.wait() if running else []:
                    run, aside = running.pop(outcome.key)
                    run.duration_s = outcome.duration_s
                    end(outcome.key, run, outcome.error, aside, outcome.traceback)
        except BaseException:
            pool.stop()  # before any folder is moved back: no worker writes in it any more
            for run, aside in running.values():
                if aside is not None and aside.exists():
                    put_back(aside, sweep.out / run.folder)
            raise


def _outcome(run_dir: Path) -> str:
    """``left 90.1% (worst 10% 80.2%)  right …`` from a finished run's summary."""
    from fedmtl.results import read_summary

    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError):
        return "finished (no readable summary.json)"
    parts = []
    for task, stats in summary["final"].items():
        scale, unit = (100.0, "%") if stats["metric"] == "accuracy" else (1.0, "")
        parts.append(f"{task} {scale * stats['mean']:.1f}{unit} (worst 10% {scale * stats['worst10']:.1f}{unit})")
    return "  ".join(parts) or "finished"


def load_sweep(folder: str | Path) -> dict[str, Any]:
    """Read a sweep folder's ``sweep.json``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"'{folder}' is not a sweep folder (no {MANIFEST})")
    return json.loads(path.read_text())
