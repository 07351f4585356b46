"""The local cloud's certificate authority: HTTPS to "AWS" and "Synapse" from inside a
real-boot machine.

Instance software calls AWS at its public names over HTTPS (``https://ssm.us-east-1.
amazonaws.com``: the AWS CLI in the bootstrap, the SDK in the notebook container), and
synapseclient calls Synapse at its (``https://repo-prod.prod.sagebase.org``); both check the
certificate against the system's trust store. To answer those calls from the local cloud
with nothing changed in that software, a machine resolves those names to its loopback
(``links``), where the local cloud's link terminates TLS with a certificate for them signed by
this authority, which is added to the machine's trust store (and its containers') — only the
machine's: the host and the hub never trust it.

The authority is made once and kept beside the cached root file systems (a new one at every
run would be as good, but slower); its key never leaves the host's cache and the links.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .rootfs import locked

VALID_DAYS = 3650


def aws_names(region: str) -> list[str]:
    """The names a certificate for a region's AWS endpoints must cover (a wildcard covers one
    label: ``*.us-east-1.amazonaws.com`` for regional services, ``*.amazonaws.com`` for the
    global ones such as ``sts.amazonaws.com`` and ``iam.amazonaws.com``)."""
    return [f"*.{region}.amazonaws.com", "*.amazonaws.com"]


#: Synapse's public names that synapseclient calls with its default endpoints
#: (``synapseclient.client.PRODUCTION_ENDPOINTS``: repo, auth and file services and the
#: portal, each of which it asks for a redirect when it starts).
SYNAPSE_NAMES = (
    "repo-prod.prod.sagebase.org",
    "auth-prod.prod.sagebase.org",
    "file-prod.prod.sagebase.org",
    "www.synapse.org",
)


@dataclass(frozen=True)
class Authority:
    """The PEM files of the authority and of the server certificates it signed."""

    ca_cert: Path
    server_cert: Path
    #: the server certificate's key followed by the certificate (socat's ``cert=``)
    server_pem: Path
    #: the same for Synapse's names
    synapse_pem: Path


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Whole or not at all: a reader (another test worker, a machine's links) never sees a
    file half written."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(partial, path)


def _write_private(path: Path, data: bytes) -> None:
    _write(path, data, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synapse Notebook Hub local cloud"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_authority(directory: Path, region: str) -> Authority:
    """The authority in ``directory`` (made the first time) and its certificates for the AWS
    names of ``region`` and for Synapse's. One maker at a time: test workers and local clouds
    share the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory / "authority.lock"):
        return _ensure_authority(directory, region)


def _ensure_authority(directory: Path, region: str) -> Authority:
    ca_key_path, ca_cert_path = directory / "ca.key", directory / "ca.pem"
    now = dt.datetime.now(dt.UTC)
    if ca_key_path.exists() and ca_cert_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("local cloud authority"))
            .issuer_name(_name("local cloud authority"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(
            ca_key_path,
            ca_key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    aws = _server_certificate(directory / f"aws-{region}", aws_names(region), ca_key, ca_cert)
    synapse = _server_certificate(directory / "synapse", list(SYNAPSE_NAMES), ca_key, ca_cert)
    return Authority(ca_cert_path, aws[0], aws[1], synapse[1])


def _server_certificate(
    stem: Path, names: list[str], ca_key: Any, ca_cert: x509.Certificate
) -> tuple[Path, Path]:
    """A certificate for ``names`` signed by the authority: its PEM file and the
    key-and-certificate file socat serves. Made again unless the one there is this
    authority's, for exactly these names, and valid for a month more."""
    cert_path = stem.with_name(stem.name + ".pem")
    pem_path = stem.with_name(stem.name + ".key+cert.pem")
    now = dt.datetime.now(dt.UTC)
    if _usable(cert_path, pem_path, names, ca_cert, now):
        return cert_path, pem_path
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS - 30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_private(
        pem_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + pem,
    )
    _write(cert_path, pem)  # last: its presence is not taken for the pair's
    return cert_path, pem_path


def _usable(
    cert_path: Path, pem_path: Path, names: list[str], ca_cert: x509.Certificate, now: dt.datetime
) -> bool:
    if not (cert_path.exists() and pem_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        served = x509.load_pem_x509_certificate(pem_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return (
        served == cert
        and san.get_values_for_type(x509.DNSName) == names
        and cert.not_valid_after_utc - now > dt.timedelta(days=30)
    )
