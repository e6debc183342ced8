"""A real Flower deployment on this machine: one SuperLink, N SuperNodes, ``flwr run``.

``fedmtl deploy local --nodes N CONFIG`` (TLS and SuperNode authentication by default;
``--insecure``, ``--no-auth`` opt out) uses :class:`LocalDeployment`:

1. a deployment folder (``<run.output-dir>/deploy-<run.name>-<time>/``, kept afterwards)
   with ``logs/`` (one log per process), ``certificates/`` (``--tls``), ``keys/``
   (``--auth``), ``state.db`` (the SuperLink's state) and ``node-<i>/heads`` (each
   SuperNode's on-disk head store);
2. ``flower-superlink`` on a free loopback port (TLS with a CA made here, or
   ``--insecure``; ``--enable-supernode-auth`` with ``--auth``);
3. with ``--auth``, every SuperNode's public key registered with
   ``flwr supernode register``, and the node ids it returns written to
   ``admitted-nodes`` (:mod:`fedmtl.server.admission`): the ServerApp gives work to those
   nodes only, whoever else registers a key through the Control API (which Flower 1.41
   leaves without a credential);
4. N ``flower-supernode`` processes with ``--node-config "partition-id=i num-partitions=N
   head-store-dir=..."``;
5. ``flwr run`` of this app with the config; the run's logs are streamed and its real final
   status is read from ``flwr ls`` (:func:`fedmtl.launch.flwr_run.run_and_check`);
6. every process it started is stopped, also on Ctrl-C or on failure.

The run folder is written by the ServerApp exactly as in a simulation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedmtl.launch.certificates import make_node_keys, make_tls_certificates
from fedmtl.launch.flwr_run import _flwr, connection_env
from fedmtl.launch.interrupt import signals_deferred
from fedmtl.server.admission import ADMITTED_NODES_ENV, write_admitted_nodes

CONNECTION = "fedmtl-local"


class DeploymentError(RuntimeError):
    """A process of the deployment failed to start or stopped unexpectedly."""


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """The pids of a process's children, grandchildren, ... (Linux ``/proc``; [] elsewhere)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(c) for c in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalDeployment:
    """SuperLink and SuperNodes as processes on loopback (a context manager that stops them).

    Parameters
    ----------
    folder : Path
        The deployment folder (created).
    nodes : int
        Number of SuperNodes (partition ids ``0..nodes-1``).
    tls : bool
        TLS between every component (certificates made in ``folder/certificates``).
    auth : bool, optional
        SuperNode authentication: only registered public keys may connect, and the
        ServerApp gives work only to the nodes registered here (default: as ``tls``).
    """

    folder: Path
    nodes: int
    tls: bool = True
    auth: bool | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"--nodes = {self.nodes}: a deployment needs at least one SuperNode")
        self.auth = self.tls if self.auth is None else self.auth
        if self.auth and not self.tls:
            raise ValueError(
                "SuperNode authentication needs TLS (Flower refuses --enable-supernode-auth with --insecure)"
            )
        self.folder = Path(self.folder).resolve()
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.certificates = make_tls_certificates(self.folder / "certificates") if self.tls else None
        self.env = connection_env(CONNECTION, f"127.0.0.1:{self.port}",
                                  self.certificates["ca"] if self.certificates else None,
                                  insecure=not self.tls, home=self.folder / "flwr-home")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.keys = {i: make_node_keys(self.folder / "keys", f"supernode-{i}") for i in range(self.nodes)} \
            if self.auth else {}
        self.node_ids: dict[int, int] = {}
        """Partition -> the node id its registered key got (``--auth``)."""
        if self.auth:  # the ServerApp (a child of the SuperLink) reads it once runs start
            self.env[ADMITTED_NODES_ENV] = str(self.folder / "admitted-nodes")

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.folder / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=Path.cwd(), start_new_session=True)
        self.processes[name] = proc
        return proc

    def _security(self, role: str) -> list[str]:
        if not self.certificates:
            return ["--insecure"]
        if role == "superlink":
            return ["--ssl-ca-certfile", str(self.certificates["ca"]),
                    "--ssl-certfile", str(self.certificates["certificate"]),
                    "--ssl-keyfile", str(self.certificates["key"])]
        return ["--root-certificates", str(self.certificates["ca"])]

    def start_superlink(self, timeout: float = 60) -> None:
        """Start ``flower-superlink`` and wait until it accepts connections."""
        args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.folder / "state.db"), "--isolation", "subprocess",
                "--disable-runtime-dependency-installation", *self._security("superlink")]
        if self.auth:
            args.append("--enable-supernode-auth")
        proc = self._spawn("superlink", args)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if proc.poll() is not None:
                raise DeploymentError(f"flower-superlink exited with code {proc.returncode}; "
                                      f"see {self.folder / 'logs' / 'superlink.log'}:\n{self.log_tail('superlink')}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"flower-superlink did not listen on port {self.port} within {timeout:.0f} s")
            time.sleep(0.2)

    def register(self, public_key: Path) -> dict:
        """``flwr supernode register PUBLIC_KEY`` with this deployment's connection (its JSON answer)."""
        return _flwr(["supernode", "register", str(public_key), CONNECTION, "--format", "json"], self.env)

    def register_nodes(self) -> None:
        """Register every SuperNode's public key (``--auth``); write their node ids to
        ``admitted-nodes``, the only nodes the ServerApp will give work to."""
        for i, pair in self.keys.items():
            result = self.register(pair["public"])
            if not result.get("success") or not str(result.get("node-id", "")).isdigit():
                raise DeploymentError(f"registering supernode-{i} failed: {result}")
            self.node_ids[i] = int(result["node-id"])
        if self.auth:
            write_admitted_nodes(self.env[ADMITTED_NODES_ENV], self.node_ids.values())

    def start_supernode(
        self, partition: int, private_key: Path | None = None, name: str | None = None
    ) -> subprocess.Popen:
        """Start SuperNode ``partition`` (its head store in ``folder/node-<i>/heads``)."""
        heads = self.folder / f"node-{partition}" / "heads"
        heads.mkdir(parents=True, exist_ok=True)
        node_config = f'partition-id={partition} num-partitions={self.nodes} head-store-dir="{heads}"'
        args = ["flower-supernode", "--superlink", f"127.0.0.1:{self.port}", *self._security("supernode"),
                "--node-config", node_config, "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(free_port())]
        key = private_key or (self.keys[partition]["private"] if self.auth and partition in self.keys else None)
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        return self._spawn(name or f"supernode-{partition}", args)

    def start(self) -> LocalDeployment:
        """SuperLink, registrations, then every SuperNode."""
        self.start_superlink()
        self.register_nodes()
        for i in range(self.nodes):
            self.start_supernode(i)
        return self

    def exited(self) -> dict[str, int]:
        """``{name: exit code}`` of the deployment's processes that have stopped."""
        return {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a process's log."""
        path = self.folder / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop one process, its process group, and its descendants that left the group
        (Flower's SuperExec starts in a session of its own)."""
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        descendants = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        for sig_left in (signal.SIGTERM, signal.SIGKILL):
            left = [pid for pid, argv in descendants.items() if argv and _cmdline(pid) == argv]
            for pid in left:
                try:
                    os.kill(pid, sig_left)
                except ProcessLookupError:
                    pass
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = [pid for pid in left if _cmdline(pid) == descendants[pid]]
            if not left:
                return
            deadline = time.monotonic() + timeout

    def stop(self) -> None:
        """Stop the SuperLink (and the ServerApp it runs) first, then every SuperNode: with the
        nodes stopped first, the ServerApp went on for a moment against dead nodes and recorded
        rounds (and a checkpoint) that trained nothing. A signal that comes meanwhile waits
        until every process is stopped (:func:`fedmtl.launch.interrupt.signals_deferred`)."""
        with signals_deferred():
            self.stop_process("superlink")
            for name in list(self.processes):
                self.stop_process(name)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def deployment_folder(output_dir: str | Path, name: str) -> Path:
    """``<output-dir>/deploy-<name>-<time>`` (unique)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(output_dir) / f"deploy-{name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(output_dir) / f"deploy-{name}-{stamp}-{suffix}"
    return folder
