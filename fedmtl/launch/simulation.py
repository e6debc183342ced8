"""``fedmtl run``'s launcher: the ServerApp and ClientApp on Flower's Ray Simulation Engine.

:func:`simulate` leaves the process as it found it: the ``flwr``, ``fedmtl`` and root
loggers (levels, handlers, filters), the environment variables, torch's thread count and
global random generator (the ServerApp seeds it), the SIGTERM handler (``ray.init`` sets one),
the warnings filters and Flower's message dispatcher are restored when it returns or raises,
so a sweep can call it many times. (What Flower and Ray do once when they are first imported
is theirs.)

Each run alone starts Ray and, on its way out, Flower's Ray backend (``RayBackend.terminate``,
called by ``vce_api.run_api``) stops the run's actors and shuts Ray down. Within
:func:`shared_engine` consecutive runs share one Ray instance instead: the first run starts
it, each run's actors are killed when the run ends (Ray stays up) and the next run starts
once they are gone (their CPUs and GPUs free, their processes ended); a run whose engine
settings differ from the instance's restarts it, and a run interrupted mid-round shuts it
down as Flower does; the block shuts Ray down on exit. Each actor takes two calls at once
(:mod:`fedmtl.launch.ray_pipeline`), so it never waits for the engine between clients.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.background import BackgroundWork
from fedmtl.config import ExperimentConfig, virtual_supernodes
from fedmtl.one_line import described, raised_at, visible

log = logging.getLogger("fedmtl")

PRESERVED_LOGGERS = ("flwr", "fedmtl", "")
"""The loggers :func:`simulate` restores (``""``: the root logger)."""
_HANDLER_ATTRIBUTES = ("level", "formatter", "timestamps", "colored", "json")
"""What a handler's state is (the last three are Flower's ``ConsoleHandler``'s, which
``run_simulation(verbose_logging=True)`` changes)."""


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


@contextlib.contextmanager
def preserved_logging(names: tuple[str, ...] = PRESERVED_LOGGERS) -> Iterator[None]:
    """Restore the loggers ``names`` (level, propagate, disabled, handlers and filters, and
    each handler's level, formatter and filters) on exit."""
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        handlers = [(h, {a: getattr(h, a) for a in _HANDLER_ATTRIBUTES if hasattr(h, a)}, list(h.filters))
                    for h in logger.handlers]
        saved.append((logger, logger.level, logger.propagate, logger.disabled, handlers, list(logger.filters)))
    try:
        yield
    finally:
        for logger, level, propagate, disabled, handlers, filters in saved:
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
            logger.filters[:] = filters
            logger.handlers[:] = [h for h, _, _ in handlers]
            for handler, attributes, handler_filters in handlers:
                for attribute, value in attributes.items():
                    setattr(handler, attribute, value)
                handler.filters[:] = handler_filters


@contextlib.contextmanager
def preserved_environ() -> Iterator[None]:
    """Restore ``os.environ`` (and so the process environment) on exit."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in saved]:
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _new_thread_torch_threads() -> int:
    """The intra-op thread count a thread started now gets from torch (with OpenMP, each thread
    has its own; a new one starts from the count last set in any thread)."""
    import torch

    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(torch.get_num_threads()), name="fedmtl-torch-threads")
    thread.start()
    thread.join()
    return found[0]


@contextlib.contextmanager
def preserved_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit: this thread's, and the one threads started
    afterwards get (in-process clients set theirs in the engine's worker threads, which changes it)."""
    import torch

    threads, new_threads = torch.get_num_threads(), _new_thread_torch_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads or _new_thread_torch_threads() != new_threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def preserved_sigterm() -> Iterator[None]:
    """Restore the SIGTERM handler on exit (``ray.init`` installs one that outlives
    ``ray.shutdown``); signal handlers belong to the main thread, elsewhere nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None and signal.getsignal(signal.SIGTERM) is not handler:
            signal.signal(signal.SIGTERM, handler)


ENGINE_ERROR_MODULES = ("vce_api", "raybackend", "ray_actor")
"""Flower's modules whose ERROR records are a client's failure seen by the engine (the
exception and its traceback, for each failed message)."""


class _EngineErrors(logging.Filter):
    """Appends the engine's record of each client failure (:data:`ENGINE_ERROR_MODULES`) to
    ``path`` and keeps it off the console unless ``verbose`` (the strategy shows each distinct
    error once, :class:`fedmtl.progress.ClientErrors`)."""

    def __init__(self, path: Path | None, verbose: bool) -> None:
        super().__init__()
        self.path, self.verbose, self.lock = path, verbose, threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or record.module not in ENGINE_ERROR_MODULES:
            return True
        text = engine_record_text(record.getMessage())
        record.msg, record.args = text, None  # the console (verbose) shows it so too
        if self.path is not None:
            with self.lock, contextlib.suppress(OSError), self.path.open("a", encoding="utf-8") as log:
                log.write(f"engine ({record.module}): {text}\n")
        return self.verbose


MAX_ENGINE_RECORD = 20_000
"""The most characters of an engine record (a client's exception and its traceback) kept."""


def engine_record_text(message: str) -> str:
    """The engine's record of a client failure as ``client-errors.log`` keeps it: its lines
    after the first indented by 4 spaces, so that a client's exception text (which the record
    holds verbatim) cannot start a line of its own (``round 1 training: client 0: ...``, read
    back by a resume, :meth:`fedmtl.progress.ClientErrors.resume_after`); characters that do
    not print (terminal escapes) written as their escapes; at most :data:`MAX_ENGINE_RECORD`
    characters as written."""
    text = "\n    ".join(visible(line) for line in message.rstrip().splitlines())
    cut = len(text) - MAX_ENGINE_RECORD
    if cut > 0:
        text = text[:MAX_ENGINE_RECORD]
    return text + (f"\n    ... ({cut} characters more, not kept)" if cut > 0 else "")


def _colour(stream: object) -> bool:
    """Whether a log handler's ``stream`` may get colour codes: a terminal, and no ``NO_COLOR``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


@contextlib.contextmanager
def quiet_flower(verbose: bool, errors: Path | None = None) -> Iterator[None]:
    """Flower's ``flwr`` logger without its deprecation notices and, unless ``verbose``, at
    WARNING; no colour codes from its console handlers unless they write to a terminal; the
    engine's client-failure records appended to ``errors`` (the run's ``client-errors.log``)
    and, unless ``verbose``, kept off the console. Its filters, level and handlers' colours are
    restored on exit."""
    logger = logging.getLogger("flwr")
    level, drop, engine = logger.level, _DropDeprecation(), _EngineErrors(errors, verbose)
    colours = {h: h.colored for h in logger.handlers if hasattr(h, "colored")}
    logger.addFilter(drop)
    logger.addFilter(engine)
    for handler in colours:
        handler.colored = colours[handler] and _colour(getattr(handler, "stream", None))  # type: ignore[attr-defined]
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        logger.removeFilter(engine)
        logger.setLevel(level)
        for handler, colored in colours.items():
            handler.colored = colored  # type: ignore[attr-defined]


CALLER_LOGGERS = (*PRESERVED_LOGGERS, "ray", "ray.rllib")
"""The loggers :func:`preserved_caller` restores: :data:`PRESERVED_LOGGERS` and those Ray
configures when it is first imported."""


def _at_least_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def preserved_caller(quiet_engine: bool = False) -> Iterator[None]:
    """For a library call that may import and start Ray and Flower (:mod:`fedmtl.api`): restore
    on exit the environment variables (those Ray and Flower set when first imported too), the
    loggers :data:`CALLER_LOGGERS`, the log-record factory (Ray installs one) and the working
    directory. With ``quiet_engine``, Ray's and Flower's loggers show warnings and errors only
    meanwhile (no "Started a local Ray instance"; Ray is imported first for that)."""
    cwd, factory = os.getcwd(), logging.getLogRecordFactory()
    with preserved_environ(), preserved_logging(CALLER_LOGGERS):
        if quiet_engine:
            import ray  # noqa: F401 - its first import configures the "ray" logger: quieten it after that

            for name in ("ray", "flwr"):
                logger = logging.getLogger(name)
                logger.setLevel(logging.WARNING)
                for handler in logger.handlers:  # ray.init sets the level back to INFO: filter its handlers too
                    handler.addFilter(_at_least_warning)
        try:
            yield
        finally:
            logging.setLogRecordFactory(factory)
            if os.getcwd() != cwd:
                os.chdir(cwd)


class EngineError(RuntimeError):
    """The Ray cluster cannot be reached or can never host one virtual client."""


def backend_config(cfg: ExperimentConfig) -> dict:
    """The Simulation Engine's backend config from ``[engine]``."""
    init_args: dict = {"include_dashboard": False}
    if cfg.engine.address:
        init_args = {"address": cfg.engine.address}
    elif cfg.engine.cpus():  # Flower's actor pool holds as many actors as Ray's CPUs fit
        init_args["num_cpus"] = cfg.engine.cpus()
    config = {
        "client_resources": {
            "num_cpus": cfg.engine.client_num_cpus,
            "num_gpus": cfg.engine.client_num_gpus,
        },
        "init_args": init_args,
    }
    if cfg.engine.backend == "inprocess":
        from fedmtl.launch.inprocess import WORKERS

        config[WORKERS] = cfg.engine.clients_at_once()
    return config


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail within ``timeout`` seconds when nothing listens at a ``host:port`` Ray address."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"engine.address = {address!r}: expected 'host:port' of the Ray head, or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(
            f"engine.address = {address!r}: cannot reach a Ray cluster there ({exc}); start one with "
            f"`ray start --head --port {port}` or fix the address"
        ) from None


RELEASE_TIMEOUT_S = 30.0
"""Seconds the previous run's actors may take to end in a shared Ray instance before it is
restarted instead."""


@dataclass
class _SharedEngine:
    """The Ray instance the runs of a :func:`shared_engine` block share: the settings it was
    started with (``None``: not started by the block) and what it had free when it started."""

    settings: tuple | None = None
    free: dict[str, float] = field(default_factory=dict)


_SHARED: _SharedEngine | None = None
"""The enclosing :func:`shared_engine` block's engine; ``None`` outside one."""


@contextlib.contextmanager
def shared_engine() -> Iterator[None]:
    """Within the block, consecutive :func:`simulate` calls share one Ray instance: it starts
    with the first run and is shut down when the block ends (also on an error or an
    interrupt). Each run still gets its own actors (killed when it ends, gone before the next
    run starts) and the same results as a run alone. A run whose engine settings
    (:func:`engine_settings`) differ from the instance's restarts it. Nothing starts until a
    run needs Ray; an inner block is part of the outer one."""
    global _SHARED
    if _SHARED is not None:
        yield
        return
    _SHARED = shared = _SharedEngine()
    try:
        yield
        ray = sys.modules.get("ray")
        if shared.settings is not None and ray is not None and ray.is_initialized():
            _released(ray, shared.free, RELEASE_TIMEOUT_S)  # the last run's actors end, as a run alone's
    finally:  # on an error or an interrupt too, without waiting
        _SHARED, ray = None, sys.modules.get("ray")
        if shared.settings is not None and ray is not None and ray.is_initialized():
            from fedmtl.launch.ray_pipeline import gated_shutdown

            gated_shutdown(ray)  # an interrupted run's engine threads may still be running


def ray_logging(verbose: bool) -> dict[str, Any]:
    """``ray.init``'s logging arguments: unless ``verbose``, Ray's driver logs at WARNING (no
    "Started a local Ray instance") and nothing of the actors' output forwarded to this
    process (no "Manually terminating ClientAppActor" warnings after the results)."""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}


def engine_settings(cfg: ExperimentConfig, verbose: bool = False) -> tuple:
    """What a Ray instance is started with for ``cfg``: ``ray.init``'s arguments (with
    :func:`ray_logging`), the actors' ``PYTHONPATH`` (this process's ``sys.path``) and the
    environment the actors inherit. (Importing Ray adds to ``sys.path`` and the environment:
    :func:`simulate` imports it first.)"""
    return (
        tuple(sorted({**backend_config(cfg)["init_args"], **ray_logging(verbose)}.items())),
        os.pathsep.join(sys.path),
        tuple(sorted(os.environ.items())),
    )


def _free_resources(ray: Any) -> dict[str, float]:
    """The CPUs and GPUs Ray has free now."""
    free = ray.available_resources()
    return {k: float(free.get(k, 0.0)) for k in ("CPU", "GPU")}


def _actor_processes() -> set[int]:
    """This process's descendants that are Flower's client actors (processes Ray names
    ``ray::ClientAppActor``; zombies left out); none where ``/proc`` cannot be read."""
    from fedmtl.launch.interrupt import descendants

    try:
        pids = descendants()
    except OSError:
        return set()
    actors = set()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if command.startswith(b"ray::ClientAppActor") and state != "Z":
            actors.add(pid)
    return actors


def _released(ray: Any, free: dict[str, float], timeout: float) -> bool:
    """Wait until the previous run's actors are gone: Ray has at least ``free`` CPUs and GPUs
    free again and none of their processes is left among this process's descendants
    (:func:`_actor_processes`); ``False`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(_free_resources(ray)[k] < v - 1e-6 for k, v in free.items()) or _actor_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reuse_shared(ray: Any, settings: tuple) -> None:
    """In a :func:`shared_engine` block: keep the block's Ray instance when ``settings`` are
    the instance's and the previous run's actors are gone, else shut it down (the caller
    starts a new one). Ray that the block did not start is left alone."""
    shared = _SHARED
    if shared is None or shared.settings is None or not ray.is_initialized():
        return
    if shared.settings != settings or not _released(ray, shared.free, RELEASE_TIMEOUT_S):
        ray.shutdown()


def _start_ray(ray: Any, cfg: ExperimentConfig, settings: tuple, verbose: bool = False) -> None:
    """``ray.init`` for ``cfg`` (quiet unless ``verbose``: :func:`ray_logging`); in a
    :func:`shared_engine` block, record the instance and its ``settings``."""
    # the actors import this process's modules: they get its sys.path through the job's
    # runtime environment (this process's os.environ is left alone)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}}, **backend_config(cfg)["init_args"],
             **ray_logging(verbose))
    if _SHARED is not None:
        _SHARED.settings, _SHARED.free = settings, _free_resources(ray)


def check_in_process_gpus(cfg: ExperimentConfig) -> None:
    """Fail (:class:`EngineError`) when in-process clients ask for a GPU fraction
    (``engine.client-num-gpus``) and this process sees no GPU, as :func:`connect` fails when no
    Ray node offers one."""
    from fedmtl.gpus import in_process_gpus

    if cfg.engine.client_num_gpus > 0 and in_process_gpus() == 0:
        raise EngineError(
            f"engine.client-num-gpus = {cfg.engine.client_num_gpus:g} per client, but this process sees no "
            "CUDA GPU for its in-process clients; set engine.client-num-gpus = 0 or run where torch sees a GPU"
        )


def check_server_device(cfg: ExperimentConfig) -> None:
    """Fail (:class:`EngineError`) when ``server.device`` cannot be had in this process, where
    the ServerApp runs."""
    from fedmtl.training.setup import server_device

    try:
        server_device(cfg.server.device)
    except ValueError as exc:
        raise EngineError(str(exc)) from None


def connect(cfg: ExperimentConfig, settings: tuple | None = None, verbose: bool = False) -> None:
    """Start or join Ray, then check that at least one node can host a virtual client
    (``engine.client-num-cpus`` CPUs and ``engine.client-num-gpus`` GPUs), instead of waiting
    forever for resources that never come (for an instance started here, the CPUs are checked
    before it starts: it has ``engine.num-cpus`` or at most this machine's). In a
    :func:`shared_engine` block, keep the block's instance when ``settings`` (default
    :func:`engine_settings` now) are those it started with.
    Ray is quiet unless ``verbose`` (:func:`ray_logging`)."""
    import ray

    check_server_device(cfg)
    if cfg.engine.address:
        check_reachable(cfg.engine.address)
    settings = engine_settings(cfg, verbose) if settings is None else settings
    _reuse_shared(ray, settings)
    need_cpu, need_gpu = cfg.engine.client_num_cpus, cfg.engine.client_num_gpus
    if not ray.is_initialized():
        most = cfg.engine.cpus() or os.cpu_count() or 1  # ray.init's num_cpus, else at most this machine's
        if not cfg.engine.address and need_cpu > most:  # known before Ray starts (about 10 s)
            raise EngineError(
                f"no Ray node can host a virtual client: engine.client-num-cpus = {need_cpu} per client, but the "
                f"Ray instance started here has {most} CPUs"
                + (" (engine.num-cpus / engine.max-concurrent-clients)" if cfg.engine.cpus() else "")
            )
        _start_ray(ray, cfg, settings, verbose)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n.get("Resources")]
    fits = [n for n in nodes if n.get("CPU", 0) >= need_cpu and (need_gpu == 0 or n.get("GPU", 0) >= need_gpu)]
    if not fits:
        ray.shutdown()
        offered = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise EngineError(
            f"no Ray node can host a virtual client: engine.client-num-cpus = {need_cpu} and "
            f"engine.client-num-gpus = {need_gpu:g} per client, but the nodes offer {offered}"
        )


def _keep_ray_up(base: type) -> type:
    """A subclass of the Ray backend ``base`` that, on its way out of a run whose actors are
    all idle (a run that ended), kills them and leaves Ray up for the next run of a
    :func:`shared_engine` block. With an actor still busy (a run interrupted mid-round, whose
    worker threads still wait on it) it shuts Ray down as Flower does; the next run starts
    Ray again."""
    import ray

    class SharedRayBackend(base):  # type: ignore[misc, valid-type]
        def terminate(self) -> None:
            """Kill this run's actors (no ``ray.shutdown``) when none is busy, else Flower's;
            nothing once Ray was shut down for good (an interrupt)."""
            from fedmtl.launch.ray_pipeline import close_backend, engine_gate

            pool = self.pool
            if pool is None:
                return
            with engine_gate():  # no thread of this run submits a call meanwhile, nor after
                if getattr(pool, "_future_to_actor", None) != {}:  # busy actors (or another Flower)
                    super().terminate()
                    return
                if not close_backend(self):  # Ray was shut down for good (an interrupt)
                    return
                for actor in dict.fromkeys(pool.pool):  # each actor once (the pool lists it per call slot)
                    with contextlib.suppress(Exception):  # already dead
                        ray.kill(actor, no_restart=True)

    return SharedRayBackend


def _ray_backend(cfg: ExperimentConfig) -> type:
    """The Ray backend a run of ``cfg`` uses: Flower's, with two calls in flight per actor unless
    a reply could then miss the round's deadline (:func:`fedmtl.launch.ray_pipeline.calls_per_actor`),
    which leaves Ray up after the run within a :func:`shared_engine` block."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fedmtl.launch.ray_pipeline import calls_per_actor, pipelined_ray_backend, replacing_dead_actors

    backend = replacing_dead_actors(pipelined_ray_backend() if calls_per_actor(cfg) > 1 else RayBackend)
    if _SHARED is not None and _SHARED.settings is not None:
        backend = _keep_ray_up(backend)
    return backend


def check_local_data(cfg: ExperimentConfig) -> None:
    """Build the run's federation in this process before the engine starts, so that a config no
    partition fits (or data that does not fit its dataset) stops the run in one line, before
    Ray or a client starts. The clients of a local simulation build their data on this machine
    (the server too, with ``server.max-examples = 0``; :func:`fedmtl.data.load_federation` is
    cached, so it is built once); on a Ray cluster (``engine.address``) whose server does not
    hold the data (``server.max-examples > 0``) nothing is built here.

    A plugin's dataset (not :func:`shipped_dataset`) has every client's data built and checked
    against its declared tasks and input shape here (:func:`fedmtl.data.checks.check_client_data`),
    so that one client's bad labels stop the run before it starts, not only that client.

    Raises
    ------
    DataError
        Naming the problem (one the data's own code raised otherwise, with its text).
    """
    if cfg.engine.address and cfg.server.max_examples:
        return
    from fedmtl.data import load_federation

    with dataset_errors(cfg):
        federation = load_federation(cfg.data, cfg.run.seed)
        if not shipped_dataset(cfg.data.dataset):  # a plugin's: every client's data checked here
            for client_id in range(federation.num_clients):
                federation.check_client(client_id)  # not cached: on Ray this process never trains


@contextlib.contextmanager
def dataset_errors(cfg: ExperimentConfig) -> Iterator[None]:
    """Building ``cfg``'s data within: an error is a one-line :class:`~fedmtl.data.checks.DataError`
    naming ``data.dataset`` (``fedmtl run``, ``fedmtl data describe``).

    Raises
    ------
    DataError
        For a ``DataError``, ``OSError``, ``ValueError`` or ``RuntimeError`` (its text), and for
        any other error of a plugin's dataset (its type, text and where it was raised); any
        other error of fedmtl's own dataset keeps its traceback.
    """
    from fedmtl.data.checks import DataError

    try:
        yield
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise DataError(f"data.dataset = '{cfg.data.dataset}' cannot be built: {error}") from error
    except Exception as error:  # a plugin's own bug (NameError, KeyError, ...): one line saying where
        if shipped_dataset(cfg.data.dataset):
            raise  # fedmtl's own: its traceback is the report
        raise DataError(f"data.dataset = '{cfg.data.dataset}' cannot be built: {described(error)} "
                        f"({raised_at(error)})") from error


def shipped_dataset(name: str) -> bool:
    """Dataset ``name`` is one of fedmtl's own (its builder is in the ``fedmtl`` package): its
    clients' data is checked by the test suite, so a local simulation does not build every
    client before the engine starts (a plugin's is: :func:`check_local_data`)."""
    from fedmtl.data import DATASETS

    return getattr(DATASETS.get(name).build, "__module__", "").startswith("fedmtl.")


def simulate(
    cfg: ExperimentConfig, run_dir: Path, quiet: bool = False, verbose: bool = False,
    checkpoint: dict | None = None,
) -> Path:
    """Run ``cfg`` through Flower's Simulation Engine, on Ray or in this process
    (``engine.backend``, :mod:`fedmtl.launch.inprocess`), continuing after ``checkpoint`` when
    given, with :func:`~fedmtl.config.virtual_supernodes` virtual SuperNodes: one per client,
    or fewer, each playing the client its message names.

    Leaves logging, the environment, torch's threads and random generator, the SIGTERM
    handler and the warnings filters as they were (see the module's docstring). A SIGTERM
    handler the caller installed (a Python function) stays in force during the run instead
    of the one ``ray.init`` installs.

    Within :func:`shared_engine`, the run uses (or starts) the block's Ray instance and
    leaves it up, with the run's actors killed.

    The run's figures are drawn in a thread while the engine stops (:mod:`fedmtl.background`);
    it returns when they are written.

    Raises whatever the ServerApp raised (the engine re-raises it), or drawing the figures raised.
    """
    import ray  # noqa: F401 - before engine_settings: importing Ray extends sys.path and the environment
    import torch
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.simulation import run_simulation

    from fedmtl.clients.app import app as client_app
    from fedmtl.determinism import preserved_determinism
    from fedmtl.launch.inprocess import engine_backend, switch_interval, use_in_process_backend
    from fedmtl.progress import CLIENT_ERRORS
    from fedmtl.server.app import make_server_app
    from fedmtl.server.latency import dispatch_on_push

    check_local_data(cfg)  # a config no partition fits: said before the engine starts
    supernodes = virtual_supernodes(cfg)
    cfg = cfg.with_values(engine={"supernodes": supernodes})  # the run folder records it
    settings = engine_settings(cfg, verbose)  # the caller's sys.path and environment, as the next run will see them
    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved_environ())
        stack.enter_context(preserved_torch_threads())
        stack.enter_context(preserved_determinism())  # run.deterministic: the server's and in-process clients'
        stack.enter_context(torch.random.fork_rng(devices=[]))  # torch's CPU generator
        stack.enter_context(preserved_sigterm())
        stack.enter_context(preserved_logging())
        stack.enter_context(quiet_flower(verbose, Path(run_dir) / CLIENT_ERRORS))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        in_main = threading.current_thread() is threading.main_thread()
        caller_sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
        if cfg.engine.backend == "inprocess":
            check_server_device(cfg)
            check_in_process_gpus(cfg)
            stack.enter_context(use_in_process_backend())
            stack.enter_context(switch_interval())  # the clients share this interpreter's lock
        else:
            connect(cfg, settings, verbose)
            stack.enter_context(engine_backend(_ray_backend(cfg)))
        if callable(caller_sigterm):  # the caller's own handler (fedmtl run's stop) beats ray.init's
            signal.signal(signal.SIGTERM, caller_sigterm)
        # dispatch_on_push swaps Flower's dispatcher for one that wakes on push: put it back after
        stack.callback(setattr, vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
        dispatch_on_push()
        # the figures are drawn while the engine stops (fedmtl.background), joined below
        background = BackgroundWork()
        try:
            run_simulation(
                server_app=make_server_app(cfg, run_dir, quiet=quiet, checkpoint=checkpoint, background=background),
                client_app=client_app,
                num_supernodes=supernodes,
                backend_config=backend_config(cfg),
                verbose_logging=verbose,
            )
        except BaseException:
            background.wait()  # the run's own error wins; one from the figures is logged
            for error in background.take_errors():
                log.warning("drawing the run's figures failed as well: %s", error)
            raise
        background.join()
    if not quiet:  # after the figures: the folder is whole when it is named
        from fedmtl.progress import make_console

        make_console().print(f"Results: {run_dir}")
    return run_dir
