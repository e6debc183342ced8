"""A real Flower deployment on loopback: SuperLink + SuperNodes as processes, TLS, node auth.

One ``fedmtl deploy local --nodes 2 --no-auth`` run of the smoke config; while it runs the
test kills SuperNode 0 between rounds and starts it again with the same command line (its
heads must survive in its on-disk store), and starts a SuperNode whose key was never
registered (the SuperLink must refuse it). The stranger holding only ``ca.crt`` is in
tests/test_deploy_stranger.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmtl.launch.certificates import make_node_keys, make_tls_certificates
from tests.deploy_support import assert_heads_chain_unbroken, heads_chain, last_round, processes, wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_certificates_cover_the_hosts_and_keys_are_openssh(tmp_path):
    from cryptography import x509

    paths = make_tls_certificates(tmp_path / "certs", ["superlink", "10.0.0.7"])
    cert = x509.load_pem_x509_certificate(paths["certificate"].read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    keys = make_node_keys(tmp_path / "keys", "node")
    assert keys["public"].read_text().startswith("ecdsa-sha2-nistp384 ")
    assert "OPENSSH PRIVATE KEY" in keys["private"].read_text()
    assert oct(keys["private"].stat().st_mode & 0o777) == "0o600"


def test_key_files_are_created_with_their_final_mode_and_owner(tmp_path):
    from fedmtl.launch.certificates import make_secret

    # a loose umask must not leak into private files, which are never chmod-ed after writing
    old = os.umask(0)
    try:
        owner = (49999, 49999) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        paths = make_tls_certificates(tmp_path / "certs", owner=owner)
        keys = make_node_keys(tmp_path / "keys", "supernode-0", owner=owner)
        secret = make_secret(tmp_path / "secrets" / "superexec.secret", owner=owner)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*paths.values(), tmp_path / "certs" / "ca.key",
                                                      *keys.values(), secret]}
    assert modes == {"ca.crt": 0o644, "server.pem": 0o644, "server.key": 0o600, "ca.key": 0o600,
                     "supernode-0": 0o600, "supernode-0.pub": 0o644, "superexec.secret": 0o600}
    for path in [*paths.values(), *keys.values(), secret, secret.parent]:
        assert (path.stat().st_uid, path.stat().st_gid) == owner, path
    assert len(secret.read_bytes()) == 64 and secret.read_bytes() != make_secret(tmp_path / "other").read_bytes()


def test_certs_refuse_a_validity_below_a_day_and_keep_an_existing_ca_unless_forced(tmp_path):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    runner, folder = CliRunner(), tmp_path / "certs"
    for days in ("0", "-1"):
        result = runner.invoke(cli, ["deploy", "certs", str(folder), "--days", days])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [
            f"error: --days {days}: a certificate must be valid for at least 1 day"], result.output
        assert not folder.exists()
    assert runner.invoke(cli, ["deploy", "certs", str(folder), "--days", "1"]).exit_code == 0
    ca = (folder / "ca.crt").read_bytes()
    result = runner.invoke(cli, ["deploy", "certs", str(folder)])
    assert result.exit_code == 2 and (folder / "ca.crt").read_bytes() == ca
    assert result.output.strip().splitlines() == [
        f"error: '{folder / 'ca.crt'}' exists: a new CA would lock out every SuperNode and flwr CLI holding it; "
        "--force replaces it (then give them the new ca.crt)"]
    assert runner.invoke(cli, ["deploy", "certs", str(folder), "--force"]).exit_code == 0
    assert (folder / "ca.crt").read_bytes() != ca


def test_keys_keep_existing_key_pairs_unless_forced(tmp_path):
    """A new key pair for a SuperNode whose old key is registered locks it out (Flower refuses it,
    exit code 305): keys already there are kept unless --force, as certs keeps a CA."""
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    runner, folder = CliRunner(), tmp_path / "keys"
    assert runner.invoke(cli, ["deploy", "keys", str(folder), "--nodes", "2"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for nodes in ("2", "3"):  # a third node's keys are new, but the first two's would be replaced
        result = runner.invoke(cli, ["deploy", "keys", str(folder), "--nodes", nodes])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [
            f"error: '{folder / 'supernode-0'}' exists (and 3 more): a new key pair would lock out the SuperNode "
            "whose key is registered; --force replaces them (then register the new .pub files: fedmtl deploy "
            "register)"], result.output
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert runner.invoke(cli, ["deploy", "keys", str(folder), "--nodes", "2", "--force"]).exit_code == 0
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before)


def test_certs_and_keys_refuse_bad_options_in_one_line_and_write_nothing(tmp_path):
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    runner, folder, afile = CliRunner(), tmp_path / "certs", tmp_path / "a-file"
    afile.write_text("")
    refusals = [
        (["certs", str(folder), "--days", "3000000"], "--days 3000000: a certificate is valid for at most 36500 days"),
        (["certs", str(folder), "--host", ""], "--host '': a host name cannot be empty"),
        (["certs", str(folder), "--host", "a\nb"], "--host 'a\\nb': host name 'a\\nb' holds spaces or control"),
        (["certs", str(folder), "--host", "bücher.de"], "--host 'bücher.de': host name 'bücher.de' is not ASCII: "
                                                        "give its IDNA form (xn--bcher-kva.de)"),
        (["certs", str(afile)], f"'{afile}' is not a folder; give a folder to write into"),
        (["keys", str(afile)], f"'{afile}' is not a folder; give a folder to write into"),
    ]
    for args, message in refusals:
        result = runner.invoke(cli, ["deploy", *args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not folder.exists() and afile.read_text() == ""
    # a long host name is the certificate's name all the same (an X.509 common name holds 64 characters)
    long = "n" * 70 + ".example.org"
    assert runner.invoke(cli, ["deploy", "certs", str(folder), "--host", long]).exit_code == 0
    from cryptography import x509

    names = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [long]


def test_a_deployment_stops_its_superlink_before_its_supernodes(tmp_path, monkeypatch):
    """With the SuperNodes stopped first, the ServerApp (run by the SuperLink) went on against
    dead nodes and recorded rounds, and a checkpoint, that trained nothing."""
    from fedmtl.launch.deploy import LocalDeployment

    deployment = LocalDeployment(tmp_path / "d", 2)
    deployment.processes = {"supernode-0": None, "superlink": None, "supernode-1": None}
    stopped: list[str] = []
    monkeypatch.setattr(deployment, "stop_process", lambda name: stopped.append(name) or deployment.processes.pop(name))
    deployment.stop()
    assert stopped == ["superlink", "supernode-0", "supernode-1"] and not deployment.processes


def test_a_signal_during_the_stop_waits_until_every_process_is_stopped(tmp_path, monkeypatch):
    """A SIGTERM that came while the deployment stopped cut the stop short: a SuperNode and its
    SuperExec ran on, orphaned."""
    from fedmtl.launch.deploy import LocalDeployment

    deployment = LocalDeployment(tmp_path / "d", 2)
    deployment.processes = {"superlink": None, "supernode-0": None, "supernode-1": None}
    stopped: list[str] = []

    def stop_process(name: str) -> None:
        if name == "superlink":
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `docker stop` sends it
            time.sleep(0.2)
        stopped.append(name)
        deployment.processes.pop(name)

    monkeypatch.setattr(deployment, "stop_process", stop_process)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt):
            deployment.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped == ["superlink", "supernode-0", "supernode-1"] and not deployment.processes


def test_an_ignored_signal_during_the_stop_stays_ignored():
    """A deployment started as a background job ignores SIGINT: one during its stop must not
    turn into an interrupt (exit 130 in place of the run's own exit code)."""
    from fedmtl.launch.interrupt import signals_deferred

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deploy_refuses_bad_options(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text((ROOT / "configs/smoke.toml").read_text())
    refusals = [
        (["deploy", "local", "--nodes", "1"], "data.num-clients = 2"),
        (["deploy", "local", "--insecure", "--auth"], "--auth needs --tls"),
        (["deploy", "local", "--nodes", "0"], "--nodes = 0: start at least 1 SuperNode"),
        (["deploy", "local", "--timeout", "0"], "--timeout = 0.0: give the seconds to wait for the run"),
        (["flwr-run", "--timeout", "-5"], "--timeout = -5.0: give the seconds to wait for the run"),
        (["flwr-run", "--timeout", "nan"], "--timeout = nan: give the seconds to wait for the run"),
    ]
    from typer.testing import CliRunner

    from fedmtl.cli import cli

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)  # the config's run.output-dir ("runs") is relative
    for args, message in refusals:
        words = 2 if args[0] == "deploy" else 1  # the command, then the config, then the options
        result = runner.invoke(cli, [*args[:words], str(config), *args[words:]])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, result.output)
    assert not (tmp_path / "runs").exists()  # refused before anything was submitted or started


def test_tls_deployment_survives_a_supernode_restart(tmp_path, flwr_home):
    runs = tmp_path / "runs"
    config = tmp_path / "deploy.toml"
    config.write_text((ROOT / "configs/smoke.toml").read_text()
                      .replace("[run]\n", f'[run]\noutput-dir = "{runs}"\nevaluate-every = 3\n')
                      .replace("rounds = 2", "rounds = 3")
                      # a reply lost with the killed SuperNode is waited for this long
                      .replace("[server]\n", "[server]\ntimeout = 120.0\n")
                      # a personalization method beyond FedPer's (its heads live in the same store)
                      + '\n[personalization]\nmethod = "fedrep"\n')
    deploy = subprocess.Popen(
        [sys.executable, "-m", "fedmtl", "deploy", "local", str(config), "--nodes", "2", "--tls", "--no-auth",
         "--app-dir", str(ROOT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
    )
    ours: list[subprocess.Popen] = []
    try:
        folder = wait_for(lambda: next(iter(runs.glob("deploy-*")), None), 120, "the deployment folder", deploy)
        run_dir = wait_for(lambda: next(iter(runs.glob("smoke-*")), None), 240, "the run folder", deploy)
        wait_for(lambda: last_round(run_dir) >= 1, 300, "round 1", deploy)

        # stop SuperNode 0 between rounds (SIGTERM, as `docker restart` does) and start it again
        # with the same command line
        node = wait_for(lambda: {p: a for p, a in processes(str(folder)).items()
                                  if any(Path(x).name == "flower-supernode" for x in a[:2])
                                  and "partition-id=0" in " ".join(a)}, 30, "supernode-0's process")
        pid, argv = next(iter(node.items()))
        env = dict(kv.split("=", 1)
                   for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in kv)
        killed_after = last_round(run_dir)
        os.killpg(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(),
                  60, "supernode-0 to stop")
        log = (folder / "logs" / "restarted-supernode-0.log").open("w")
        # the SuperLink refuses the same key (exit 305) until it sees the old node offline: retry
        deadline = time.monotonic() + 150
        while True:
            restarted = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            ours.append(restarted)
            try:
                restarted.wait(timeout=10)
            except subprocess.TimeoutExpired:
                break  # connected and running
            assert time.monotonic() < deadline, "the restarted SuperNode never got back in"
            time.sleep(3)

        out, err = deploy.communicate(timeout=600)
        assert deploy.returncode == 0, out[-3000:] + err[-3000:]
        assert "finished:completed" in out and f"Results: {run_dir}" in out
        assert (run_dir / "summary.json").is_file()
        assert 'method = "fedrep"' in (run_dir / "config.toml").read_text()
        assert "(TLS)" in out and "reconnected" in out  # the server followed the new node id
        assert "warning: --no-auth: any process" in err  # opting out of auth is said on the terminal

        # the restarted SuperNode found its heads: fingerprint in == its previous fingerprint out
        table = heads_chain(run_dir, 0)
        assert any(r > killed_after for r in table.index), "client 0 never trained after its restart"
        assert any(r <= killed_after for r in table.index)
        assert_heads_chain_unbroken(table)
    finally:
        if deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGINT)
            deploy.wait(timeout=60)
        for proc in ours:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    # everything the deployment started is gone
    leftover = {p: a for p, a in processes(str(tmp_path)).items() if "pytest" not in " ".join(a)}
    assert not leftover, leftover


def test_supernode_authentication_admits_registered_keys_only(tmp_path, flwr_home):
    from fedmtl.launch.deploy import LocalDeployment

    with LocalDeployment(tmp_path / "deploy", nodes=1, tls=True, auth=True) as deployment:
        deployment.start()  # registers supernode-0's key, then starts it
        stranger = make_node_keys(tmp_path / "stranger", "stranger")
        refused = deployment.start_supernode(0, private_key=stranger["private"], name="stranger")
        assert refused.wait(timeout=120) != 0
        assert "Failed to" in deployment.log_tail("stranger"), deployment.log_tail("stranger")
        wait_for(lambda: "Activated node_id" in (deployment.folder / "logs" / "superlink.log").read_text(),
                  120, "the registered SuperNode to connect")
        assert deployment.exited() == {"stranger": refused.returncode}  # supernode-0 stays connected
    assert not processes(str(tmp_path / "deploy"))


def test_admission_admits_the_registered_node_ids_only(tmp_path, monkeypatch):
    from fedmtl.server.admission import ADMITTED_NODES_ENV, Admission, AdmissionError, write_admitted_nodes
    from fedmtl.server.discovery import ClientDirectory

    path = write_admitted_nodes(tmp_path / "admitted-nodes", [11, 13])
    assert path.stat().st_mode & 0o777 == 0o644
    admission = Admission.from_environment({ADMITTED_NODES_ENV: str(path)})
    assert admission.screen([13, 12, 11, 12]) == [13, 11] and admission.refused == {12}
    assert Admission.from_environment({}).screen([12, 99]) == [12, 99]  # no list: every node
    monkeypatch.setenv(ADMITTED_NODES_ENV, str(path))
    assert ClientDirectory(2).admission.admitted == {11, 13}  # the server's discovery uses it
    for text, message in (("11\nnode-7\n", "line 2: 'node-7' is not a node id"), ("# none\n", "no node id")):
        path.write_text(text)
        with pytest.raises(AdmissionError, match=message):
            Admission.from_environment({ADMITTED_NODES_ENV: str(path)})
    with pytest.raises(AdmissionError, match="missing-file': cannot read"):
        Admission.from_environment({ADMITTED_NODES_ENV: str(tmp_path / "missing-file")})
