"""Run an experiment with ``flwr run`` and report the run's *real* final status.

``flwr run`` exits 0 even when the ServerApp raises. :func:`run_and_check` submits the
run, streams its logs, polls ``flwr ls --run-id ID --format json`` until Flower reports a
final status, and returns 0 only for ``finished:completed``.

The config file is validated first; a resolved copy with an absolute ``run.output-dir``
is what Flower receives, so results land where ``fedmtl run`` would put them whatever the
SuperLink's working directory. For the local simulation, ``num-supernodes`` and the client
resources come from the config's ``[data]`` and ``[engine]`` sections.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w

from fedmtl.config import ExperimentConfig, unflatten
from fedmtl.one_line import one_line
from fedmtl.validation import load_config


def flwr_env() -> dict[str, str]:
    """Environment for Flower's CLI: this interpreter's scripts first, no runtime installs."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    return env


def connection_env(
    name: str, address: str, root_certificates: Path | None = None, insecure: bool = False,
    home: Path | None = None,
) -> dict[str, str]:
    """:func:`flwr_env` with a private ``FLWR_HOME`` whose ``config.toml`` defines the
    SuperLink connection ``name`` (``address``, TLS with ``root_certificates`` or insecure).

    Without ``home`` the Flower home is a temporary folder, removed when this process exits."""
    if (root_certificates is None) == (not insecure):
        raise ValueError("give exactly one of the SuperLink's CA certificate (--root-certificates) and --insecure")
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="fedmtl-flwr-home-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    security = "insecure = true" if insecure else f'root-certificates = "{Path(root_certificates).resolve()}"'
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}\n')
    env = flwr_env()
    env["FLWR_HOME"] = str(home)
    return env


def _json_from(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in Flower's output: {text.strip()[:500]}")
    return json.loads(text[start:])


def _flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(["flwr", *args], capture_output=True, text=True, env=env, timeout=timeout)
    try:
        return _json_from(proc.stdout)
    except ValueError:
        raise RuntimeError(
            f"`flwr {' '.join(args)}` failed (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
        ) from None


def resolved_run_config(cfg: ExperimentConfig, folder: Path, absolute_output: bool = True,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config as a Flower run-config file.

    Parameter tables are written in their flat JSON form, so that every key Flower sees is
    one declared in pyproject's ``[tool.flwr.app.config]``. With ``absolute_output`` (a
    SuperLink on this machine) ``run.output-dir`` is made absolute; for a remote SuperLink it
    stays relative to the ServerApp's working directory. ``extra``: flat keys of the submission
    besides the experiment's (:data:`fedmtl.config.SUBMISSION_DEFAULTS`).
    """
    nested = unflatten({**cfg.to_flat(), **(extra or {})})
    if absolute_output:
        nested["run"]["output-dir"] = str(Path(cfg.run.output_dir).resolve())
    path = folder / "run-config.toml"
    path.write_text(tomli_w.dumps(nested))
    return path


def _cmdlines() -> dict[int, list[str]]:
    """Every process's command line (``{}`` where ``/proc`` cannot be read)."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    out[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
    return out


def local_superlinks(home: Path) -> set[int]:
    """The ``flower-superlink`` processes ``flwr run`` started for the Flower home ``home``
    (their log file is in ``home/local-superlink``)."""
    marker = str(home / "local-superlink")
    return {pid for pid, argv in _cmdlines().items()
            if any(Path(a).name == "flower-superlink" for a in argv[:2]) and any(marker in a for a in argv)}


def stop_processes(links: set[int], grace: float = 5.0) -> None:
    """Stop each SuperLink of ``links`` with its process group and those of the processes it
    started (``--parent-pid``): SIGTERM, then SIGKILL after ``grace`` seconds. This process's
    own group is never signalled."""
    if not links:
        return
    groups = set()
    for pid, argv in _cmdlines().items():
        text = " ".join(argv)
        if pid in links or any(f"--parent-pid {link}" in text for link in links):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and local_alive(links):
            time.sleep(0.1)
        if not local_alive(links):
            return


def local_alive(pids: set[int]) -> bool:
    """Whether any of ``pids`` still runs (a zombie does not)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                return True
    return False


@contextlib.contextmanager
def own_local_superlink(env: dict[str, str]) -> Iterator[None]:
    """The block may start Flower's local SuperLink (``flwr run`` starts one, detached, when
    none runs): stop the SuperLinks of ``env``'s Flower home that were not running before,
    when the block ends (also on an error or an interrupt). One that already ran is left alone."""
    home = Path(env.get("FLWR_HOME") or Path(env.get("HOME") or Path.home()) / ".flwr")
    before = local_superlinks(home)
    try:
        yield
    finally:
        stop_processes(local_superlinks(home) - before)


FLOWER_TEXT = 400
"""The most characters of Flower's own text a message quotes (its connection errors run to about
200: 160 cut them mid-word)."""


class SuperLinkLost(RuntimeError):
    """The SuperLink stopped answering about a run it ran (it stopped, or cannot be reached):
    one line saying so and what Flower said."""


def run_status(run_id: str, superlink: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The run's entry of ``flwr ls --run-id ID --format json``.

    Raises
    ------
    SuperLinkLost
        ``flwr ls`` fails, or does not list the run.
    """
    try:
        listing = _flwr(["ls", *superlink, "--run-id", run_id, "--format", "json"], env)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        said = one_line(exc, FLOWER_TEXT)
        raise SuperLinkLost(f"the SuperLink stopped answering about run {run_id}: {said}") from None
    runs = listing.get("runs", [])
    if not runs:
        said = one_line(str(listing.get("error-message") or listing), FLOWER_TEXT)
        raise SuperLinkLost(f"the SuperLink no longer lists run {run_id} (it stopped, or cannot be reached): {said}")
    return runs[0]


STATUS_POLL_S = (2.0, 10.0)
"""Seconds between two ``flwr ls`` while no log stream runs: the first wait, then 1.5 times
longer each time up to the second figure. Each ``flwr ls`` is a new process that costs about
1.3 s of CPU (the ``flwr`` command's imports), so a fixed 2 s poll kept a third of a core busy."""
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""A terminal escape (Flower's log lines colour their level)."""


def stream_logs(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``flwr log --stream``: its lines go to this process's stdout, without colour codes
    when stdout is not a terminal (a file or a pipe: the SuperLink's log lines carry them)."""
    if sys.stdout.isatty():
        return subprocess.Popen(argv, env=env)
    logs = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, errors="replace")
    threading.Thread(target=_copy_plain, args=(logs.stdout,), daemon=True).start()
    return logs


def _copy_plain(lines: Any) -> None:
    for line in lines:
        sys.stdout.write(ANSI.sub("", line))
        sys.stdout.flush()


STREAMED_POLL_S = 20.0
"""Seconds between two ``flwr ls`` while ``flwr log --stream`` runs: it exits when the run ends,
and its exit is checked every 0.2 s; ``flwr ls`` only catches a run that ends without it."""


def wait_for_run(
    run_id: str, link: list[str], env: dict[str, str], timeout: float, logs: subprocess.Popen | None = None
) -> dict[str, Any] | None:
    """Wait until run ``run_id`` is finished; return its ``flwr ls`` entry, or ``None`` after
    ``timeout`` seconds.

    While ``logs`` (a ``flwr log RUN --stream`` process) runs, the status is read when it exits
    and every :data:`STREAMED_POLL_S` seconds; otherwise after :data:`STATUS_POLL_S`'s
    growing waits.
    """
    deadline = time.monotonic() + timeout
    wait = STATUS_POLL_S[0]
    while True:
        status = run_status(run_id, link, env)
        if str(status["status"]).startswith("finished"):
            return status
        if time.monotonic() >= deadline:
            return None
        streaming = logs is not None and logs.poll() is None
        if streaming:
            pause = STREAMED_POLL_S
        else:
            pause, wait = wait, min(wait * 1.5, STATUS_POLL_S[1])
        until = min(time.monotonic() + pause, deadline)
        while time.monotonic() < until and not (streaming and logs.poll() is not None):
            time.sleep(0.2)


def run_and_check(
    app_dir: Path,
    config: Path | None,
    superlink: str | None = None,
    timeout: float = 3600.0,
    stream: bool = True,
    env: dict[str, str] | None = None,
    simulation: bool = True,
    absolute_output: bool = True,
    overrides: list[str] | None = None,
    on_submitted: Callable[[str], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Submit ``config`` with ``flwr run``; return 0 iff the run finished completed.

    Parameters
    ----------
    app_dir : Path
        The Flower app (this repository).
    config : Path or None
        Experiment TOML file (``None``: the defaults, for a resume whose ServerApp reads its
        run folder's).
    superlink : str, optional
        SuperLink connection name of the Flower config (default: Flower's default).
    timeout : float
        Seconds to wait for a final status.
    stream : bool
        Stream the run's logs while waiting.
    env : dict, optional
        Environment of the ``flwr`` commands (default :func:`flwr_env`).
    simulation : bool
        The SuperLink runs simulations: size the federation from the config
        (``num-supernodes`` and client resources). ``False`` for a deployment.
    absolute_output : bool
        Send ``run.output-dir`` as an absolute path (the SuperLink runs on this machine).
    overrides : list of str, optional
        ``--set`` strings applied to ``config`` (the run config sent is the resolved result).
    on_submitted : callable, optional
        Called with Flower's run id once the run is submitted (its run folder records it:
        :func:`fedmtl.results.folders_of_flower_run`).
    extra : dict, optional
        Run-config keys of the submission besides the experiment's (a resume's:
        :data:`fedmtl.config.SUBMISSION_DEFAULTS`).

    For the local simulation (no ``superlink``), the local SuperLink ``flwr run`` starts is
    stopped when this returns, also on an error or an interrupt (:func:`own_local_superlink`);
    one that ran before is left running.
    """
    cfg = load_config(config, overrides or [])
    env = env or flwr_env()
    if simulation and superlink is None:  # Flower's local SuperLink, started by `flwr run` if none runs
        with own_local_superlink(env):
            return _run_and_check(app_dir, config, cfg, superlink, timeout, stream, env, simulation, absolute_output,
                                  on_submitted, extra)
    return _run_and_check(app_dir, config, cfg, superlink, timeout, stream, env, simulation, absolute_output,
                          on_submitted, extra)


def _run_and_check(
    app_dir: Path, config: Path, cfg: ExperimentConfig, superlink: str | None, timeout: float, stream: bool,
    env: dict[str, str], simulation: bool, absolute_output: bool, on_submitted: Callable[[str], None] | None,
    extra: dict[str, Any] | None = None,
) -> int:
    """:func:`run_and_check` once the config is loaded."""
    link = [superlink] if superlink else []
    federation = [
        "--federation-config",
        f"num-supernodes={cfg.data.num_clients} "
        f"client-resources-num-cpus={cfg.engine.client_num_cpus} "
        f"client-resources-num-gpus={cfg.engine.client_num_gpus}",
    ] if simulation else []
    with tempfile.TemporaryDirectory(prefix="fedmtl-flwr-") as tmp:
        run_config = resolved_run_config(cfg, Path(tmp), absolute_output, extra)
        submitted = _flwr(
            ["run", str(app_dir), *link, "--run-config", str(run_config), *federation, "--format", "json"],
            env,
            timeout=600,
        )
    if not submitted.get("success"):
        print(f"error: flwr run did not start the run: {submitted}", file=sys.stderr)
        return 1
    run_id = str(submitted["run-id"])
    print(f"Flower run {run_id} submitted; waiting for it to finish", flush=True)
    if on_submitted is not None:
        on_submitted(run_id)
    logs = stream_logs(["flwr", "log", run_id, *link, "--stream"], env) if stream else None
    try:
        status = wait_for_run(run_id, link, env, timeout, logs)
        if status is None:
            print(f"error: run {run_id} not finished after {timeout:.0f} s", file=sys.stderr)
            return 1
    finally:
        if logs is not None:
            time.sleep(1.0)
            logs.terminate()
            logs.wait(timeout=10)
    if status["status"] == "finished:completed":
        print(f"Flower run {run_id}: finished:completed", flush=True)
        return 0
    print(f"error: Flower run {run_id}: {status['status']}: {status.get('status-details', '')}", file=sys.stderr)
    return 1
