"""``server.conf`` out of an instance's user data, as cloud-init would write it.

The hub's user data (``spawner.bootstrap.render_user_data``) is a ``#cloud-config`` document
whose ``write_files`` entry for ``/etc/notebook-hub/server.conf`` holds ``KEY=value`` lines
(``NOTEBOOK_PARAMETER_PATH``, ``AWS_REGION``, ``NOTEBOOK_PORT``, ``HOME_DEVICE``). The
simulator needs exactly what the bootstrap reads from that file, so it uses the spawner's own
parser, ``spawner.bootstrap.parse_server_conf`` (one reading of the format for the hub's tests
and the simulator). ``parse_user_data`` here is the fallback for a checkout without it, and
also accepts what cloud-init accepts beyond the hub's renderer (base64/gzip file content,
quoted values).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import shlex
from typing import Any

import yaml

from spawner.bootstrap import parse_server_conf

SERVER_CONF_PATH = "/etc/notebook-hub/server.conf"
DEFAULTS = {"NOTEBOOK_PORT": "8888", "HOME_DEVICE": "/dev/sdf"}


class UserDataError(ValueError):
    """The user data has no usable ``server.conf``: the bootstrap would fail at boot."""


def decode_user_data(raw: str | bytes) -> str:
    """The text of user data as DescribeInstanceAttribute returns it (base64, maybe gzip)."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        data = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserDataError("user data is not base64") from exc
    return user_data_text(data)


def user_data_text(data: bytes) -> str:
    """The text of user data as the instance gets it (maybe gzip-compressed: cloud-init
    accepts that)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def _file_content(entry: dict[str, Any]) -> str:
    content = entry.get("content", "")
    encoding = str(entry.get("encoding", "")).lower()
    raw = content.encode() if isinstance(content, str) else bytes(content)
    if encoding in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        raw = base64.b64decode(raw)
    if encoding.startswith("gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def server_conf_text(user_data: str) -> str:
    """The content cloud-init would write to ``SERVER_CONF_PATH``."""
    if not user_data.startswith("#cloud-config"):
        raise UserDataError("user data is not a #cloud-config document")
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise UserDataError(f"user data is not valid YAML: {exc}") from exc
    for entry in (document or {}).get("write_files") or []:
        if isinstance(entry, dict) and entry.get("path") == SERVER_CONF_PATH:
            return _file_content(entry)
    raise UserDataError(f"user data writes no {SERVER_CONF_PATH}")


def parse_assignments(text: str) -> dict[str, str]:
    """Shell ``KEY=value`` lines (quotes as the shell reads them; comments ignored)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UserDataError(f"server.conf: cannot read {line!r}: {exc}") from exc
        for word in words:
            if word == "export":
                continue
            key, sep, value = word.partition("=")
            if sep and key.isidentifier():
                values[key] = value
    return values


def parse_user_data(user_data: str) -> dict[str, str]:
    """``server.conf``'s settings, read without the spawner's parser."""
    return parse_assignments(server_conf_text(user_data))


def read_server_conf(user_data: str) -> dict[str, str]:
    """The settings of ``server.conf`` in ``user_data`` (text), defaults filled in."""
    parser = parse_server_conf
    try:
        values = {**DEFAULTS, **{str(k): str(v) for k, v in parser(user_data).items()}}
    except UserDataError:
        raise
    except ValueError as exc:
        raise UserDataError(str(exc)) from exc
    if not values.get("NOTEBOOK_PARAMETER_PATH"):
        raise UserDataError("server.conf sets no NOTEBOOK_PARAMETER_PATH")
    return values
