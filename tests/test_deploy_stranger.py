"""A stranger holding only the CA certificate cannot take over a client of a deployment.

One ``fedmtl deploy local --nodes 2`` run (TLS and SuperNode authentication, the defaults) in
which a stranger holding only ``ca.crt`` registers a key of its own and starts a SuperNode
claiming client 0: fedmtl must never give it client 0's work. In a file of its own so the
two test workers run it beside tests/test_deploy.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedmtl.launch.certificates import make_node_keys
from tests.deploy_support import (
    assert_heads_chain_unbroken,
    free_port_number,
    heads_chain,
    last_round,
    processes,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_a_stranger_with_the_ca_certificate_cannot_take_over_a_client(tmp_path, flwr_home):
    from fedmtl.launch.flwr_run import _flwr, connection_env

    runs = tmp_path / "runs"
    config = tmp_path / "deploy.toml"
    config.write_text((ROOT / "configs/smoke.toml").read_text()
                      .replace("[run]\n", f'[run]\noutput-dir = "{runs}"\nevaluate-every = 4\n')
                      .replace("rounds = 2", "rounds = 4"))  # the stranger is refused in round 2, 3 or 4
    output = (tmp_path / "deploy.out").open("w")
    deploy = subprocess.Popen(  # TLS and SuperNode authentication are the defaults
        [sys.executable, "-m", "fedmtl", "deploy", "local", str(config), "--nodes", "2", "--app-dir", str(ROOT)],
        stdout=output, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
    )
    stranger_dir = tmp_path / "stranger"
    stranger_node: subprocess.Popen | None = None
    try:
        folder = wait_for(lambda: next(iter(runs.glob("deploy-*")), None), 120, "the deployment folder", deploy)
        run_dir = wait_for(lambda: next(iter(runs.glob("smoke-*")), None), 240, "the run folder", deploy)
        wait_for(lambda: last_round(run_dir) >= 1, 300, "round 1", deploy)

        # the stranger: only the CA certificate (public), the SuperLink's address and a key of its own
        link = next(a for a in processes(str(folder)).values()
                    if any(Path(x).name == "flower-superlink" for x in a[:2]))
        port = link[link.index("--port") + 1]
        stranger_dir.mkdir()
        ca = stranger_dir / "ca.crt"
        ca.write_bytes((folder / "certificates" / "ca.crt").read_bytes())
        own = make_node_keys(stranger_dir, "own-key")
        env = connection_env("target", f"127.0.0.1:{port}", ca, home=stranger_dir / "flwr-home")
        try:
            registered = _flwr(["supernode", "register", str(own["public"]), "target", "--format", "json"], env)
        except RuntimeError as refused:  # what Flower would do with a Control API credential
            registered = {"success": False, "refused": str(refused)}
        if registered.get("success"):
            # Flower 1.41's Control API asks for no credential: the key is registered, the
            # SuperLink admits its SuperNode, and only fedmtl's admission stands in the way
            heads = stranger_dir / "heads"
            heads.mkdir()
            log = (stranger_dir / "supernode.log").open("w")
            stranger_node = subprocess.Popen(
                ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(ca),
                 "--auth-supernode-private-key", str(own["private"]), "--isolation", "subprocess",
                 "--node-config", f'partition-id=0 num-partitions=2 head-store-dir="{heads}"',
                 "--host", "127.0.0.1", "--port", str(free_port_number())],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            refusal = f"node {registered['node-id']} is not one of the 2 SuperNodes this deployment registered"
            wait_for(lambda: refusal in (tmp_path / "deploy.out").read_text(), 600,
                      "the server to refuse the stranger's node", deploy)

        deploy.wait(timeout=900)
        out, err = (tmp_path / "deploy.out").read_text(), deploy.stderr.read()
        assert deploy.returncode == 0, out[-3000:] + err[-3000:]
        assert "finished:completed" in out and "(TLS, SuperNode auth)" in out and "warning:" not in err
        assert "reconnected" not in out  # client 0 stayed on its own node
        if stranger_node is not None:
            assert stranger_node.poll() is None, "the stranger's SuperNode was not admitted by the SuperLink"
            assert not any((stranger_dir / "heads").iterdir()), "the stranger's node served a client"

        # client 0 trained in every round on its own heads: fingerprint in == previous round's out
        table = heads_chain(run_dir, 0)
        assert list(table.index) == list(range(1, 5))
        assert_heads_chain_unbroken(table)
    finally:
        if deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGINT)
            deploy.wait(timeout=60)
        if stranger_node is not None and stranger_node.poll() is None:
            os.killpg(stranger_node.pid, signal.SIGKILL)
            stranger_node.wait(timeout=30)
    leftover = {p: a for p, a in processes(str(tmp_path)).items() if "pytest" not in " ".join(a)}
    assert not leftover, leftover
