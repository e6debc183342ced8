"""``fedmtl run``'s launcher: the ServerApp and ClientApp on Flower's Ray Simulation Engine.

:func:`simulate` leaves the process as it found it: the ``flwr``, ``fedmtl`` and root
loggers (levels, handlers, filters), the environment variables, torch's thread count and
global random generator (the ServerApp seeds it), the SIGTERM handler (``ray.init`` sets one),
the warnings filters and Flower's message dispatcher are restored when it returns or raises,
so a sweep can call it many times. (What Flower and Ray do once when they are first imported
is theirs.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from fedmtl.config import ExperimentConfig, virtual_supernodes

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


@contextlib.contextmanager
def preserved_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
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


@contextlib.contextmanager
def quiet_flower(verbose: bool) -> Iterator[None]:
    """Flower's ``flwr`` logger without its deprecation notices and, unless ``verbose``, at
    WARNING; its filters and level are restored on exit."""
    logger = logging.getLogger("flwr")
    level, drop = logger.level, _DropDeprecation()
    logger.addFilter(drop)
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        logger.setLevel(level)


class EngineError(RuntimeError):
    """The Ray cluster cannot be reached or can never host one virtual client."""


def backend_config(cfg: ExperimentConfig) -> dict:
    """The Simulation Engine's backend config from ``[engine]``."""
    init_args: dict = {"include_dashboard": False}
    if cfg.engine.address:
        init_args = {"address": cfg.engine.address}
    elif cfg.engine.max_concurrent_clients:
        # Flower's actor pool holds as many actors as Ray's CPUs fit
        init_args["num_cpus"] = cfg.engine.max_concurrent_clients * cfg.engine.client_num_cpus
    elif cfg.engine.num_cpus:
        init_args["num_cpus"] = cfg.engine.num_cpus
    return {
        "client_resources": {
            "num_cpus": cfg.engine.client_num_cpus,
            "num_gpus": cfg.engine.client_num_gpus,
        },
        "init_args": init_args,
    }


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


def connect(cfg: ExperimentConfig) -> None:
    """Start or join Ray, then check that at least one node can host a virtual client
    (``engine.client-num-cpus`` CPUs and ``engine.client-num-gpus`` GPUs), instead of waiting
    forever for resources that never come."""
    import ray

    from fedmtl.training.setup import server_device

    try:
        server_device(cfg.server.device)  # the ServerApp runs in this process
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if cfg.engine.address:
        check_reachable(cfg.engine.address)
    if not ray.is_initialized():
        # the actors import this process's modules: they get its sys.path through the job's
        # runtime environment (this process's os.environ is left alone)
        pythonpath = os.pathsep.join(sys.path)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **backend_config(cfg)["init_args"])
    need_cpu, need_gpu = cfg.engine.client_num_cpus, cfg.engine.client_num_gpus
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n.get("Resources")]
    fits = [n for n in nodes if n.get("CPU", 0) >= need_cpu and (need_gpu == 0 or n.get("GPU", 0) >= need_gpu)]
    if not fits:
        ray.shutdown()
        offered = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise EngineError(
            f"no Ray node can host a virtual client: engine.client-num-cpus = {need_cpu} and "
            f"engine.client-num-gpus = {need_gpu:g} per client, but the nodes offer {offered}"
        )


def simulate(
    cfg: ExperimentConfig, run_dir: Path, quiet: bool = False, verbose: bool = False,
    checkpoint: dict | None = None,
) -> Path:
    """Run ``cfg`` through the Ray Simulation Engine (continuing after ``checkpoint`` when
    given), with :func:`~fedmtl.config.virtual_supernodes` virtual SuperNodes: one per client,
    or fewer, each playing the client its message names.

    Leaves logging, the environment, torch's threads and random generator, the SIGTERM
    handler and the warnings filters as they were (see the module's docstring). A SIGTERM
    handler the caller installed (a Python function) stays in force during the run instead
    of the one ``ray.init`` installs.

    Raises whatever the ServerApp raised (the engine re-raises it).
    """
    import torch
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.simulation import run_simulation

    from fedmtl.clients.app import app as client_app
    from fedmtl.server.app import make_server_app
    from fedmtl.server.latency import dispatch_on_push

    supernodes = virtual_supernodes(cfg)
    cfg = cfg.with_values(engine={"supernodes": supernodes})  # the run folder records it
    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved_environ())
        stack.enter_context(preserved_torch_threads())
        stack.enter_context(torch.random.fork_rng(devices=[]))  # torch's CPU generator
        stack.enter_context(preserved_sigterm())
        stack.enter_context(preserved_logging())
        stack.enter_context(quiet_flower(verbose))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        in_main = threading.current_thread() is threading.main_thread()
        caller_sigterm = signal.getsignal(signal.SIGTERM) if in_main else None
        connect(cfg)
        if callable(caller_sigterm):  # the caller's own handler (fedmtl run's stop) beats ray.init's
            signal.signal(signal.SIGTERM, caller_sigterm)
        # dispatch_on_push swaps Flower's dispatcher for one that wakes on push: put it back after
        stack.callback(setattr, vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
        dispatch_on_push()
        run_simulation(
            server_app=make_server_app(cfg, run_dir, quiet=quiet, checkpoint=checkpoint),
            client_app=client_app,
            num_supernodes=supernodes,
            backend_config=backend_config(cfg),
            verbose_logging=verbose,
        )
    return run_dir
