"""SSH public keys as users paste them (`operations.ssh_keys`), checked against OpenSSH's own
``ssh-keygen``: keys it makes are taken with the fingerprint it prints; what it would refuse,
or what is not a public key line, is refused with a reason the user can act on."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from operations.client import Login, ssh_config
from operations.connect_panel import connect_lines
from operations.ssh_keys import (
    MAX_KEYS,
    KeyRejected,
    PublicKey,
    SshKeyStore,
    parse_public_key,
)


def keygen(tmp_path: Path, kind: str, bits: int | None = None, comment: str = "me@laptop") -> str:
    key = tmp_path / f"id_{kind}_{bits or 0}_{comment}"
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)]
    if bits:
        args[4:4] = ["-b", str(bits)]
    subprocess.run(args, check=True)
    return Path(f"{key}.pub").read_text()


def openssh_fingerprint(line: str, tmp_path: Path) -> str:
    path = tmp_path / "check.pub"
    path.write_text(line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


@pytest.mark.parametrize(
    ("kind", "bits"), [("ed25519", None), ("ecdsa", 256), ("ecdsa", 521), ("rsa", 3072)]
)
def test_keys_ssh_keygen_makes_are_taken_with_its_fingerprint(tmp_path, kind, bits) -> None:
    line = keygen(tmp_path, kind, bits)
    key = parse_public_key(line)
    assert key.fingerprint == openssh_fingerprint(key.line, tmp_path)
    assert key.line == line.strip()
    assert key.comment == "me@laptop"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Paste a public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "DSA"),
        ('command="rm -rf ~" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5', "no options in front"),
        ("ssh-ed25519", "data is missing"),
        ("ssh-ed25519 not!base64", "not valid base64"),
    ],
)
def test_what_is_not_a_plain_public_key_is_refused_with_a_reason(text, reason) -> None:
    with pytest.raises(KeyRejected, match=reason):
        parse_public_key(text)


def test_a_key_whose_data_names_another_type_or_is_cut_is_refused(tmp_path) -> None:
    ed = keygen(tmp_path, "ed25519").split()
    with pytest.raises(KeyRejected, match="does not match its type"):
        parse_public_key(f"ssh-rsa {ed[1]}")
    cut = base64.b64encode(base64.b64decode(ed[1])[:-5]).decode()
    with pytest.raises(KeyRejected, match="cut short"):
        parse_public_key(f"ssh-ed25519 {cut}")


def test_two_keys_at_once_and_odd_comments_are_refused(tmp_path) -> None:
    one, two = keygen(tmp_path, "ed25519"), keygen(tmp_path, "ecdsa", 256)
    with pytest.raises(KeyRejected, match="one key at a time"):
        parse_public_key(one + two)
    data = one.split()[1]
    with pytest.raises(KeyRejected, match="comment"):
        parse_public_key(f"ssh-ed25519 {data} caf\u00e9")


def test_a_short_rsa_key_is_refused_naming_its_size(tmp_path) -> None:
    with pytest.raises(KeyRejected, match="1024 bits"):
        parse_public_key(keygen(tmp_path, "rsa", 1024))


def test_the_store_keeps_each_users_keys_apart_and_limits_them(tmp_path) -> None:
    store = SshKeyStore(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    alice = parse_public_key(keygen(tmp_path, "ed25519", comment="alice"))
    store.add("alice", alice)
    with pytest.raises(KeyRejected, match="already on your list"):
        store.add("alice", alice)
    assert store.authorized_keys("alice") == [alice.line]
    assert store.authorized_keys("bob") == []
    assert not store.remove("bob", alice.fingerprint)  # bob cannot remove alice's key
    for n in range(MAX_KEYS - 1):
        store.add("alice", parse_public_key(keygen(tmp_path, "ed25519", comment=f"k{n}")))
    with pytest.raises(KeyRejected, match=f"{MAX_KEYS} keys already"):
        store.add("alice", parse_public_key(keygen(tmp_path, "ed25519", comment="one more")))
    assert store.remove("alice", alice.fingerprint)
    assert alice.line not in store.authorized_keys("alice")
    assert store.forget("alice") == MAX_KEYS - 1


def test_long_rsa_keys_are_refused_before_they_overflow_the_parameter(tmp_path) -> None:
    """The keys travel in the server's ``config`` parameter (a 4 KiB standard String)."""
    store = SshKeyStore("sqlite://")
    with pytest.raises(KeyRejected, match="would not fit"):
        for n in range(MAX_KEYS):
            store.add("alice", parse_public_key(keygen(tmp_path, "rsa", 3072, comment=f"k{n}")))
    assert 0 < len(store.keys("alice")) < MAX_KEYS


def test_the_panel_and_ssh_config_agree_on_the_host_name() -> None:
    lines = connect_lines("https://hub.example.org/", "alice", ["", "gpu"], "jovyan")
    assert lines.login == "snh login --hub https://hub.example.org"
    assert lines.ssh_config.splitlines() == [
        "snh ssh-config >> ~/.ssh/config",
        "snh ssh-config --server gpu >> ~/.ssh/config",
    ]
    assert [s.ssh for s in lines.servers] == ["ssh snh-alice", "ssh snh-alice-gpu"]
    block = ssh_config(Login("https://hub.example.org", "t", "alice"), "alice", "gpu")
    assert "Host snh-alice-gpu\n" in block and "User jovyan\n" in block
    local = connect_lines("http://127.0.0.1:8000", "alice", [""], "root")
    assert local.ssh_config == "snh ssh-config --ssh-user root >> ~/.ssh/config"


def test_a_public_key_line_round_trips() -> None:
    key = PublicKey("ssh-ed25519", base64.b64encode(b"\0\0\0\x0bssh-ed25519").decode(), "")
    assert parse_public_key(key.line) == key
