"""TLS certificates for a SuperLink and key pairs for SuperNode authentication.

``make_tls_certificates(folder, hosts)`` writes a self-signed certificate authority
(``ca.crt``, ``ca.key``) and a SuperLink certificate signed by it (``server.pem``,
``server.key``) valid for ``hosts`` (DNS names or IP addresses), the three files that
``flower-superlink --ssl-ca-certfile --ssl-certfile --ssl-keyfile`` takes; SuperNodes and the
``flwr`` CLI trust ``ca.crt``. ``make_node_keys(folder, name)`` writes the ECDSA (P-384) key
pair of one SuperNode in OpenSSH form: the private key for
``flower-supernode --auth-supernode-private-key`` and the public key for
``flwr supernode register``. Both use the ``cryptography`` package (a Flower dependency), so
no ``openssl`` binary is needed. ``make_secret(path)`` writes the shared secret of
``--superexec-auth-secret-file``.

Every file is created with its final permissions (private keys and secrets ``0600``,
certificates and public keys ``0644``), never loosened afterwards, and, with ``owner``
(``(uid, gid)``, e.g. ``(49999, 49999)``, the ``app`` user of Flower's Docker images), owned by
that user before anything is written into it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "superlink")
MAX_DAYS = 36_500
"""The longest validity of a certificate, in days (100 years)."""


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot name the SuperLink in its certificate (``None`` when it can): an IP
    address, or a DNS name of 1 to 253 characters without spaces or control characters."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not host:
        return "a host name cannot be empty"
    if len(host) > 253:
        return f"a host name has at most 253 characters, not {len(host)}"
    if any(c.isspace() or not c.isprintable() for c in host):
        return f"host name {host!r} holds spaces or control characters"
    if not host.isascii():
        try:
            ascii_form = f" ({host.encode('idna').decode()})"
        except UnicodeError:
            ascii_form = ""
        return f"host name {host!r} is not ASCII: give its IDNA form{ascii_form}, as DNS does"
    return None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmtl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


Owner = tuple[int, int] | None
"""``(uid, gid)`` to own the files written, or None (the current user)."""


def write_file(path: Path, data: bytes, mode: int, owner: Owner = None) -> Path:
    """Write ``data`` to ``path``, created with ``mode`` (and ``owner``) before any byte is written.

    An existing file is truncated and given ``mode`` first; symbolic links are not followed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _folder(folder: str | Path, owner: Owner) -> Path:
    folder = Path(folder)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(folder, *owner)
    return folder


def _write_key(key, path: Path, openssh: bool = False, owner: Owner = None) -> None:
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    write_file(path, key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()), 0o600, owner)


def make_tls_certificates(
    folder: str | Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, days: int = 365,
    owner: Owner = None,
) -> dict[str, Path]:
    """Write ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created if missing.
    hosts : sequence of str
        Names and IP addresses the SuperLink is reached at (its certificate's subject
        alternative names); the default covers loopback and the compose service name.
    days : int
        Validity.
    owner : (int, int), optional
        ``(uid, gid)`` owning the folder and files (default: the current user).

    Returns
    -------
    dict[str, Path]
        ``{"ca": ..., "certificate": ..., "key": ...}``.
    """
    if not hosts:
        raise ValueError("make_tls_certificates needs at least one host name or address")
    if problems := [p for p in map(host_problem, hosts) if p]:
        raise ValueError(problems[0])
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"a certificate is valid for 1 to {MAX_DAYS} days, not {days}")
    folder = _folder(folder, owner)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmtl test CA")).issuer_name(_name("fedmtl test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0][:64])).issuer_name(ca.subject)  # a common name has at most 64 characters
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt", "certificate": folder / "server.pem", "key": folder / "server.key"}
    write_file(paths["ca"], ca.public_bytes(serialization.Encoding.PEM), 0o644, owner)
    _write_key(ca_key, folder / "ca.key", owner=owner)
    write_file(paths["certificate"], certificate.public_bytes(serialization.Encoding.PEM), 0o644, owner)
    _write_key(key, paths["key"], owner=owner)
    return paths


def make_node_keys(folder: str | Path, name: str, owner: Owner = None) -> dict[str, Path]:
    """Write the SuperNode key pair ``<name>`` (private) and ``<name>.pub`` (OpenSSH ECDSA P-384).

    Parameters
    ----------
    folder : str or Path
        Created if missing.
    name : str
        File name of the private key.
    owner : (int, int), optional
        ``(uid, gid)`` owning the folder and files (default: the current user).

    Returns
    -------
    dict[str, Path]
        ``{"private": ..., "public": ...}``.
    """
    folder = _folder(folder, owner)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    _write_key(key, private, openssh=True, owner=owner)
    write_file(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n", 0o644, owner)
    return {"private": private, "public": public}


def make_secret(path: str | Path, owner: Owner = None) -> Path:
    """Write 32 random bytes, hex-encoded, to ``path`` (``0600``): a SuperExec auth secret.

    Parameters
    ----------
    path : str or Path
        The file (its folder is created if missing).
    owner : (int, int), optional
        ``(uid, gid)`` owning the folder and file (default: the current user).
    """
    path = Path(path)
    _folder(path.parent, owner)
    return write_file(path, secrets.token_hex(32).encode(), 0o600, owner)
