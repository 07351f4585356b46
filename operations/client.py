"""The laptop side of the relay (`operations.relay`): ``snh login``, ``snh ssh-proxy``,
``snh forward --server`` and ``snh ssh-config``, with nothing but this package installed
(no AWS CLI, no session-manager-plugin, no AWS credentials: the hub holds those).

``snh login`` keeps the hub's URL and the user's API token in ``~/.config/snh/config.json``
(mode 0600, its directory 0700), or they come from ``SNH_HUB_URL`` / ``SNH_TOKEN``
(`hub_config.settings.OperatorSettings`). ``ssh-proxy`` is ``ssh``'s ``ProxyCommand``: it
carries stdin and stdout over one relay websocket. A refusal is one line on stderr with the
hub's reason, and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import shlex
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hub_config.settings import OperatorSettings

#: The user the notebook images' sshd lets in (the Jupyter stacks' notebook user).
DEFAULT_SSH_USER = "jovyan"
#: What the relay answers a refusal with (JupyterHub's API error body: ``{"message": …}``).
_MAX_ERROR = 500


class RelayError(Exception):
    """The hub refused or could not open the connection; the message says why."""


@dataclass(frozen=True)
class Login:
    hub_url: str
    token: str
    #: the token's hub user (asked of the hub at ``snh login``)
    user: str = ""


def config_path(settings: OperatorSettings) -> Path:
    return settings.config_dir / "config.json"


def save_login(settings: OperatorSettings, login: Login) -> Path:
    """Write the login readable by the user alone (the token opens their servers)."""
    path = config_path(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"hub_url": login.hub_url, "token": login.token, "user": login.user}, out)
    os.chmod(path, 0o600)
    return path


def load_login(settings: OperatorSettings) -> Login:
    """The environment's hub and token, else the saved login; `RelayError` if neither."""
    if settings.relay_hub_url and settings.relay_token:
        login = Login(settings.relay_hub_url.rstrip("/"), settings.relay_token)
        return Login(login.hub_url, login.token, whoami(login))
    path = config_path(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Login(str(data["hub_url"]).rstrip("/"), str(data["token"]), str(data["user"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise RelayError(
            "not logged in: run `snh login --hub https://<hub>` (or set SNH_HUB_URL and SNH_TOKEN)"
        ) from None


def relay_url(login: Login, user: str, server: str, port: int) -> str:
    base = login.hub_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    path = f"/hub/api/users/{quote(user, safe='')}"
    if server:
        path += f"/servers/{quote(server, safe='')}"
    return f"{base}{path}/relay/{port}"


async def connect(login: Login, user: str, server: str, port: int) -> WebSocketClientConnection:
    """The relay websocket, or `RelayError` with the hub's reason."""
    request = HTTPRequest(
        relay_url(login, user, server, port),
        headers={"Authorization": f"token {login.token}"},
        connect_timeout=20,
        request_timeout=60,
    )
    try:
        return await websocket_connect(request, max_message_size=16 * 1024 * 1024)
    except HTTPClientError as e:
        raise RelayError(_reason(e)) from None
    except OSError as e:
        raise RelayError(f"cannot reach the hub at {login.hub_url}: {e}") from None


def _reason(error: HTTPClientError) -> str:
    body = error.response.body if error.response is not None else b""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        message = json.loads(body or b"{}").get("message")
        if message:
            return f"the hub refused ({error.code}): {str(message)[:_MAX_ERROR]}"
    return f"the hub refused ({error.code}): {error.message}"


async def pipe(ws: WebSocketClientConnection, reader: Any, write: Any) -> None:
    """Bytes both ways until either side ends: ``reader`` (an asyncio stream) to the
    websocket, the websocket to ``write`` (a coroutine function taking bytes). The end of
    the local input ends the connection (no half-close: ssh and most clients do not use
    it)."""

    async def upstream() -> None:
        while data := await reader.read(64 * 1024):
            await ws.write_message(data, binary=True)
        ws.close()

    task = asyncio.ensure_future(upstream())
    try:
        while (message := await ws.read_message()) is not None:
            if isinstance(message, bytes):
                await write(message)
    except (ConnectionError, OSError):
        pass  # the local side went away: the relay connection ends with it
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        ws.close()


async def ssh_proxy(login: Login, user: str, server: str, port: int) -> None:
    """``ProxyCommand``: stdin/stdout of this process over one relay connection."""
    ws = await connect(login, user, server, port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    async def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    await pipe(ws, reader, write)


async def forward(login: Login, user: str, server: str, port: int, local_port: int) -> None:
    """``127.0.0.1:<local_port>`` to ``port`` of the server, one relay connection per
    local connection, until cancelled (Ctrl-C)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ws = await connect(login, user, server, port)
        except RelayError as e:
            print(f"snh forward: {e}", file=sys.stderr)
            writer.close()
            return

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await pipe(ws, reader, write)
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", local_port)
    bound = listener.sockets[0].getsockname()[1]
    where = f"server {server!r}" if server else "your default server"
    print(f"Forwarding 127.0.0.1:{bound} -> port {port} of {where}", flush=True)
    async with listener:
        await listener.serve_forever()


def ssh_alias(user: str, server: str) -> str:
    """The ``Host`` name of a server in ``~/.ssh/config``: ``snh-<user>[-<server>]``."""
    return f"snh-{user}" + (f"-{server}" if server else "")


def ssh_config(
    login: Login, user: str, server: str, port: int = 22, ssh_user: str = DEFAULT_SSH_USER
) -> str:
    """The ``~/.ssh/config`` block for one server (``ssh snh-<user>[-<server>]``)."""
    alias = ssh_alias(user, server)
    server_option = f" --server {shlex.quote(server)}" if server else ""
    return (
        f"Host {alias}\n"
        f"    HostName {alias}\n"
        f"    User {ssh_user}\n"
        f"    ProxyCommand snh ssh-proxy{server_option} --port {port}\n"
        f"    ServerAliveInterval 30\n"
    )


def whoami(login: Login) -> str:
    """The token's user, asked of the hub (checks the login works)."""
    request = urllib.request.Request(
        f"{login.hub_url}/hub/api/user", headers={"Authorization": f"token {login.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(json.load(answer)["name"])
    except urllib.error.HTTPError as e:
        raise RelayError(f"the hub refused the token ({e.code})") from None
    except (OSError, ValueError, KeyError) as e:
        raise RelayError(f"cannot reach the hub at {login.hub_url}: {e}") from None


# -- the commands ---------------------------------------------------------------------------

#: The commands of a user's computer (``forward`` without ``--target``: one's own server).
COMMANDS = ("login", "ssh-proxy", "ssh-config", "forward")


def handles(argv: list[str]) -> bool:
    """Whether ``snh ARGV`` is one of this module's commands: ``forward --target`` is the
    operators' (an instance, with AWS credentials: `operations.forward`)."""
    if not argv or argv[0] not in COMMANDS:
        return False
    return argv[0] != "forward" or not any(a.startswith("--target") for a in argv)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="snh", description="Reach your own server from here.")
    sub = top.add_subparsers(dest="command", required=True)
    login = sub.add_parser("login", help="keep the hub's URL and your API token (mode 0600)")
    login.add_argument("--hub", required=True, help="the hub's URL, e.g. https://notebooks.org")
    login.add_argument(
        "--token-file", help="a file holding the token (default: asked for, not echoed)"
    )
    for name, text in (
        ("ssh-proxy", "ssh's ProxyCommand: stdin/stdout to a port of your server"),
        ("ssh-config", "print the ~/.ssh/config block for a server"),
        ("forward", "forward a local port to a port of your server"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--server", default="", help="a named server (default: yours)")
        command.add_argument("--port", "--remote-port", dest="port", type=int, default=22)
        if name == "forward":
            command.add_argument("--local-port", type=int, default=0)
        if name == "ssh-config":
            command.add_argument(
                "--ssh-user",
                default=DEFAULT_SSH_USER,
                help=f"the user to log in as in the server (default: {DEFAULT_SSH_USER})",
            )
    return top


def main(argv: list[str], settings: OperatorSettings) -> int:
    """``snh login | ssh-proxy | ssh-config | forward --server``."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "login":
            token = (
                Path(args.token_file).expanduser().read_text().strip()
                if args.token_file
                else getpass.getpass("API token (from the hub's token page): ").strip()
            )
            if not args.hub.startswith("https://"):
                print(
                    "snh login: warning: the hub is not HTTPS; the token travels in clear",
                    file=sys.stderr,
                )
            login = Login(args.hub.rstrip("/"), token)
            login = Login(login.hub_url, token, whoami(login))
            path = save_login(settings, login)
            print(f"Logged in to {login.hub_url} as {login.user} (saved in {path}).")
            return 0
        login = load_login(settings)
        if args.command == "ssh-config":
            print(ssh_config(login, login.user, args.server, args.port, args.ssh_user), end="")
            return 0
        if args.command == "ssh-proxy":
            asyncio.run(ssh_proxy(login, login.user, args.server, args.port))
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(forward(login, login.user, args.server, args.port, args.local_port))
        return 0
    except RelayError as e:
        print(f"snh {args.command}: {e}", file=sys.stderr)
        return 1
