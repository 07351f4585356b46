"""Every name the hub gives things in AWS: tag keys, device names, parameter paths.

One module, imported by everything that names or finds an instance, a volume, a snapshot or a
parameter (the spawner, the poller, the reaper, reconciliation, the pages, the communities
loader's tag check and the IAM policies' tests), so that a name is changed in one place. It
imports nothing of the project: anything may import it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: The hub id (``jupyterhub:hub`` tag, a parameter path segment) of a deployment that sets none.
DEFAULT_HUB_ID = "synapse-notebook-hub"
#: Where the servers' parameters live unless the deployment says otherwise.
DEFAULT_PARAMETER_PREFIX = "/synapse-notebook-hub"

#: EC2's limits on tags (the same for every resource type).
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
MAX_TAGS_PER_RESOURCE = 50

#: Device names of the two volumes (the bootstrap finds the home volume by the second: its
#: NVMe controller reports this name).
ROOT_DEVICE = "/dev/xvda"
HOME_DEVICE = "/dev/sdf"

#: Ports of a server as its users name them (``relay_ports``: the container's) and where the
#: instance has them: the image's sshd (run by the notebook user, so not on 22) is published
#: on the instance's 127.0.0.1:2222, beside any sshd of the host's own; the notebook on
#: ``EC2Spawner.notebook_port``; an app port on the same number
#: (``notebook-bootstrap.sh``'s ``--publish`` lines).
SSH_PORT = 22
INSTANCE_SSH_PORT = 2222
CONTAINER_NOTEBOOK_PORT = 8888


def instance_port(port: int, notebook_port: int = CONTAINER_NOTEBOOK_PORT) -> int:
    """The instance's port where ``port`` of the server's container is published."""
    if port == SSH_PORT:
        return INSTANCE_SSH_PORT
    if port == CONTAINER_NOTEBOOK_PORT:
        return notebook_port
    return port


#: Tag keys the hub finds and authorises its instances by.
TAG_HUB = "jupyterhub:hub"
TAG_USER = "jupyterhub:user"
TAG_SERVER = "jupyterhub:server"
TAG_IMAGE = "jupyterhub:image"
TAG_COMMUNITY = "jupyterhub:community"
#: ``jupyterhub:server`` (and the parameter path) of the default server, whose name is "".
DEFAULT_SERVER_TAG = "_"
#: A snapshot taken before an instance was terminated: the volume it copies.
TAG_SNAPSHOT_OF = "jupyterhub:snapshot-of"
#: On a home volume kept until its snapshot completes; the reaper deletes it then.
TAG_DELETE_AFTER_SNAPSHOT = "jupyterhub:delete-after-snapshot"
#: On a server's parameters: the ARN of the instance that may read them (the instance role's
#: policy compares it with ``ec2:SourceInstanceARN``).
INSTANCE_ARN_TAG = "jupyterhub:instance-arn"

#: Tag-key prefixes admins may not use in a community's extra tags: ``aws:`` is AWS's own,
#: the others are the hub's, which finds and authorises its instances by them (a community
#: tag must not be able to forge one).
RESERVED_TAG_PREFIXES = ("aws:", "synapse:", "jupyterhub:")

#: Punctuation EC2 allows in tags that IAM policies and cost reports use (besides letters,
#: digits and spaces): the strictest of EC2's rule sets, so a tag works everywhere.
TAG_PUNCTUATION = frozenset("_.:/=+-@")
_RESERVED_PREFIX = "aws:"
_REPLACEMENT = "_"


#: JupyterHub 6's rule for new server names (``jupyterhub.slugs.is_valid_safe_slug``: 1-30
#: characters, lowercase ASCII letters, digits and single hyphens, a letter first and a letter
#: or digit last). The hub applies it on JupyterHub 5.2 too, so that a server made there can
#: still be started after an upgrade to 6 (which refuses new servers with other names); what
#: people read is the server's display name.
SERVER_NAME_MAX = 30
_SERVER_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def is_valid_server_name(name: str) -> bool:
    """Whether ``name`` may name a new server (see `SERVER_NAME_MAX`); "" is the default."""
    return name == "" or (len(name) <= SERVER_NAME_MAX and _SERVER_NAME.fullmatch(name) is not None)


def hub_filter(hub_id: str) -> dict[str, object]:
    """The ``DescribeInstances`` filter for the instances of one hub."""
    return {"Name": f"tag:{TAG_HUB}", "Values": [hub_id]}


def server_tag(server: str) -> str:
    """The server as tags and parameter paths name it (``_`` for the default server)."""
    return server or DEFAULT_SERVER_TAG


def is_tag_text(text: str) -> bool:
    """Whether ``text`` is a tag EC2 takes with the rule `sanitize_tag_value` applies:
    letters, digits, spaces and ``TAG_PUNCTUATION`` after NFC normalisation (the check the
    communities loader makes on an admin's tags, so that what it accepts reaches EC2 as
    written, other spaces aside, which become plain ones)."""
    return all(_tag_char(ch) in (ch, " ") for ch in unicodedata.normalize("NFC", text))


def sanitize_tag_value(value: str) -> str:
    """``value`` as a tag value EC2 accepts, changing as little as possible.

    EC2 allows Unicode letters and digits, spaces and ``_ . : / = + - @`` (the rule IAM
    conditions and instance-metadata tags need; plain EC2 tags allow more, but then a policy
    keyed on the tag may not match). The text is first NFC-normalised (so a decomposed "é"
    stays a letter), then each other character becomes ``_`` (other kinds of space become a
    plain space), a leading ``aws:`` (reserved, any case) becomes ``aws_``, and the result is
    cut to 256 characters. Replacing rather than dropping keeps lengths and positions, and
    makes the function idempotent; it is not injective (``a#b`` and ``a$b`` both give
    ``a_b``), so code that looks instances up by tag must sanitise the names it looks for with
    the same function, and should prefer the instance id it keeps in its state.
    """
    return _sanitize(value, MAX_TAG_VALUE_LENGTH)


def sanitize_tag_key(key: str) -> str:
    """``key`` as a tag key EC2 accepts: the value rule, at most 128 characters, never empty."""
    return _sanitize(key, MAX_TAG_KEY_LENGTH) or _REPLACEMENT


def _sanitize(text: str, limit: int) -> str:
    normal = unicodedata.normalize("NFC", text)
    chars = [_tag_char(ch) for ch in normal[:limit]]
    cleaned = "".join(chars)
    if cleaned[:4].casefold() == _RESERVED_PREFIX:
        cleaned = cleaned[:3] + _REPLACEMENT + cleaned[4:]
    return cleaned


def _tag_char(ch: str) -> str:
    if ch == " " or ch in TAG_PUNCTUATION:
        return ch
    category = unicodedata.category(ch)
    if category[0] in "LN":
        return ch
    if category == "Zs":
        return " "
    return _REPLACEMENT


#: SSM parameter names allow ``a-zA-Z0-9_.-/``; anything else in a user or server name is
#: escaped as ``_xHH`` so two different names can never share a path.
_UNSAFE = re.compile(r"[^a-zA-Z0-9.-]")


def _segment(name: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"_x{b:02x}" for b in m.group().encode()), name) or "_"


@dataclass(frozen=True)
class ServerParameters:
    """The three parameters of one server, under ``/<prefix>/<hub>/<user>/<server>/``."""

    path: str

    @classmethod
    def for_server(cls, prefix: str, hub_id: str, user: str, server: str) -> ServerParameters:
        parts = [p for p in prefix.strip("/").split("/") if p]
        server_part = _segment(server) if server else DEFAULT_SERVER_TAG
        parts += [_segment(hub_id), _segment(user), server_part]
        return cls("/" + "/".join(parts))

    @property
    def config(self) -> str:
        return f"{self.path}/config"

    @property
    def env(self) -> str:
        return f"{self.path}/jupyterhub-env"

    @property
    def synapse_token(self) -> str:
        return f"{self.path}/synapse-token"

    @property
    def names(self) -> list[str]:
        return [self.config, self.env, self.synapse_token]
