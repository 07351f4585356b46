"""The local cloud's certificate authority (``localcloud.machines.tls``): made once and shared
by test workers and local clouds, so it must be made by one of them at a time and whole; a
server certificate is reused only while it is this authority's, for exactly its names."""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

from cryptography import x509

from localcloud.machines.tls import SYNAPSE_NAMES, aws_names, ensure_authority


def names(pem: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_certificates_are_kept_while_they_are_this_authoritys_for_their_names(
    tmp_path: Path,
) -> None:
    first = ensure_authority(tmp_path, "us-east-1")
    assert names(first.server_cert) == aws_names("us-east-1")
    assert names(first.synapse_pem) == list(SYNAPSE_NAMES)  # the cert after the key
    kept = first.synapse_pem.read_bytes()
    assert ensure_authority(tmp_path, "us-east-1").synapse_pem.read_bytes() == kept
    assert oct(first.synapse_pem.stat().st_mode & 0o777) == "0o600"

    # a certificate for other names (here AWS's) is made again for Synapse's
    shutil.copy(first.server_cert, tmp_path / "synapse.pem")
    shutil.copy(first.server_pem, tmp_path / "synapse.key+cert.pem")
    again = ensure_authority(tmp_path, "us-east-1")
    assert names(again.synapse_pem) == list(SYNAPSE_NAMES)

    # a new authority: every certificate is made again, signed by it
    for name in ("ca.key", "ca.pem"):
        (tmp_path / name).unlink()
    renewed = ensure_authority(tmp_path, "us-east-1")
    ca = x509.load_pem_x509_certificate(renewed.ca_cert.read_bytes())
    for pem in (renewed.server_cert, renewed.synapse_pem):
        x509.load_pem_x509_certificate(pem.read_bytes()).verify_directly_issued_by(ca)


def test_concurrent_makers_make_one_authority(tmp_path: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: ensure_authority(tmp_path, "us-east-1"), range(8)))
    assert len({a.ca_cert.read_bytes() for a in made}) == 1
    ca = x509.load_pem_x509_certificate(made[0].ca_cert.read_bytes())
    x509.load_pem_x509_certificate(made[0].synapse_pem.read_bytes()).verify_directly_issued_by(ca)
    assert not list(tmp_path.glob(".*.tmp"))
