"""The Docker deployment files: `docker-compose config` validates them (Debian's docker-compose
in CI; no Docker engine runs here), and the resolved services are what the README promises."""

from __future__ import annotations

import os
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
