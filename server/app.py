"""The fedmtl ServerApp.

``flwr run . --run-config CONFIG`` loads ``app`` (see ``[tool.flwr.app.components]`` in
pyproject.toml) and reads the experiment from the run config; ``fedmtl run`` builds the
same server with :func:`make_server_app` around an already validated config and run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid, ServerApp

from fedmtl.config import ExperimentConfig, config_from_flat
from fedmtl.data import dataset_input_shape, dataset_tasks
from fedmtl.models import build_model
from fedmtl.progress import Progress
from fedmtl.results import RunRecorder, create_run_dir
from server.strategy import FedMTLStrategy

log = logging.getLogger("fedmtl")


class FederationMismatch(RuntimeError):
    """The connected SuperNodes do not match ``data.num-clients``."""


def _query_nodes(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, tuple[int, int]]:
    """Ask nodes for ``(partition id, num partitions)``; ``{node id: info}``."""
    content = RecordDict({"config": ConfigRecord({"kind": "discover"})})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    infos = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise FederationMismatch(f"a node failed client discovery: {reply.error.reason}")
        info = reply.content["info"]
        infos[reply.metadata.src_node_id] = (int(info["partition-id"]), int(info["num-partitions"]))
    return infos


def discover_clients(grid: Grid, cfg: ExperimentConfig) -> dict[int, int]:
    """Ask every node for its partition id; return ``{partition id: node id}``.

    Nodes are queried as they connect. A node reporting fewer partitions than
    ``data.num-clients`` (N) fails at once, naming the fix; otherwise discovery waits up to
    ``server.connect-timeout`` seconds for partition ids ``0..N-1``. Nodes with larger
    partition ids (more SuperNodes than clients) stay idle, with a warning.
    """
    expected = cfg.data.num_clients
    deadline = time.monotonic() + cfg.server.connect_timeout
    infos: dict[int, tuple[int, int]] = {}
    clients: dict[int, int] = {}
    last_report = 0.0
    while True:
        new = [n for n in grid.get_node_ids() if n not in infos]
        if new:
            infos.update(_query_nodes(grid, new, cfg.server.connect_timeout))
        for node, (partition, partitions) in infos.items():
            if partitions < expected:
                raise FederationMismatch(
                    f"the federation has num-partitions = {partitions} but data.num-clients = "
                    f"{expected}; give it at least {expected} SuperNodes (for `flwr run`: "
                    f"--federation-config 'num-supernodes={expected}', or use `fedmtl flwr-run`)"
                )
            if partition < expected:
                clients[partition] = node
        if len(clients) == expected:
            break
        if time.monotonic() > deadline:
            missing = sorted(set(range(expected)) - set(clients))
            raise FederationMismatch(
                f"after {cfg.server.connect_timeout:.0f} s, {len(clients)} of data.num-clients = "
                f"{expected} clients are connected; missing partition ids {missing[:10]}"
            )
        if time.monotonic() - last_report > 10:
            log.info("waiting for SuperNodes: %d of %d clients connected", len(clients), expected)
            last_report = time.monotonic()
        time.sleep(0.5)
    idle = len(infos) - expected
    if idle > 0:
        log.warning("%d SuperNodes have partition ids >= data.num-clients = %d and stay idle", idle, expected)
    return clients


def resolve_paths(cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """Fill in defaults that depend on the run folder (the disk head store)."""
    if cfg.client.head_store_dir == "":
        cfg = cfg.with_values(client={"head_store_dir": str(run_dir / "heads")})
    return cfg


def run_server(grid: Grid, cfg: ExperimentConfig, run_dir: Path | None = None, quiet: bool = False) -> Path:
    """Run a whole federated experiment on ``grid``; return the run folder."""
    run_dir = run_dir or create_run_dir(cfg)
    cfg = resolve_paths(cfg, run_dir)
    tasks = dataset_tasks(cfg.data)
    recorder = RunRecorder(run_dir, cfg, tasks)
    progress = Progress(cfg.run.rounds, enabled=not quiet)
    clients = discover_clients(grid, cfg)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, dataset_input_shape(cfg.data), tasks)
    strategy = FedMTLStrategy(cfg, clients, recorder, progress)
    strategy.start(
        grid,
        ArrayRecord(model.federated_state(cfg.model.heads == "global")),
        num_rounds=cfg.run.rounds,
        timeout=cfg.server.timeout,
    )
    progress.final_table(strategy.last_stats)
    recorder.finish(strategy.last_stats)
    if not quiet:
        progress.console.print(f"Results: {run_dir}")
    return run_dir


def make_server_app(cfg: ExperimentConfig, run_dir: Path, quiet: bool = False) -> ServerApp:
    """A ServerApp running ``cfg`` into ``run_dir`` (used by ``fedmtl run``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, run_dir, quiet=quiet)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: the experiment comes from the run config."""
    run_server(grid, config_from_flat(context.run_config))
