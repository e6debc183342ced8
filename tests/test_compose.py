"""The Docker deployment files: `docker-compose config` validates them (Debian's docker-compose
in CI; no Docker engine runs here), and the resolved services are what docs/deploy.md promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")


def _config(*files: str, **env: str) -> dict:
    if COMPOSE is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing in CI (.ci/run installs it)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    args = [COMPOSE, *[a for f in files for a in ("-f", f)], "config"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _flag(command: list[str], name: str) -> str | None:
    for item in command:
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
    return None


def test_compose_file_is_valid_and_tls_is_on_by_default():
    config = _config("docker-compose.yml", NUM_SUPERNODES="4")
    services = config["services"]
    link = services["superlink"]["command"]
    assert services["superlink"]["image"] == "flwr/superlink:1.41.0"
    assert _flag(link, "--ssl-certfile") and _flag(link, "--ssl-keyfile") and _flag(link, "--ssl-ca-certfile")
    assert "--insecure" not in link and _flag(link, "--database") == "state/state.db"
    assert any(v["target"] == "/app/state" for v in _volumes(services["superlink"]))
    assert _flag(services["serverapp"]["command"], "--runtime-api-address") == "superlink:8000"
    for i in range(8):
        node = services[f"supernode-{i}"]
        assert _flag(node["command"], "--node-config") == (
            f'partition-id={i} num-partitions=4 head-store-dir="/app/heads"'
        )
        assert _flag(node["command"], "--root-certificates") == "certificates/ca.crt"
        heads = [v for v in _volumes(node) if v["target"] == "/app/heads"]
        assert heads and heads[0]["source"] == f"heads-{i}"
    profiles = {name: set(s.get("profiles", [])) for name, s in services.items()}
    assert not profiles["supernode-0"] and not profiles["supernode-1"]
    assert "n4" in profiles["supernode-3"] and "n4" not in profiles["supernode-4"]


@pytest.mark.parametrize("nodes", ["2", "4"])
def test_the_submitted_experiment_has_as_many_clients_as_supernodes(nodes):
    """The `submit` service sets data.num-clients to NUM_SUPERNODES: the documented steps (4
    SuperNodes, configs/quickstart.toml of 20 clients) and the defaults (2) both run."""
    from fedmtl.validation import load_config

    env = {"NUM_SUPERNODES": nodes} if nodes != "2" else {}
    entrypoint = _config("docker-compose.yml", **env)["services"]["submit"]["entrypoint"]
    config = entrypoint[entrypoint.index("flwr-run") + 1]
    sets = [entrypoint[i + 1] for i, item in enumerate(entrypoint) if item == "--set"]
    assert sets == [f"data.num-clients={nodes}"]
    clients = load_config(ROOT / config).data.num_clients
    assert load_config(ROOT / config, sets).data.num_clients == int(nodes) != clients


def test_auth_overlay_registers_keys_and_keeps_tls():
    services = _config("docker-compose.yml", "docker-compose.auth.yml")["services"]
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    for i in range(8):
        command = services[f"supernode-{i}"]["command"]
        assert _flag(command, "--auth-supernode-private-key") == f"keys/supernode-{i}"
        assert _flag(command, "--root-certificates") == "certificates/ca.crt"


def test_remote_supernode_is_configured_by_environment():
    services = _config("docker-compose.yml", SUPERLINK_ADDRESS="10.0.0.5:8000", PARTITION_ID="5",
                       NUM_SUPERNODES="8")["services"]
    command = services["supernode"]["command"]
    assert _flag(command, "--superlink") == "10.0.0.5:8000"
    assert _flag(command, "--node-config").startswith("partition-id=5 num-partitions=8")


def _volumes(service: dict) -> list[dict]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            out.append({"source": source, "target": target})
        else:
            out.append(v)
    return out


@pytest.mark.parametrize("dockerfile", ["server/Dockerfile", "clients/Dockerfile"])
def test_dockerfiles_build_on_the_pinned_official_images(dockerfile):
    text = (ROOT / dockerfile).read_text()
    pinned = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if "flwr[simulation]" in line)
    assert "ARG FLWR_VERSION=1.41.0" in text and ">=1.41,<1.42" in pinned
    image = "flwr/superexec" if dockerfile.startswith("server") else "flwr/supernode"
    assert f"FROM {image}:${{FLWR_VERSION}}" in text
    assert '"torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu' in text


# -- what the files say, read without docker-compose (these run everywhere) -----------------

FLWR_UID = "49999:49999"  # the `app` user of Flower's images (Flower's docs: "Enable TLS")


def _raw(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["services"]


def _mounts(service: dict) -> list[tuple[str, str]]:
    """``(source, target)`` of a raw service's volumes (a ``:`` inside ``${...}`` is no separator)."""
    out = []
    for v in service.get("volumes", []):
        source, target = re.split(r":(?![^{]*\})", v)[:2] if isinstance(v, str) else (v["source"], v["target"])
        out.append((source, target))
    return out


def _supernodes(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if name.startswith("supernode")}


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.auth.yml")])
def test_only_the_fleet_api_is_published(files):
    for name in files:
        services = _raw(name)
        published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
        assert published == ({"fleet": ["${FLEET_PORT:-9092}:9092"]} if name == "docker-compose.yml" else {})
    services = _raw("docker-compose.yml")
    assert services["superlink"]["networks"] == ["control"] and services["serverapp"]["networks"] == ["control"]
    assert sorted(services["fleet"]["networks"]) == ["control", "fleet"]
    for name, node in _supernodes(services).items():
        assert node["networks"] == ["fleet"], name  # no route to the SuperLink's Control API
        assert _flag(node["command"], "--superlink") in ("fleet:9092", "${SUPERLINK_ADDRESS:-fleet:9092}"), name
    proxy = (ROOT / "deploy" / "fleet-proxy.conf").read_text()
    locations = [line.split()[1] for line in proxy.splitlines() if line.strip().startswith("location")]
    assert locations == ["/v1/fleet/", "/"]
    assert proxy.split("location / {")[1].split("}")[0].split() == ["return", "403;"]
    assert "proxy_ssl_verify on;" in proxy and "listen 9092 ssl;" in proxy


@pytest.mark.parametrize("overlay", [False, True])
def test_supernodes_get_only_the_ca_certificate_and_their_own_key(overlay):
    services = _raw("docker-compose.auth.yml" if overlay else "docker-compose.yml")
    for name, node in _supernodes(services).items():
        mounts = [m for m in _mounts(node) if not m[0].startswith("heads-")]
        partition = name.split("-")[1] if "-" in name else "${PARTITION_ID:-0}"
        expected = [("./deploy/certificates/ca.crt", "/app/certificates/ca.crt")]
        if overlay:
            expected.insert(0, (f"./deploy/keys/supernode-{partition}", f"/app/keys/supernode-{partition}"))
        assert mounts == expected, name
    everything = {**_raw("docker-compose.yml"), **_raw("docker-compose.auth.yml")}
    for name, service in everything.items():
        sources = [s for s, _ in _mounts(service)]
        assert not any(s.endswith("ca.key") for s in sources), name
        if name not in ("certs",):
            assert "./deploy/certificates" not in sources, name  # single files, never the folder
        if any(s.endswith("server.key") for s in sources):
            assert name in ("superlink", "fleet"), name


def test_the_superexec_authenticates_with_a_secret_only_it_and_the_superlink_hold():
    services = _raw("docker-compose.yml")
    secret = "secrets/superexec.secret"
    for name in ("superlink", "serverapp"):
        assert _flag(services[name]["command"], "--superexec-auth-secret-file") == secret, name
    assert _flag(_raw("docker-compose.auth.yml")["superlink"]["command"], "--superexec-auth-secret-file") == secret
    assert "--isolation=process" in services["superlink"]["command"]  # Flower ignores the secret otherwise
    holders = {n for n, s in services.items() if any("superexec.secret" in src or src == "./deploy/secrets"
                                                     for src, _ in _mounts(s))}
    assert holders == {"certs", "superlink", "serverapp"}


def test_key_files_are_made_for_the_images_user():
    certs = _raw("docker-compose.yml")["certs"]["entrypoint"]
    keys = _raw("docker-compose.auth.yml")["keys"]["entrypoint"]
    for entrypoint in (certs, keys):
        assert entrypoint[entrypoint.index("--owner") + 1] == FLWR_UID
    assert certs[certs.index("--superexec-secret") + 1] == "/app/secrets/superexec.secret"
    hosts = {certs[i + 1] for i, item in enumerate(certs) if item == "--host"}
    assert {"superlink", "fleet"} <= hosts  # the proxy presents the SuperLink's certificate
    auth = _raw("docker-compose.auth.yml")
    assert auth["serverapp"]["environment"]["FEDMTL_ADMITTED_NODES_FILE"] == "/app/admission/admitted-nodes"
    register = auth["register"]["entrypoint"]
    assert register[register.index("--admitted-nodes") + 1] == "/app/admission/admitted-nodes"
    assert auth["register"]["networks"] == ["control"]
