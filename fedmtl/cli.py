"""The ``fedmtl`` command line.

Commands: ``run`` (a simulation or the centralized baseline), ``sweep`` (a grid × seeds of
runs, resumable), ``report`` (tables and figures over runs and sweeps), ``flwr-run`` (a run
through ``flwr run`` with its real final status checked), ``validate`` (print the resolved
config), ``plot`` (redraw a run's figures), ``list`` (registered names), ``data describe``
(a federation's per-client table and figure).

Config errors print one line per problem, ``error: <key> = <value>: <what is allowed>``,
and exit with code 2 before any work starts.

Importing this module imports neither the config schema nor torch, Flower, Ray, pandas or
matplotlib (``fedmtl --help`` starts in well under a second): each command imports what it
uses (``tests/test_cli_conventions.py`` checks it). A CONFIG argument is a file, or the name
of a shipped config (``quickstart``, ``studies/qffl_paper``: :mod:`fedmtl.shipped`). Help
texts are printed as written (:class:`LiteralHelp`), so bracketed examples stay.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import click
import typer

from fedmtl.one_line import shell_path

if TYPE_CHECKING:
    from fedmtl.config import ExperimentConfig

T = TypeVar("T")



class OneSuggestion(typer.core.TyperGroup):
    """A command group whose unknown command gets one suggestion: click (8.4 and later) adds
    its own ``Did you mean 'run'?`` to the one typer adds (``No such command 'runn'. Did you
    mean 'run'? Did you mean 'run'?``)."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            if getattr(error, "possibilities", None) and " Did you mean " in error.message:  # click says it too
                error.message = error.message.rsplit(" Did you mean ", 1)[0]
            raise


cli = typer.Typer(
    cls=OneSuggestion,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fedmtl: federated multi-task learning simulator with fair aggregation.",
)

EXTRA_ARGS = {"allow_extra_args": True}
"""Context settings of the commands with ``--set``: extra arguments reach the command, which
reports ``--set run.rounds 3`` (two arguments) by name (:func:`_check_sets`)."""

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: --set run.rounds=5 (one argument; repeatable)."),
]
ConfigArgument = Annotated[
    Path | None, typer.Argument(help="Experiment TOML file, or a shipped config's name (fedmtl list configs).")
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"fedmtl {version('fedmtl')}")
        except PackageNotFoundError:  # run from a checkout that is not installed
            from fedmtl import __version__

            typer.echo(f"fedmtl {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr and exit with ``code``."""
    for line in str(message).splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None) -> ExperimentConfig:
    from fedmtl.config import ConfigError
    from fedmtl.validation import load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


def _check_sets(ctx: typer.Context, sets: list[str] | None, config: Path | None = None) -> None:
    """Fail on a ``--set`` item without ``=``, naming it and the fix (``--set run.rounds 3``,
    two arguments, makes ``3`` an extra argument, or the CONFIG when none is given); fail on
    any other extra argument as click would."""
    extra = list(ctx.args)
    for item in sets or []:
        if "=" not in item and len(item.split()) == 2:  # --set 'run.rounds 3'
            key, value = item.split()
            fail(f"--set '{item}' has no '=': write --set {key}={value}")
        if "=" not in item:
            from fedmtl.shipped import resolve_config

            value = extra[0] if extra else (
                str(config) if config is not None and not resolve_config(config).exists() else "VALUE")
            example = " (e.g. --set run.rounds=3)" if value == "VALUE" else ""
            fail(f"--set '{item}' has no '=': key and value are one argument: --set {item.strip()}={value}{example}")
    if extra:
        fail(f"unexpected extra argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}")


def _shipped(config: Path) -> Path:
    """``config``, or the shipped config it names (:func:`fedmtl.shipped.resolve_config`)."""
    from fedmtl.shipped import resolve_config

    return resolve_config(config)


@cli.command(context_settings=EXTRA_ARGS)
def run(
    ctx: typer.Context,
    config: ConfigArgument = None,
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to create.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's and Flower's logs.")] = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue a killed run from its latest checkpoint (its own config); "
                                  "with --set run.rounds=N, extend a run (finished or not) to N rounds.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: resume even when the run's identity, config or "
                           "heads differ from its checkpoint's (says what it overrides).")
    ] = False,
) -> None:
    """Run an experiment: a Flower simulation (on Ray or in-process), or the centralized baseline.

    Examples:
      fedmtl run quickstart --set run.rounds=3
      fedmtl run --resume runs/smoke-<time> --set run.rounds=10   (10 rounds in all)
    """
    _check_sets(ctx, set_, config)
    if resume is not None:
        if out is not None:
            fail("--resume continues a run in its own folder; give no --out (copy the folder to resume a copy)")
        _resume(resume, config, set_, quiet, verbose, force)
        return
    if force:
        fail("--force goes with --resume RUN_DIR")
    cfg = _load(config, set_)
    from fedmtl.results import create_run_dir

    try:
        run_dir = _guarded(None, lambda: create_run_dir(cfg, out))
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    _guarded(run_dir, lambda: _header_and_run(cfg, run_dir, quiet, verbose, run_dir,
                                              _shipped(config) if config is not None else None))


def _header_and_run(cfg: ExperimentConfig, run_dir: Path, quiet: bool, verbose: bool, shown_dir: Path,
                    shown_config: Path | None, checkpoint: dict | None = None) -> None:
    """The run's header naming ``shown_dir`` and ``shown_config`` (unless ``quiet``), then the
    run: the centralized baseline, or a federated simulation (from ``checkpoint`` when resumed).
    Called within :func:`_guarded`, so a signal while the header prints is handled as during the
    run."""
    if not quiet:
        _header(cfg, shown_dir, shown_config)
    if cfg.run.mode == "centralized":
        from fedmtl.training.centralized import run_centralized

        run_centralized(cfg, run_dir, quiet=quiet)
    else:
        _simulate(cfg, run_dir, quiet, verbose, checkpoint)


def _header(cfg: ExperimentConfig, run_dir: Path, config: Path | None) -> None:
    """The run's header (:func:`fedmtl.progress.header_lines`) and, for a federated run, a
    line saying the engine is starting (it takes seconds)."""
    from fedmtl.progress import Progress, header_lines

    lines = header_lines(cfg, run_dir, config)
    if cfg.run.mode != "centralized":
        if cfg.engine.backend == "inprocess":
            lines.append("starting the clients ... (-v shows Flower's logs)")
        else:
            lines.append("starting Ray and the clients ... (-v shows Ray's and Flower's logs)")
    Progress(cfg.run.rounds).header(lines)


def _guarded(run_dir: Path | None, action: Callable[[], T], resume: str | None = None) -> T:
    """Run ``action`` (within ``run_dir``): SIGINT or SIGTERM stop it with the resume command and
    exit code 130 or 143 (:mod:`fedmtl.launch.interrupt`); an ``OSError`` (read-only folder, full
    disk; one with an ``errno``) ends in one line naming the path, and the resume command when a
    checkpoint exists (or ``resume``, when given), ``fedmtl plot`` when the run had finished
    (its figures failed), and no folder left when the run wrote nothing yet."""
    from fedmtl.data.checks import DataError
    from fedmtl.launch.interrupt import Stopped, finish_interrupted, finished, stop_on_signals

    try:
        with stop_on_signals():
            return action()
    except Stopped as stopped:
        finish_interrupted(stopped, run_dir, resume)
    except DataError as exc:  # a dataset's data does not fit what it declares (a plugin's)
        if run_dir is not None:
            from fedmtl.results import remove_unused_run_dir

            with contextlib.suppress(OSError):
                remove_unused_run_dir(run_dir)
        fail(str(exc), code=1)
    except OSError as exc:
        if exc.errno is None:  # raised by our code with its own message (FileExistsError, ...)
            raise
        from fedmtl.results import newest_checkpoint_round

        path = exc.filename2 if exc.filename2 is not None else exc.filename  # os.replace(temporary, path)
        what = f"cannot write {path}" if path is not None else "cannot write" + (
            f" in {run_dir}" if run_dir is not None else "")
        line = f"{what}: {exc.strerror or exc}"
        if resume is not None:
            line += f"; continue with: {resume}"
        elif run_dir is not None and finished(run_dir):
            line += f"; the run finished: draw its figures again with: fedmtl plot {shell_path(run_dir)}"
        elif run_dir is not None and newest_checkpoint_round(run_dir) is not None:
            from fedmtl.resumption import not_resumable

            if (why := not_resumable(run_dir)) is None:
                line += f"; continue with: fedmtl run --resume {shell_path(run_dir)}"
            else:
                line += f"; its results so far are in {run_dir}; a resume cannot continue it ({why})"
        elif run_dir is not None:
            from fedmtl.results import remove_unused_run_dir

            with contextlib.suppress(OSError):  # a run that wrote nothing leaves no folder to refuse its --out
                remove_unused_run_dir(run_dir)
            from fedmtl.resumption import not_resumable

            if run_dir.is_dir() and not_resumable(run_dir) is None:  # no checkpoint yet: it starts again from round 1
                line += f"; once the cause is fixed, start it again with: fedmtl run --resume {shell_path(run_dir)}"
        fail(line, code=1)
    raise AssertionError("unreachable")


def _simulate(cfg: ExperimentConfig, run_dir: Path, quiet: bool, verbose: bool, checkpoint: dict | None = None) -> None:
    """A federated run; a run stopped by failing clients ends with the reason and how to resume."""
    from fedmtl.folder_lock import RunFolderBusy
    from fedmtl.launch.simulation import EngineError, simulate
    from fedmtl.server.rounds import RuleFailed
    from fedmtl.server.strategy import ClientsFailed

    try:
        simulate(cfg, run_dir, quiet=quiet, verbose=verbose, checkpoint=checkpoint)
    except EngineError as exc:
        from fedmtl.results import remove_unused_run_dir

        if checkpoint is None:
            remove_unused_run_dir(run_dir)  # nothing ran: leave no empty run folder behind
        fail(str(exc))
    except (ClientsFailed, RuleFailed) as exc:
        fail(f"{exc}\n{failed_run_advice(run_dir, cfg.run.rounds)}", code=1)
    except RunFolderBusy as exc:
        fail(str(exc), code=1)


def failed_run_advice(run_dir: Path, rounds: int) -> str:
    """What to do about a run its clients failed: resume it, or, when it has no round left
    (its last checkpoint is of round ``rounds``), start it again or add rounds."""
    from fedmtl.results import newest_checkpoint_round
    from fedmtl.resumption import not_resumable

    where = f"the run stopped; its results and checkpoints are in {run_dir}; once the cause is fixed"
    if (why := not_resumable(run_dir)) is not None:
        return f"{where}, run its config again (a resume cannot continue it: {why})"
    if newest_checkpoint_round(run_dir) != rounds:
        return f"{where}, continue with: fedmtl run --resume {shell_path(run_dir)}"
    return (f"{where}, start it again (a resume has no round left to run), or add rounds: "
            f"fedmtl run --resume {shell_path(run_dir)} --set run.rounds={rounds + 1}")


def _resume(run_dir: Path, config: Path | None, overrides: list[str] | None, quiet: bool, verbose: bool,
            force: bool = False) -> None:
    """``fedmtl run --resume RUN_DIR``: the run's own config, its newest usable checkpoint, its
    identity and heads checked (:func:`fedmtl.resumption.plan_resume`). ``--set run.rounds=N``
    (the only ``--set`` it takes) extends the run to N rounds, finished or not; fewer rounds than
    the run's are refused. The run folder's ``config.toml`` then records N rounds."""
    if config is not None:
        fail("--resume continues a run with the config in its folder; give no CONFIG "
             "(--set run.rounds=N extends the run to N rounds)")
    for item in overrides or []:
        if item.split("=", 1)[0].strip() != "run.rounds":
            fail(f"--resume takes no --set but run.rounds=N (extend the run to N rounds); got --set {item}")
    # a folder without config.toml is refused by plan_resume, in one line that says why
    from fedmtl.config import ConfigError
    from fedmtl.folder_lock import RunFolderBusy
    from fedmtl.resumption import load_run_config

    try:
        rounds = load_run_config(run_dir, overrides).run.rounds if overrides and (
            run_dir / "config.toml").is_file() else None
    except ConfigError as exc:
        fail(str(exc))
        raise
    from fedmtl.progress import make_console

    # reading every client's heads takes a while in a large federation (about 12 s for 100,000
    # clients' files: benchmarks/head_store.py); a terminal shows that it is under way
    checking = None if quiet else make_console(sys.stderr).status
    from fedmtl.folder_lock import holding_run

    try:  # the folder is held from the checks to the run's end: no other process writes it between
        with holding_run(run_dir):
            _plan_and_resume(run_dir, rounds, force, checking, quiet, verbose)
    except RunFolderBusy as exc:
        fail(str(exc), code=1)


def _plan_and_resume(run_dir: Path, rounds: int | None, force: bool, checking: Callable | None, quiet: bool,
                     verbose: bool) -> None:
    """:func:`_resume`'s checks (:func:`fedmtl.resumption.plan_resume`) and run."""
    from fedmtl.folder_lock import RunFolderBusy
    from fedmtl.results import CheckpointError
    from fedmtl.resumption import ResumeRefused, plan_resume

    try:
        plan = plan_resume(run_dir, rounds, force=force, checking=checking)
    except RunFolderBusy as exc:
        fail(str(exc), code=1)
        raise
    except (ResumeRefused, CheckpointError, ValueError) as exc:
        fail(str(exc))
        raise
    except OSError as exc:  # extending the run rewrites its config.toml (atomically: the old one stays)
        if exc.errno is None:
            raise
        fail(f"cannot write {exc.filename or run_dir}: {exc.strerror or exc}; the run folder is unchanged", code=1)
        raise
    for note in plan.skipped:
        typer.echo(f"warning: {note}; using the previous one", err=True)
    if plan.finished:
        typer.echo(f"{run_dir} already finished all {plan.cfg.run.rounds if rounds is None else rounds} rounds; "
                   "nothing to resume")
        if plan.unfinished:  # stopped while it wrote its last files, after its summary
            from fedmtl.results import write_unfinished_outputs

            typer.echo(f"note: it was stopped before writing {', '.join(plan.unfinished)}; writing them now", err=True)
            _guarded(run_dir.resolve(), lambda: write_unfinished_outputs(run_dir, plan.cfg))
        return
    for problem in plan.forced:
        typer.echo(f"warning: --force: {problem.message}: {problem.forced}", err=True)
    if plan.extended:
        typer.echo(f"note: {plan.extended}", err=True)
    if plan.restart:
        from fedmtl.resumption import clear_for_restart

        typer.echo(f"note: {plan.restart}", err=True)
        _guarded(run_dir.resolve(), lambda: clear_for_restart(run_dir, plan.cfg))
    _guarded(run_dir.resolve(), lambda: _header_and_run(plan.cfg, run_dir.resolve(), quiet, verbose, run_dir,
                                                       run_dir / "config.toml", plan.checkpoint))


@cli.command(context_settings=EXTRA_ARGS)
def sweep(
    ctx: typer.Context,
    config: ConfigArgument = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="key=v1,v2,... or key=[v1,v2,...]: values to sweep (repeatable; all "
                     "combinations). Commas inside [...], {...} or quotes do not split."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per combination: run.seed, run.seed+1, ...")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Sweep folder (default: <run.output-dir>/sweep-<run.name>).")
    ] = None,
    set_: SetOption = None,
    show_rounds: Annotated[bool, typer.Option(help="Print every run's round lines.")] = False,
    skip_invalid: Annotated[
        bool, typer.Option(help="Skip combinations whose config is invalid instead of failing.")
    ] = False,
    rerun_changed: Annotated[
        bool, typer.Option(help="Run again the finished runs whose config differs from the sweep's (their "
                                "folders are replaced); without it the sweep refuses them, naming the keys.")
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Runs at once, each in its own worker process (in-process runs "
                          "only: engine.backend = \"inprocess\"); same results as --jobs 1.")
    ] = 1,
) -> None:
    """Run every combination of --grid values for --seeds seeds; skip runs already finished
    with the same config.

    Examples:
      fedmtl sweep synthetic --grid server.weighting=fedavg,qffl --seeds 3
      fedmtl sweep synthetic --grid 'server.weighting=[fedavg,qffl]' --grid 'server.params={q = 1},{q = 5}'
    """
    _check_sets(ctx, set_, config)
    if jobs < 1:
        fail(f"--jobs {jobs}: must be at least 1 (runs at once)")
    from fedmtl.config import ConfigError
    from fedmtl.launch.sweep import parse_grid_option, plan_sweep, run_sweep
    from fedmtl.validation import load_config

    config = _shipped(config) if config is not None else None
    try:
        parsed = dict(parse_grid_option(g) for g in grid or [])
        base = load_config(config, set_ or [])
        folder = out or Path(base.run.output_dir) / f"sweep-{base.run.name}"
        planned = plan_sweep(config, parsed, seeds, folder, set_, skip_invalid=skip_invalid,
                             report=typer.echo, rerun_changed=rerun_changed)
    except ConfigError as exc:
        fail(str(exc))
        raise
    import shlex

    from fedmtl.folder_lock import RunFolderBusy
    from fedmtl.progress import SweepDisplay

    again = "the same command: " + shlex.join(["fedmtl", *sys.argv[1:]])
    display = SweepDisplay(bar=not show_rounds)  # a run's own bar and the sweep's would overwrite each other
    try:
        done = _guarded(planned.out, lambda: run_sweep(planned, quiet_runs=not show_rounds, report=display.report,
                                                       progress=display.progress, jobs=jobs), again)
    except ConfigError as exc:  # a run finished with another config since the plan, a Ray run with --jobs
        fail(str(exc))
        raise
    except RunFolderBusy as exc:  # another sweep into the same folder
        fail(str(exc), code=1)
        raise
    finally:
        display.close()
    if any(r.status in ("done", "skipped") for r in done.runs):  # report reads finished runs only
        typer.echo(f"next: fedmtl report {shell_path(folder)}")
    raise typer.Exit(1 if any(r.status == "failed" for r in done.runs) else 0)


FIGURE_FORMATS = ("png", "pdf", "svg")
"""``fedmtl.plots.FORMATS``, spelt out so that the command line starts without matplotlib."""
FormatOption = Annotated[
    str, typer.Option("--format", click_type=click.Choice(FIGURE_FORMATS), help="Format of the figures.")
]
DpiOption = Annotated[int, typer.Option("--dpi", min=1, max=1200, help="Dots per inch of PNG figures "
                                        "(at most 1,200: fedmtl.plots.MAX_DPI).")]
HighlightOption = Annotated[
    int | None, typer.Option("--highlight-client", help="Mark this client id in every figure that shows clients.")
]


@cli.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, sweep folders, or folders holding them.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report folder (default: <first path>/report).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Label (or a unique part of it) of the reference configuration (Δm% and "
                                 "differences); default: the first given (a sweep's first grid value).")
    ] = None,
    fmt: FormatOption = "png",
    dpi: DpiOption = 150,
    highlight: HighlightOption = None,
) -> None:
    """Tables (means with 95% intervals, paired differences against a reference) and figures over runs and sweeps."""
    from fedmtl.report import make_report

    folder = out or paths[0] / "report"
    try:
        written = _guarded(None, lambda: make_report(paths, folder, reference, fmt=fmt, dpi=dpi, highlight=highlight))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
        raise
    if written["replaced"]:
        typer.echo(f"note: replaced the earlier report in {folder}", err=True)
    for line in written["repeats"]:
        typer.echo(f"note: {line.replace('`', '')}", err=True)
    for line in written["older_layout"]:
        typer.echo(f"note: clients built by an older fedmtl: {line.replace('`', '')}", err=True)
    typer.echo(written["table"])
    typer.echo(f"report: {written['report']}")
    typer.echo(f"interactive report: {written['html']}")
    for figure in written["figures"]:
        typer.echo(f"figure: {figure}")


@cli.command("flwr-run", context_settings=EXTRA_ARGS)
def flwr_run(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="Experiment TOML file (a Flower run config), or a shipped "
                                                   "config's name (fedmtl list configs).")] = None,
    set_: SetOption = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run folder (on the ServerApp's machine) after its newest "
                                       "checkpoint, in place of CONFIG.")
    ] = None,
    app_dir: Annotated[Path, typer.Option(help="The Flower app folder.")] = Path("."),
    superlink: Annotated[
        str | None, typer.Option(help="SuperLink connection of the Flower config (default: the local simulation).")
    ] = None,
    superlink_address: Annotated[
        str | None, typer.Option(help="host:port of a deployed SuperLink (defines the --superlink connection).")
    ] = None,
    root_certificates: Annotated[
        Path | None, typer.Option(help="With --superlink-address: the SuperLink's CA certificate (TLS).")
    ] = None,
    insecure: Annotated[bool, typer.Option(help="With --superlink-address: no TLS.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to finish.")] = 3600.0,
) -> None:
    """``flwr run APP_DIR [SUPERLINK] --run-config CONFIG``, failing when the run fails.

    ``flwr run`` itself exits 0 even when the ServerApp raises; this command waits for the
    run and exits 1 unless Flower reports it finished successfully. Without --superlink it
    runs Flower's local simulation, and stops the local SuperLink `flwr run` started when it
    returns (one that already ran stays); with --superlink-address it submits to a deployed
    SuperLink (run folders land under run.output-dir on the ServerApp's machine). With --resume
    RUN_DIR the ServerApp continues that run after its newest checkpoint, with the folder's own
    config.toml; on a deployment the clients check their own heads.
    """
    _check_sets(ctx, set_, config)
    _check_timeout(timeout)
    _check_app_dir(app_dir)
    if (config is None) == (resume is None):
        fail("give either CONFIG (a new run) or --resume RUN_DIR (continue a run), not both" if config
             else "give CONFIG (a new run) or --resume RUN_DIR (continue a run)")
    if resume is not None and set_:
        fail("--set does not go with --resume: a resumed run keeps the config.toml of its folder")
    from fedmtl.launch.flwr_run import SuperLinkLost, connection_env, run_and_check

    env = None
    if superlink_address is not None:
        try:
            env = connection_env(superlink or "deployment", superlink_address, root_certificates, insecure)
        except ValueError as exc:
            fail(str(exc))
        superlink = superlink or "deployment"
    local = superlink is None
    extra: dict[str, object] = {}
    if resume is not None:
        config, extra = _flwr_resume(resume, local)
    else:
        config = _shipped(config)
    cfg = _load(config, set_)
    import signal

    def _interrupt(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # the local SuperLink is stopped on SIGTERM too
    submitted: list[str] = []

    def folders(code: int) -> None:  # a deployed ServerApp writes on its own machine: nothing to name
        if local:  # a resumed run's folder records the submission that continued it
            output = resume.resolve().parent if resume is not None else Path(cfg.run.output_dir).resolve()
            _print_results(output, submitted, code, resumable=True)

    try:
        code = run_and_check(app_dir, config, superlink, timeout, env=env, simulation=local,
                             absolute_output=local, overrides=set_, on_submitted=submitted.append, extra=extra)
    except KeyboardInterrupt:
        typer.echo("interrupted" + (": the local SuperLink this command started was stopped" if local else ""),
                   err=True)
        folders(130)
        raise typer.Exit(130) from None
    except SuperLinkLost as exc:
        folders(1)
        fail(f"{exc}; the rounds the run finished are in its folder under run.output-dir", code=1)
    folders(code)
    raise typer.Exit(code)


def _flwr_resume(run_dir: Path, local: bool) -> tuple[Path | None, dict[str, object]]:
    """What ``flwr-run --resume RUN_DIR`` submits: the folder's ``config.toml`` (when the folder
    is on this machine; a deployed ServerApp reads its own) and the run-config keys that make the
    ServerApp resume (:data:`fedmtl.config.SUBMISSION_DEFAULTS`). A folder on this machine is
    checked here first, as the ServerApp will check it, so that a refusal is one line before
    anything is submitted; a run that already finished exits 0."""
    from fedmtl.config import RESUME_HEADS_ON_NODES, RESUME_RUN_DIR
    from fedmtl.folder_lock import RunFolderBusy
    from fedmtl.results import CheckpointError
    from fedmtl.resumption import ResumeRefused, plan_resume, submitted_force_hint

    extra: dict[str, object] = {RESUME_RUN_DIR: str(run_dir.resolve() if local else run_dir),
                                RESUME_HEADS_ON_NODES: not local}
    if not run_dir.exists():
        if local:
            fail(f"'{run_dir}' does not exist: nothing to resume")
        return None, extra  # on the ServerApp's machine only: it checks it there
    try:
        plan = plan_resume(run_dir, heads_on_nodes=not local, force_hint=submitted_force_hint(run_dir, not local),
                           restart=False)
    except (ResumeRefused, CheckpointError, RunFolderBusy) as exc:
        fail(str(exc))
        raise  # unreachable
    if plan.finished:
        typer.echo(f"'{run_dir}' already finished its {plan.cfg.run.rounds} rounds: nothing to resume")
        raise typer.Exit(0)
    return run_dir / "config.toml", extra  # a deployment's folder as typed: the ServerApp's machine resolves it


deploy_cli = typer.Typer(cls=OneSuggestion, no_args_is_help=True, help="Run on a real Flower deployment.")
cli.add_typer(deploy_cli, name="deploy")


@deploy_cli.command("certs")
def deploy_certs(
    folder: Annotated[Path, typer.Argument(help="Where to write ca.crt, ca.key, server.pem, server.key.")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Name or IP the SuperLink is reached at (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    owner: Annotated[
        str | None, typer.Option(help="UID:GID owning the files (49999:49999 for Flower's images).")
    ] = None,
    superexec_secret: Annotated[
        Path | None, typer.Option(help="Also write a SuperExec auth secret (--superexec-auth-secret-file) here.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace a CA the folder already holds (every host holding the old ca.crt is "
                                "then refused until it gets the new one).")
    ] = False,
) -> None:
    """A CA and a SuperLink TLS certificate for the given host names and addresses."""
    from fedmtl.launch.certificates import DEFAULT_HOSTS, MAX_DAYS, host_problem, make_secret, make_tls_certificates
    from fedmtl.one_line import one_line

    if days < 1:
        fail(f"--days {days}: a certificate must be valid for at least 1 day")
    if days > MAX_DAYS:
        fail(f"--days {days}: a certificate is valid for at most {MAX_DAYS} days here")
    hosts = list(dict.fromkeys(host or DEFAULT_HOSTS))
    if problems := [f"--host {h!r}: {p}" for h in hosts if (p := host_problem(h))]:
        fail(problems[0])
    _output_folder(folder)
    if (folder / "ca.crt").exists() and not force:
        fail(f"'{folder / 'ca.crt'}' exists: a new CA would lock out every SuperNode and flwr CLI holding it; "
             "--force replaces it (then give them the new ca.crt)")
    ids = _owner(owner)
    try:
        paths = make_tls_certificates(folder, hosts, days, owner=ids)
        secret = None if superexec_secret is None else make_secret(superexec_secret, owner=ids)
    except OSError as exc:
        fail(f"cannot write the certificates: {one_line(exc)}", code=1)
    typer.echo(f"CA certificate {paths['ca']} (give it to SuperNodes and the flwr CLI); "
               f"SuperLink certificate {paths['certificate']} for {', '.join(hosts)}")
    if secret is not None:
        typer.echo(f"SuperExec auth secret {secret} (give it to the SuperLink and the SuperExec only)")


def _output_folder(folder: Path) -> None:
    """Refuse ``folder`` when something other than a folder is there."""
    if folder.exists() and not folder.is_dir():
        fail(f"'{folder}' is not a folder; give a folder to write into (it is made if missing)")


def _owner(owner: str | None) -> tuple[int, int] | None:
    """``--owner UID:GID`` as ``(uid, gid)``."""
    if owner is None:
        return None
    uid, _, gid = owner.partition(":")
    if not (uid.isdigit() and gid.isdigit()):
        fail(f"--owner = '{owner}': expected UID:GID, e.g. 49999:49999")
    return int(uid), int(gid)


@deploy_cli.command("keys")
def deploy_keys(
    folder: Annotated[Path, typer.Argument(help="Where to write supernode-<i> and supernode-<i>.pub.")],
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes.")] = 2,
    owner: Annotated[
        str | None, typer.Option(help="UID:GID owning the files (49999:49999 for Flower's images).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace key pairs the folder already holds (a SuperNode whose old key was "
                                "registered is then refused until the new .pub is registered).")
    ] = False,
) -> None:
    """SuperNode authentication key pairs (register each .pub with `flwr supernode register`)."""
    from fedmtl.launch.certificates import make_node_keys
    from fedmtl.one_line import one_line

    if nodes < 1:
        fail(f"--nodes = {nodes}: must be at least 1")
    _output_folder(folder)
    held = [path for i in range(nodes) for path in (folder / f"supernode-{i}", folder / f"supernode-{i}.pub")
            if path.exists() or path.is_symlink()]
    if held and not force:
        fail(f"'{held[0]}' exists{f' (and {len(held) - 1} more)' if len(held) > 1 else ''}: a new key pair would "
             "lock out the SuperNode whose key is registered; --force replaces them (then register the new "
             ".pub files: fedmtl deploy register)")
    ids = _owner(owner)
    for i in range(nodes):
        try:
            pair = make_node_keys(folder, f"supernode-{i}", owner=ids)
        except OSError as exc:
            fail(f"cannot write the keys: {one_line(exc)}", code=1)
        typer.echo(f"{pair['private']}  {pair['public']}")


@deploy_cli.command("register")
def deploy_register(
    folder: Annotated[Path, typer.Argument(help="The folder of supernode-<i>.pub (from `fedmtl deploy keys`).")],
    superlink_address: Annotated[str, typer.Option(help="host:port of the SuperLink's Control API.")],
    root_certificates: Annotated[Path, typer.Option(help="The SuperLink's CA certificate.")],
    nodes: Annotated[int, typer.Option(help="Register supernode-0 .. supernode-<N-1>.")] = 2,
    admitted_nodes: Annotated[
        Path | None, typer.Option(help="Write the node ids here: the ServerApp's FEDMTL_ADMITTED_NODES_FILE.")
    ] = None,
) -> None:
    """`flwr supernode register` each SuperNode key; write the node ids the ServerApp may use."""
    from fedmtl.launch.flwr_run import _flwr, connection_env
    from fedmtl.server.admission import write_admitted_nodes

    if nodes < 1:
        fail(f"--nodes = {nodes}: must be at least 1")
    env = connection_env("deployment", superlink_address, root_certificates)
    ids = []
    for i in range(nodes):
        public = folder / f"supernode-{i}.pub"
        if not public.is_file():
            fail(f"'{public}': no such public key (make them with `fedmtl deploy keys`)")
        try:
            result = _flwr(["supernode", "register", str(public), "deployment", "--format", "json"], env)
        except RuntimeError as exc:
            fail(str(exc).splitlines()[0], code=1)
        if not result.get("success") or not str(result.get("node-id", "")).isdigit():
            fail(f"registering '{public}' failed: {result}", code=1)
        ids.append(int(result["node-id"]))
        typer.echo(f"{public}: node {ids[-1]}")
    if admitted_nodes is not None:
        typer.echo(f"admitted nodes: {write_admitted_nodes(admitted_nodes, ids)}")


@deploy_cli.command("local")
def deploy_local(
    config: Annotated[Path, typer.Argument(help="Experiment TOML file.")],
    nodes: Annotated[int | None, typer.Option(help="SuperNodes to start (default: data.num-clients).")] = None,
    tls: Annotated[
        bool, typer.Option("--tls/--insecure", help="TLS between the components (certificates made here).")
    ] = True,
    auth: Annotated[
        bool | None,
        typer.Option("--auth/--no-auth", help="SuperNode authentication: registered keys only, and work only "
                     "for the nodes registered here (needs --tls; default: on with --tls)."),
    ] = None,
    app_dir: Annotated[Path, typer.Option(help="The Flower app folder.")] = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to finish.")] = 3600.0,
) -> None:
    """A real SuperLink and N SuperNodes on loopback run CONFIG with `flwr run`, then stop.

    TLS and SuperNode authentication unless --insecure / --no-auth (with a warning). Exits 0
    only if Flower reports the run finished:completed. Logs, certificates, keys, the
    SuperLink's state and each node's head store stay in the deployment folder.
    """
    import signal

    from fedmtl.launch.deploy import DeploymentError, LocalDeployment, deployment_folder
    from fedmtl.launch.flwr_run import SuperLinkLost, run_and_check

    _check_timeout(timeout)
    if nodes is not None and nodes < 1:
        fail(f"--nodes = {nodes}: start at least 1 SuperNode (default: data.num-clients)")
    config = _shipped(config)
    cfg = _load(config, None)
    nodes = nodes or cfg.data.num_clients
    if nodes < cfg.data.num_clients:
        fail(f"--nodes = {nodes}: the config has data.num-clients = {cfg.data.num_clients}; "
             f"start at least that many SuperNodes")
    if auth and not tls:
        fail("--auth needs --tls (Flower refuses SuperNode authentication without TLS)")
    auth = tls if auth is None else auth
    if not tls:
        typer.echo("warning: --insecure: no TLS; any process that reaches the SuperLink's port can read and "
                   "change the run's messages, and there is no SuperNode authentication", err=True)
    elif not auth:
        typer.echo("warning: --no-auth: any process that reaches the SuperLink's port can start a SuperNode "
                   "and serve any client of the run", err=True)
    output = Path(cfg.run.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    folder = deployment_folder(output, cfg.run.name)
    submitted: list[str] = []

    def _interrupt(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    try:
        with LocalDeployment(folder, nodes, tls=tls, auth=auth) as deployment:
            typer.echo(f"deployment: SuperLink 127.0.0.1:{deployment.port} "
                       f"({'TLS' if tls else 'insecure'}{', SuperNode auth' if auth else ''}), "
                       f"{nodes} SuperNodes; logs in {folder / 'logs'}")
            deployment.start()
            try:
                code = run_and_check(app_dir.resolve(), config.resolve(), "fedmtl-local", timeout,
                                     env=deployment.env, simulation=False, on_submitted=submitted.append)
            finally:
                for name, exit_code in deployment.exited().items():
                    typer.echo(f"warning: {name} stopped during the run (exit code {exit_code}); "
                               f"see {folder / 'logs' / (name + '.log')}", err=True)
    except KeyboardInterrupt:
        typer.echo("interrupted: every process of the deployment was stopped", err=True)
        _print_results(output, submitted, 130)
        raise typer.Exit(130) from None
    except (DeploymentError, SuperLinkLost) as exc:
        _print_results(output, submitted, 1)
        fail(str(exc), code=1)
    _print_results(output, submitted, code)
    raise typer.Exit(code)


def _check_timeout(timeout: float) -> None:
    """Refuse a ``--timeout`` that is not a finite number of seconds above 0."""
    if not (math.isfinite(timeout) and timeout > 0):
        fail(f"--timeout = {timeout}: give the seconds to wait for the run, a number above 0")


def _check_app_dir(app_dir: Path) -> None:
    """Fail in one line unless ``app_dir`` is a Flower app folder: a ``pyproject.toml`` with a
    ``[tool.flwr.app]`` table (fedmtl's repository root is one)."""
    import tomllib

    project = app_dir / "pyproject.toml"
    try:
        app = tomllib.loads(project.read_text()).get("tool", {}).get("flwr", {}).get("app")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        app = None
    if not isinstance(app, dict):
        fail(f"--app-dir '{app_dir}' is not a Flower app folder ({project} has no [tool.flwr.app]): run "
             "from the fedmtl repository or pass --app-dir <your fedmtl checkout>")


def _print_results(output: Path, flower_run_ids: list[str], code: int, resumable: bool = False) -> None:
    """Print the run folders in ``output`` of the submitted Flower runs: ``Results: FOLDER``
    after a run that finished (``code`` 0), ``Folder of the unfinished run: FOLDER`` otherwise
    (it failed, or is still running past ``--timeout``: it holds what the run recorded so far),
    with the command that continues it when ``resumable`` (``fedmtl flwr-run --resume``; the
    folder has a checkpoint) once the run has stopped."""
    from fedmtl.one_line import shell_path
    from fedmtl.results import folders_of_flower_run, newest_checkpoint_round

    label = "Results" if code == 0 else "Folder of the unfinished run"
    for run_id in flower_run_ids:
        for run_folder in folders_of_flower_run(output, run_id):
            typer.echo(f"{label}: {run_folder}")
            done = newest_checkpoint_round(run_folder) if code != 0 and resumable else None
            if done is not None:
                typer.echo(f"once it has stopped, continue it after round {done} with: "
                           f"fedmtl flwr-run --resume {shell_path(run_folder)}")


@cli.command(context_settings=EXTRA_ARGS)
def validate(
    ctx: typer.Context,
    config: ConfigArgument = None,
    set_: SetOption = None,
) -> None:
    """Validate a config and print it fully resolved (every default filled in)."""
    _check_sets(ctx, set_, config)
    typer.echo(_load(config, set_).to_toml(), nl=False)


@cli.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    fmt: FormatOption = "png",
    dpi: DpiOption = 150,
    highlight: HighlightOption = None,
) -> None:
    """Redraw the figures of a run folder (into its plots/ folder)."""
    from fedmtl.plots import plot_run

    if not (run_dir / "metrics.csv").is_file():
        fail(f"'{run_dir}' is not a run folder (no metrics.csv)")
    try:
        paths = _guarded(None, lambda: plot_run(run_dir, fmt, dpi, highlight))
    except ValueError as exc:
        fail(str(exc))
        raise
    for path in paths:
        typer.echo(path)


data_cli = typer.Typer(cls=OneSuggestion, no_args_is_help=True, help="Inspect the data of a config.")
cli.add_typer(data_cli, name="data")


@data_cli.command("describe", context_settings=EXTRA_ARGS)
def data_describe(
    ctx: typer.Context,
    config: ConfigArgument = None,
    set_: SetOption = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Where to write the federation figure (PNG, PDF or SVG by its "
                                  "suffix; default: <run.output-dir>/federation.png).")
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the per-client table as CSV.")
    ] = None,
) -> None:
    """Per-client table (examples, tasks held, label mix) and a figure of the federation."""
    _check_sets(ctx, set_, config)
    cfg = _load(config, set_)
    from rich.console import Console
    from rich.table import Table

    from fedmtl.data import load_federation
    from fedmtl.data.checks import DataError
    from fedmtl.data.describe import describe_federation, plot_federation
    from fedmtl.launch.simulation import dataset_errors
    from fedmtl.plots import FORMATS
    from fedmtl.progress import natural_width

    # by default among the runs (run.output-dir): a figure left in a checkout would mark every
    # later run's provenance git_dirty
    plot_path = _file_option("--plot", plot_path or Path(cfg.run.output_dir) / "federation.png", ".png")
    suffixes = [f".{fmt}" for fmt in FORMATS]
    if plot_path.suffix.lower() not in suffixes:
        fail(f"--plot {plot_path}: a figure is written as {', '.join(suffixes)}; give one of those suffixes")
    csv_path = None if csv_path is None else _file_option("--csv", csv_path, ".csv")
    try:
        with dataset_errors(cfg):  # what fedmtl run says of data it cannot build
            fed = load_federation(cfg.data, cfg.run.seed)
            table = describe_federation(fed)
    except DataError as exc:
        fail(str(exc), code=1)
        raise
    view = Table(title=f"{cfg.data.dataset}: {fed.num_clients} clients, partitioner "
                       f"'{cfg.data.partitioner}', task sets '{cfg.data.task_sets}' (label and group columns: "
                       "training split)")
    for column in table.columns:
        view.add_column(column, justify="left" if column == "tasks" else "right")
    for _, row in table.iterrows():
        view.add_row(*("-" if isinstance(v, float) and v != v else f"{v:.2f}" if isinstance(v, float) else str(v)
                       for v in row.tolist()))
    measure = Console(width=200)
    Console(width=max(200, natural_width(measure, view)[1])).print(view)  # a cell is never cut
    totals = table[["train", "test"]].sum()
    typer.echo(f"total: {int(totals['train'])} train, {int(totals['test'])} test examples")
    try:
        if csv_path is not None:
            from fedmtl.atomic import write_bytes

            write_bytes(csv_path, table.to_csv(index=False).encode())  # whole or not at all; an error names it
            typer.echo(f"table: {csv_path}")
        typer.echo(f"figure: {plot_federation(fed, plot_path)}")
    except OSError as exc:
        fail(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}", code=1)


def _file_option(option: str, path: Path, suffix: str) -> Path:
    """The file an output option names: a folder is refused in one line; a name without a
    suffix gets ``suffix`` (what the writer would add unasked)."""
    if path.is_dir():
        fail(f"{option} {path}: a folder; give a file name, e.g. {path / ('federation' + suffix)}")
    return path if path.suffix else path.with_suffix(suffix)


@cli.command("list")
def list_(
    kind: Annotated[
        str, typer.Argument(help="weightings | datasets | backbones | partitioners | task-sets | tasks | methods "
                                 "(alias: personalization) | configs (the shipped configs)")
    ] = "weightings",
    plugin: Annotated[
        list[str] | None, typer.Option("--plugin", help="A plugin to load first, as a run.plugins entry: a .py file "
                                       "(relative to this folder) or a module name; repeatable.")
    ] = None,
) -> None:
    """List registered names of one kind, or the shipped configs (usable by name: fedmtl run quickstart)."""
    if kind == "configs":
        from fedmtl.shipped import describe_config, shipped_configs

        shipped = shipped_configs()
        typer.echo(f"{len(shipped)} shipped configs (fedmtl run NAME, from any folder; a file of that name wins)")
        width = max((len(name) for name in shipped), default=0)
        for name, path in shipped.items():
            typer.echo(f"{name:<{width}}  {describe_config(path)}")
        return
    from fedmtl.aggregation import WEIGHTINGS
    from fedmtl.data import DATASETS, PARTITIONERS, TASK_SETS
    from fedmtl.models import BACKBONES
    from fedmtl.plugins import KEY, PluginError, load_plugins
    from fedmtl.tasks import TASK_KINDS
    from fedmtl.training.methods import METHODS

    try:  # installed plugin packages (entry points of group fedmtl.plugins) and --plugin list theirs too
        load_plugins(plugin or [])
    except PluginError as exc:  # a --plugin entry's error names the option given, not the config key
        said = str(exc)
        fail(f"--plugin{said.removeprefix(KEY)}" if said.startswith(f"{KEY}: ") else said)
    registries = {
        "weightings": WEIGHTINGS, "datasets": DATASETS, "backbones": BACKBONES,
        "partitioners": PARTITIONERS, "task-sets": TASK_SETS, "tasks": TASK_KINDS, "methods": METHODS,
    }
    kind = "methods" if kind == "personalization" else kind
    if kind not in registries:
        from fedmtl.registry import did_you_mean

        kinds = [*registries, "configs"]
        fail(f"unknown kind '{kind}'{did_you_mean(kind, kinds)}; allowed: {', '.join(kinds)}")
    if kind == "weightings":
        from fedmtl.aggregation.registry import describe_rule

        typer.echo(f"{len(WEIGHTINGS)} rules (weightings: update = Σ w_i u_i; aggregators: any other direction)")
        for _, entry in WEIGHTINGS.items():
            typer.echo("\n".join(describe_rule(entry)))
        return
    if kind == "methods":
        typer.echo(f"{len(METHODS)} personalization methods (personalization.method; options in "
                   "[personalization.params])")
        for name, method in METHODS.items():
            options = ", ".join(f"{f.alias or k}={f.get_default(call_default_factory=True)!r}"
                                for k, f in method.Params.model_fields.items()) or "-"
            heads = " or ".join(f"{h} (default)" if i == 0 and len(method.heads) > 1 else h
                                for i, h in enumerate(method.heads))
            typer.echo(f"{name}  (views: {', '.join(method.views)}; model.heads: {heads})\n"
                       f"    trains: {method.trains}\n    keeps: {method.keeps}\n"
                       f"    options: {options}\n    paper: {method.paper}")
        return
    from fedmtl.docs import summary

    for name, entry in registries[kind].items():
        typer.echo(f"{name:<14} {summary(entry, code='')}")


class LiteralHelp(typer.core.TyperCommand):
    """A command whose help texts print as written: typer renders them as Rich markup, which
    drops bracketed text such as ``[fedavg,qffl]`` of ``--grid 'server.weighting=[fedavg,qffl]'``.
    Its arguments' help is set again from :attr:`arguments` (click 8.5 resets the help typer
    gives an argument)."""

    arguments: dict[str, str] = {}
    """The help of each argument, by parameter name."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.help = _literal(_reflowed(self.help))
        if self.short_help is None and self.help:  # the command list shows the first paragraph on one line
            self.short_help = " ".join(self.help.split("\n\n")[0].split())
        for param in self.params:
            if getattr(param, "help", None) is None and param.name in self.arguments:
                param.help = self.arguments[param.name]  # type: ignore[attr-defined]
            if isinstance(getattr(param, "help", None), str):
                param.help = _literal(param.help)  # type: ignore[attr-defined]


def _argument_help(function: Callable[..., object]) -> dict[str, str]:
    """The ``typer.Argument(help=...)`` of each parameter of a command function."""
    import typing

    from typer.models import ArgumentInfo

    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except NameError:  # an annotation only a type checker resolves: typer's own help stands
        return {}
    out = {}
    for name, hint in hints.items():
        info = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, ArgumentInfo)), None)
        if info is not None and info.help:
            out[name] = info.help
    return out


def _reflowed(text: str | None) -> str | None:
    """A docstring as help: each paragraph's lines joined into one (Rich keeps a docstring's line
    breaks, and wraps them again at the terminal's width: ragged lines), except paragraphs of
    indented or bulleted lines; ``code`` spans in single backticks."""
    if text is None:
        return None
    paragraphs = []
    for paragraph in text.replace("``", "`").split("\n\n"):
        lines = paragraph.strip("\n").splitlines()
        as_written = any(line.startswith((" ", "- ", "* ")) for line in lines[1:])  # indented, or bullets
        paragraphs.append(paragraph.strip("\n") if as_written else " ".join(" ".join(lines).split()))
    return "\n\n".join(paragraphs)


def _literal(text: str | None) -> str | None:
    """``text`` with every ``[`` escaped for Rich markup (printed as ``[``)."""
    return None if text is None else text.replace("[", "\\[")


def _literal_help(app: typer.Typer) -> None:
    """Make every command of ``app`` and of its sub-apps a :class:`LiteralHelp`."""
    for command in app.registered_commands:
        if command.cls in (None, typer.core.TyperCommand) and command.callback is not None:  # typer's default
            command.cls = type("LiteralHelp", (LiteralHelp,), {"arguments": _argument_help(command.callback)})
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _literal_help(group.typer_instance)


_literal_help(cli)


def main() -> None:
    """Console entry point. A crash in native code (a segmentation fault in a library's thread
    while a run stops) prints every thread's Python stack to stderr (:mod:`faulthandler`)."""
    import faulthandler

    faulthandler.enable(all_threads=True)
    try:
        cli()
    except Exception as exc:
        from fedmtl.config import ConfigError
        from fedmtl.data.checks import DataError

        if not isinstance(exc, ConfigError | DataError):
            raise
        for line in str(exc).splitlines():  # raised after start-up (e.g. by the ServerApp)
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


if __name__ == "__main__":
    main()
