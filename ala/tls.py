"""TLS between the services and the broker, for a lab: a self-signed CA and a server certificate, made by
`ala tls generate`, used by the embedded broker (`ALA_BROKER_TLS_DIR`) and trusted by the services
(`ALA_NATS_TLS_CA_FILE`; `ala up` sets it). Clients still log in with their passwords (`ala/security.py`); TLS
keeps those and the traffic off the wire in clear.

Files in the directory: `ca.pem` (give it to every service), `server.pem` and `server-key.pem` (the broker's;
mode 0600). The server certificate names `localhost`, `127.0.0.1`, `nats` and the hosts asked for.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "nats")
VALID_FOR = datetime.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server-key.pem"

    def exist(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ALA lab"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def generate(directory: Path, hosts: tuple[str, ...] = ()) -> TlsFiles:
    """A new CA and a server certificate for `DEFAULT_HOSTS` and `hosts`, written to `directory`."""
    files = TlsFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ALA lab CA"))
        .issuer_name(_name("ALA lab CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName([_alt_name(host) for host in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, key)
    return files


def ensure(directory: Path, hosts: tuple[str, ...] = ()) -> TlsFiles:
    """The certificate in `directory`, generated there first where there is none (as the passwords are): a broker in
    a container makes its own on its first start, and the services trust its ca.pem from the shared secrets volume.
    Written to a scratch folder and renamed into place, so that cluster nodes starting together keep one."""
    files = TlsFiles(directory)
    if files.exist():
        return files
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    generate(scratch, hosts)
    scratch.chmod(0o755)  # ca.pem and server.pem are public; the key stays 0600
    try:
        scratch.rename(directory)  # replaces an empty folder (a fresh volume); fails on one that has files
    except OSError:
        shutil.rmtree(scratch)  # another node generated it first: keep that one
    return files


def client_context(ca_file: str) -> ssl.SSLContext:
    """What a service connects with: verify the broker's certificate against the lab CA."""
    return ssl.create_default_context(cafile=ca_file)


def render_tls(files: TlsFiles) -> str:
    """The nats-server `tls` block: the server's certificate; clients verify it (their login is the password)."""
    return "\n".join(
        [
            "tls {",
            f'  cert_file: "{files.cert}"',
            f'  key_file: "{files.key}"',
            f'  ca_file: "{files.ca}"',
            "  timeout: 2",
            "}",
        ]
    )
