"""The relay: a TCP connection from a user's own computer to a port of their own running
server, carried over a websocket to the hub and the hub's Session Manager tunnel.

Why in the hub (an API handler) and not a hub-managed service: the hub already holds the
server's tunnel and its AWS credentials; a service would need both again (a second AWS role
that may open sessions to every instance) and would see tokens the hub checks anyway. Here
the relay is one more consumer of the spawner's tunnels (`EC2Spawner.relay_tunnel`), behind
JupyterHub's own token authentication, scope checks and membership refresh.

Who may connect: the caller's own JupyterHub API token (a browser cookie is not enough: the
client is ``ssh``) with the ``custom:snh-relay`` scope for that server, which only the
server's owner holds (the ``user`` role has it on the user's own servers; operators and
admins do not), so that a token can be made for SSH alone; only to the ports the server's
community allows (``relay_ports``, SSH only by default); only while the server runs. Each
refusal says why and what to do; each connection is an audit line (``relay``: port, bytes
each way, duration) and so is each refusal (``relay_refused``).

Ports are the server's (its container's) as users know them: 22 is the image's sshd, which
the instance publishes on its loopback's 2222 (`spawner.naming.instance_port`).

Wire: ``GET /hub/api/users/<user>/relay/<port>`` (the default server) or
``/hub/api/users/<user>/servers/<name>/relay/<port>``, upgraded to a websocket; binary
messages carry the connection's bytes, each way; either side closing the websocket closes
the connection. ``snh ssh-proxy`` and ``snh forward --server`` are the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import has_scope
from jupyterhub.utils import utcnow
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from spawner.ssm.datachannel import SessionError

from . import audit

log = logging.getLogger(__name__)

#: The scope a token needs (on the server, as JupyterHub filters it: ``!server=<user>/<name>``).
SCOPE = "custom:snh-relay"
#: ``c.JupyterHub.custom_scopes`` entry of `SCOPE`.
CUSTOM_SCOPES = {
    SCOPE: {
        "description": "Open connections (SSH, app ports) to your own running servers "
        "through the hub's relay, from your own computer.",
    }
}
#: Bytes read from the server's side per websocket message.
CHUNK = 64 * 1024


class ActivityMeter:
    """When relay traffic counts as activity of the server (so the idle culler leaves it).

    The rule, per connection, in windows of ``window`` seconds: the window is activity when
    the user's computer sent at least ``typing_bytes`` (someone typing, an upload: an SSH
    keystroke is a packet of about 40-50 bytes) or the server sent at least ``bulk_bytes``
    (a download, a busy terminal). An idle SSH connection is neither: its keep-alives
    (``ServerAliveInterval 30``, as ``snh ssh-config`` writes) are about 100 bytes each way
    twice a minute, so a forgotten session does not keep a server running; the community's
    ``max_age_hours`` still bounds everything. At most one mark per window. Sans-I/O: the
    handler feeds it byte counts and the time, and records the marks it returns."""

    def __init__(
        self, *, window: float = 60.0, typing_bytes: int = 1024, bulk_bytes: int = 64 * 1024
    ) -> None:
        self.window, self.typing_bytes, self.bulk_bytes = window, typing_bytes, bulk_bytes
        self._start: float | None = None
        self._sent = self._received = 0
        self._marked = False

    def feed(self, now: float, *, sent: int = 0, received: int = 0) -> bool:
        """Count bytes from the computer (``sent``) or the server (``received``) at
        ``now`` (monotonic seconds); True when this makes the current window activity."""
        if self._start is None or now - self._start >= self.window:
            self._start, self._sent, self._received, self._marked = now, 0, 0, False
        self._sent += sent
        self._received += received
        if self._marked:
            return False
        if self._sent >= self.typing_bytes or self._received >= self.bulk_bytes:
            self._marked = True
            return True
        return False


class RelayHandler(WebSocketHandler, BaseHandler):
    """One relay connection; see the module docstring. JupyterHub's `BaseHandler` resolves
    the token (and refreshes the user's Synapse membership) in ``prepare``, before the
    upgrade; tornado's `WebSocketHandler` does the rest."""

    # An API token, never a browser cookie: the client is ssh, and a page of another site
    # must not be able to open connections with the user's session.
    _accept_token_auth = True
    _accept_cookie_auth = False

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated only (`get` refuses cookie sessions), so no XSRF to check."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON, as JupyterHub's API answers (``snh`` prints the message): a refusal says
        why and what to do."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def check_origin(self, origin: str) -> bool:
        """Any origin: the client is a command-line program with the user's own token, and a
        browser page cannot set the Authorization header of a websocket upgrade."""
        return True

    async def get(self, user_name: str, *args: str) -> None:
        server_name, port_text = (args[0], args[1]) if len(args) == 2 else ("", args[0])
        self.relay_user, self.relay_server = user_name, server_name
        self.relay_port, self.community = int(port_text), None
        self.bytes_in = self.bytes_out = 0
        self.started = time.monotonic()
        self.remote: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self.request.headers.get("Upgrade", "").lower() != "websocket":
                raise web.HTTPError(400, "The relay speaks websocket only (use snh ssh-proxy).")
            spawner, community = self._authorised(user_name, server_name, self.relay_port)
            self.community = community.id
            tunnel = await spawner.relay_tunnel(self.relay_port)
            reader, writer = await asyncio.open_connection(
                tunnel.settings.local_host, tunnel.local_port
            )
        except web.HTTPError as e:
            self._refused(e.log_message or str(e))
            raise
        except (SessionError, OSError) as e:
            message = (
                f"The hub could not reach port {port_text} of your server {self._label}: "
                f"{e}. Is something listening on it there?"
            )
            self._refused(message)
            raise web.HTTPError(502, message) from None
        self.remote = (reader, writer)
        self.spawner, self.activity = spawner, ActivityMeter()
        try:
            await super().get(user_name, *args)
        finally:
            if self.ws_connection is None or self.ws_connection.is_closing():
                # no websocket after all (the client left while the tunnel opened, or the
                # upgrade failed): on_close has run, or never will; the stream must not stay
                writer.close()

    @property
    def _label(self) -> str:
        return repr(self.relay_server) if self.relay_server else "(default)"

    def _authorised(self, user_name: str, server_name: str, port: int) -> tuple[Any, Any]:
        """The server's spawner and community, or the HTTPError that says why not."""
        who = self.current_user
        if who is None or self.get_auth_token() is None:
            raise web.HTTPError(
                403,
                "Missing or invalid token: make an API token on the hub's token page "
                "(with the custom:snh-relay scope) and run `snh login`.",
            )
        if getattr(who, "name", None) != user_name or getattr(who, "kind", "user") != "user":
            raise web.HTTPError(403, "You can connect only to your own servers.")
        if not has_scope(f"{SCOPE}!server={user_name}/{server_name}", self.expanded_scopes):
            raise web.HTTPError(
                403,
                f"This token may not open relay connections (it lacks the {SCOPE} scope): "
                "make one on the hub's token page with that scope.",
            )
        known = server_name in who.orm_user.orm_spawners
        spawner = who.spawners[server_name] if known else None
        if spawner is None or not spawner.ready:
            raise web.HTTPError(
                409,
                f"Your server {self._label} is not running: start it on the hub's home page, "
                "then connect again.",
            )
        community = None
        options = getattr(spawner, "last_options", None)
        if options is not None:
            community = spawner.communities_config.by_id(options.community_id)
        if community is None or port not in community.relay_ports:
            allowed = ", ".join(str(p) for p in community.relay_ports) if community else "none"
            raise web.HTTPError(
                403,
                f"Port {port} of your server is not open for connections from your computer "
                f"(its community allows: {allowed}).",
            )
        return spawner, community

    def _refused(self, reason: str) -> None:
        audit.record(
            "relay_refused",
            audit.Actor("user", getattr(self.current_user, "name", None)),
            user=self.relay_user,
            server=self.relay_server,
            port=self.relay_port,
            reason=reason,
        )

    # -- the websocket --------------------------------------------------------------------

    def open(self, *args: str) -> None:
        self._pump = asyncio.ensure_future(self._server_to_client())

    async def _server_to_client(self) -> None:
        assert self.remote is not None
        reader, _ = self.remote
        try:
            while data := await reader.read(CHUNK):
                self.bytes_out += len(data)
                if self.activity.feed(time.monotonic(), received=len(data)):
                    self._mark_active()
                await self.write_message(data, binary=True)
        except (WebSocketClosedError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def on_message(self, message: str | bytes) -> None:
        assert self.remote is not None
        _, writer = self.remote
        if isinstance(message, str):
            self.close(1003, "binary messages only")
            return
        self.bytes_in += len(message)
        if self.activity.feed(time.monotonic(), sent=len(message)):
            self._mark_active()
        try:
            writer.write(message)
            await writer.drain()
        except (ConnectionError, OSError):
            self.close(1011, "the server's side closed")

    def _mark_active(self) -> None:
        """The server (and its owner) were active now, as the notebook's own activity
        reports say (JupyterHub's ``last_activity``, which the idle cullers read)."""
        now = utcnow(with_tz=False)
        orm_spawner = self.spawner.orm_spawner
        if orm_spawner.last_activity is None or orm_spawner.last_activity < now:
            orm_spawner.last_activity = now
        user = self.spawner.user.orm_user
        if user.last_activity is None or user.last_activity < now:
            user.last_activity = now
        self.db.commit()

    def on_close(self) -> None:
        if self.remote is None:  # the client left before the connection was made
            return
        _, writer = self.remote
        writer.close()
        pump = getattr(self, "_pump", None)
        if pump is not None and not pump.done():
            pump.cancel()
        with contextlib.suppress(Exception):
            audit.record(
                "relay",
                audit.Actor("user", self.relay_user),
                user=self.relay_user,
                server=self.relay_server,
                community=self.community,
                port=self.relay_port,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                duration_s=round(time.monotonic() - self.started, 3),
            )


def relay_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    """The ``c.JupyterHub.extra_handlers`` entries of the relay."""
    return [
        (r"/api/users/([^/]+)/relay/([0-9]{1,5})", RelayHandler, {}),
        (r"/api/users/([^/]+)/servers/([^/]+)/relay/([0-9]{1,5})", RelayHandler, {}),
    ]
