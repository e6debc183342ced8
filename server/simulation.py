"""``fedmtl run``'s launcher: the ServerApp and ClientApp on Flower's Ray Simulation Engine."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from fedmtl.config import ExperimentConfig, virtual_supernodes


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


def backend_config(cfg: ExperimentConfig) -> dict:
    """The Simulation Engine's backend config from ``[engine]``."""
    init_args: dict = {"include_dashboard": False}
    if cfg.engine.num_cpus:
        init_args["num_cpus"] = cfg.engine.num_cpus
    return {
        "client_resources": {
            "num_cpus": cfg.engine.client_num_cpus,
            "num_gpus": cfg.engine.client_num_gpus,
        },
        "init_args": init_args,
    }


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

    from clients.app import app as client_app
    from server.app import make_server_app

    supernodes = virtual_supernodes(cfg)
    cfg = cfg.with_values(engine={"supernodes": supernodes})  # the run folder records it
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_DropDeprecation())
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        run_simulation(
            server_app=make_server_app(cfg, run_dir, quiet=quiet, checkpoint=checkpoint),
            client_app=client_app,
            num_supernodes=supernodes,
            backend_config=backend_config(cfg),
            verbose_logging=verbose,
        )
    return run_dir
