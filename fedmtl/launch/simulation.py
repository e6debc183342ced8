"""``fedmtl run``'s launcher: the ServerApp and ClientApp on Flower's Ray Simulation Engine."""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from pathlib import Path

from fedmtl.config import ExperimentConfig, virtual_supernodes


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


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
        # as Flower's Ray backend does: the actors import this process's modules
        pythonpath = os.pathsep.join(sys.path)
        os.environ["PYTHONPATH"] = pythonpath
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

    Raises whatever the ServerApp raised (the engine re-raises it).
    """
    from flwr.simulation import run_simulation

    from fedmtl.clients.app import app as client_app
    from fedmtl.server.app import make_server_app
    from fedmtl.server.latency import dispatch_on_push

    supernodes = virtual_supernodes(cfg)
    cfg = cfg.with_values(engine={"supernodes": supernodes})  # the run folder records it
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_DropDeprecation())
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        connect(cfg)
        dispatch_on_push()
        run_simulation(
            server_app=make_server_app(cfg, run_dir, quiet=quiet, checkpoint=checkpoint),
            client_app=client_app,
            num_supernodes=supernodes,
            backend_config=backend_config(cfg),
            verbose_logging=verbose,
        )
    return run_dir
