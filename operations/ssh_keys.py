"""Users' SSH public keys: the hub's page where a user adds and removes them, and the table
that keeps them.

The keys reach a server the way its other settings do: at each start the spawner puts them
in the server's ``config`` parameter (`EC2Spawner.ssh_authorized_keys`, a callable this module
provides), the instance's bootstrap writes them to the file the image's ``sshd`` reads
(``AuthorizedKeysFile``), and nothing of them is ever in user data. A key added or removed
takes effect at the server's next start; the page says so.

What is accepted, and why (each refusal says what to do):

- One public key per submission, in OpenSSH's one-line form ``TYPE BASE64 [comment]`` (what
  ``ssh-keygen`` writes to ``~/.ssh/id_*.pub``). No ``authorized_keys`` options in front
  (``command=``, ``from=``, ``permitopen=`` …): they are the server's business, and a key line
  with options could widen what the key may do.
- Key types OpenSSH 9 accepts by default: Ed25519 and ECDSA (also their FIDO ``sk-`` forms),
  and RSA of at least 2048 bits (NIST SP 800-131A; OpenSSH's own floor, ``RequiredRSASize``,
  is 1024). DSA is refused (OpenSSH 9.8 removed it). The blob must decode and name the same
  type as the line (a mangled paste is caught here, not by a failing ``ssh`` later).
- At most `MAX_KEYS` keys and `MAX_TOTAL_BYTES` of key text per user: the keys travel in the
  server's ``config`` parameter, a Parameter Store ``String`` (4 KiB in the standard tier).

The table lives beside the identity bindings (`authenticator.identities`: the hub's own
database is JupyterHub's schema, not ours), keyed by hub user name and the key's SHA-256
fingerprint, written as ``ssh-keygen -l`` prints it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from jupyterhub.handlers.base import BaseHandler
from tornado import web

from . import audit

MAX_KEYS = 8
MAX_TOTAL_BYTES = 3500
MIN_RSA_BITS = 2048
MAX_COMMENT = 100
#: The key types accepted (OpenSSH's names).
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-rsa",
    }
)
_COMMENT = re.compile(r"[\x20-\x7e]*")
#: The page's URL under the hub (``/hub/ssh-keys``).
PAGE = "/ssh-keys"

metadata = sa.MetaData()
ssh_public_keys = sa.Table(
    "snh_ssh_public_keys",
    metadata,
    sa.Column("hub_username", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("key_type", sa.String(64), nullable=False),
    sa.Column("key_data", sa.Text, nullable=False),
    sa.Column("comment", sa.String(MAX_COMMENT), nullable=False),
    sa.Column("added", sa.DateTime, nullable=False),
)


class KeyRejected(ValueError):
    """A key the hub does not take; the message says why and what to do instead."""


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    data: str  # the base64 blob, as written
    comment: str = ""
    added: dt.datetime | None = None

    @property
    def fingerprint(self) -> str:
        """``SHA256:…`` as ``ssh-keygen -l`` prints it (base64 of the blob's SHA-256, no
        padding): what a user compares with their own key."""
        digest = hashlib.sha256(base64.b64decode(self.data)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        """The ``authorized_keys`` line."""
        return f"{self.key_type} {self.data}" + (f" {self.comment}" if self.comment else "")


def _strings(blob: bytes) -> list[bytes]:
    """The SSH wire ``string``s of a key blob (RFC 4251 §5: uint32 length, bytes)."""
    parts, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise KeyRejected("The key is cut short: paste the whole line of your .pub file.")
        size = int.from_bytes(blob[at : at + 4], "big")
        at += 4
        if at + size > len(blob):
            raise KeyRejected("The key is cut short: paste the whole line of your .pub file.")
        parts.append(blob[at : at + size])
        at += size
    return parts


def parse_public_key(text: str) -> PublicKey:
    """One key from what a user pasted, or `KeyRejected` with the reason."""
    line = " ".join(text.strip().split())
    if not line:
        raise KeyRejected("Paste a public key: the contents of ~/.ssh/id_ed25519.pub, say.")
    if line.startswith("-----BEGIN") or "PRIVATE KEY" in line:
        raise KeyRejected(
            "That is a private key: never paste it anywhere. Paste the .pub file's line instead."
        )
    if "\n" in text.strip():
        raise KeyRejected("Add one key at a time (one line).")
    fields = line.split(" ", 2)
    key_type = fields[0]
    if key_type == "ssh-dss":
        raise KeyRejected("DSA keys are no longer accepted by OpenSSH: make an Ed25519 key.")
    if key_type not in KEY_TYPES:
        raise KeyRejected(
            "The line must start with the key type (ssh-ed25519, ecdsa-sha2-…, ssh-rsa), with "
            "no options in front: paste the line of your .pub file as ssh-keygen wrote it."
        )
    if len(fields) < 2:
        raise KeyRejected("The key's data is missing: paste the whole line of your .pub file.")
    data, comment = fields[1], fields[2] if len(fields) > 2 else ""
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRejected("The key's data is not valid base64: was the line cut?") from None
    parts = _strings(blob)
    if not parts or parts[0].decode("ascii", "replace") != key_type:
        raise KeyRejected("The key's data does not match its type: was the line edited?")
    if key_type == "ssh-rsa":
        if len(parts) != 3:
            raise KeyRejected("The RSA key's data is malformed: was the line edited?")
        bits = int.from_bytes(parts[2], "big").bit_length()
        if bits < MIN_RSA_BITS:
            raise KeyRejected(
                f"This RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed. "
                "Make an Ed25519 key: ssh-keygen -t ed25519"
            )
    if len(comment) > MAX_COMMENT or not _COMMENT.fullmatch(comment):
        raise KeyRejected(
            f"The key's comment must be at most {MAX_COMMENT} plain characters "
            "(letters, digits, punctuation)."
        )
    return PublicKey(key_type, data, comment)


class SshKeyStore:
    """One row per key. Short single-row statements on a local database, as
    `authenticator.identities.IdentityStore` (and JupyterHub's own ORM) run on the loop."""

    def __init__(self, url: str) -> None:
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, future=True)
        metadata.create_all(self.engine)

    def __deepcopy__(self, memo: dict[int, Any]) -> SshKeyStore:
        """Itself: traitlets deep-copies config values (``c.EC2Spawner.ssh_authorized_keys``
        is this store's method), and a copy would open a second engine on the table."""
        return self

    def keys(self, user: str) -> list[PublicKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ssh_public_keys)
                .where(ssh_public_keys.c.hub_username == user)
                .order_by(ssh_public_keys.c.added, ssh_public_keys.c.fingerprint)
            ).all()
        return [PublicKey(r.key_type, r.key_data, r.comment, r.added) for r in rows]

    def add(self, user: str, key: PublicKey) -> PublicKey:
        """Keep ``key`` for ``user``; `KeyRejected` when it is there already or would go over
        the limits."""
        existing = self.keys(user)
        if any(k.fingerprint == key.fingerprint for k in existing):
            raise KeyRejected(f"This key ({key.fingerprint}) is already on your list.")
        if len(existing) >= MAX_KEYS:
            raise KeyRejected(f"You have {MAX_KEYS} keys already: remove one you no longer use.")
        total = sum(len(k.line) + 1 for k in existing) + len(key.line) + 1
        if total > MAX_TOTAL_BYTES:
            raise KeyRejected(
                "Your keys would not fit in the server's settings: remove one, or use an "
                "Ed25519 key (much shorter than RSA)."
            )
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    ssh_public_keys.insert().values(
                        hub_username=user,
                        fingerprint=key.fingerprint,
                        key_type=key.key_type,
                        key_data=key.data,
                        comment=key.comment,
                        added=now,
                    )
                )
        except sa.exc.IntegrityError:
            # the same key stored by another writer between our look and our insert (another
            # process on the database, or two threads): the other one was kept
            raise KeyRejected(f"This key ({key.fingerprint}) is already on your list.") from None
        return PublicKey(key.key_type, key.data, key.comment, now)

    def remove(self, user: str, fingerprint: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                ssh_public_keys.delete().where(
                    (ssh_public_keys.c.hub_username == user)
                    & (ssh_public_keys.c.fingerprint == fingerprint)
                )
            )
        return result.rowcount > 0

    def forget(self, user: str) -> int:
        """Every key of ``user`` (the user was deleted)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                ssh_public_keys.delete().where(ssh_public_keys.c.hub_username == user)
            )
        return result.rowcount

    def authorized_keys(self, user: str) -> list[str]:
        """The ``authorized_keys`` lines of ``user``: `EC2Spawner.ssh_authorized_keys`."""
        return [k.line for k in self.keys(user)]


class SshKeysPage(BaseHandler):
    """``/hub/ssh-keys``: the signed-in user's keys, a form to add one, a button to remove
    each. Cookie-authenticated like the hub's token page; JupyterHub checks the form's XSRF
    token on POST."""

    def initialize(self, store: SshKeyStore) -> None:
        self.store = store

    async def _render(self, *, error: str = "", notice: str = "", status: int = 200) -> None:
        user = self.current_user
        self.set_status(status)
        html = await self.render_template(
            "ssh-keys.html",
            keys=self.store.keys(user.name),
            error=error,
            notice=notice,
            max_keys=MAX_KEYS,
        )
        self.finish(html)

    @web.authenticated
    async def get(self) -> None:
        await self._render()

    @web.authenticated
    async def post(self) -> None:
        user = self.current_user
        action = self.get_body_argument("action", "")
        if action == "add":
            try:
                key = self.store.add(user.name, parse_public_key(self.get_body_argument("key", "")))
            except KeyRejected as e:
                await self._render(error=str(e), status=400)
                return
            audit.record(
                "ssh_key_added",
                audit.Actor("user", user.name),
                user=user.name,
                fingerprint=key.fingerprint,
            )
            notice = f"Added {key.fingerprint}. It works from your server's next start."
        elif action == "remove":
            fingerprint = self.get_body_argument("fingerprint", "")
            if not self.store.remove(user.name, fingerprint):
                await self._render(error="That key is not on your list.", status=404)
                return
            audit.record(
                "ssh_key_removed",
                audit.Actor("user", user.name),
                user=user.name,
                fingerprint=fingerprint,
            )
            notice = (
                f"Removed {fingerprint}. A running server still accepts it until it is "
                "stopped and started again."
            )
        else:
            raise web.HTTPError(400, "Unknown action: use the page's Add and Remove buttons.")
        await self._render(notice=notice)


def ssh_keys_handlers(store: SshKeyStore) -> list[tuple[str, type, dict[str, Any]]]:
    """The ``c.JupyterHub.extra_handlers`` entry of the page."""
    return [(PAGE, SshKeysPage, {"store": store})]


def keys_source(store: SshKeyStore) -> Callable[[str], list[str]]:
    """`EC2Spawner.ssh_authorized_keys`: the user's keys at the moment of a start."""
    return store.authorized_keys
