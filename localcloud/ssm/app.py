"""The stand-in's routes and a server on a port.

Typical use from a test or the composed local cloud::

    standin, server, base_url = await serve()            # port 0: a free port on 127.0.0.1
    standin.register("i-0123456789abcdef0", fixed_resolver("127.0.0.1", 8888))
    ssm = boto3.client("ssm", endpoint_url=base_url, ...)
    ...
    await shutdown(standin, server)
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .agent import AgentSettings
from .api import ApiHandler
from .control import control_routes
from .registry import DEFAULT_AGENT_VERSION
from .service import SsmStandIn
from .websocket import DataChannelHandler


def make_app(standin: SsmStandIn) -> tornado.web.Application:
    """The Tornado application: the SSM API on ``/``, data channels, and ``/_control/``."""
    args = {"standin": standin}
    return tornado.web.Application(
        [
            (r"/", ApiHandler, args),
            (r"/v1/data-channel/([^/?]+)", DataChannelHandler, args),
            *control_routes(standin),
        ],
        websocket_max_message_size=4 * 1024 * 1024,
    )


async def serve(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    moto_url: str | None = None,
    agent_version: str = DEFAULT_AGENT_VERSION,
    idle_timeout: float | None = None,
    settings: AgentSettings | None = None,
    **options: Any,
) -> tuple[SsmStandIn, HTTPServer, str]:
    """Start a stand-in on the running event loop; returns it, its server, and its base URL.

    ``port=0`` picks a free port. ``moto_url`` is where operations other than the session ones
    go. ``options`` are further ``SsmStandIn`` arguments (``token_ttl``, ``caller``, ...).
    Stop it with ``await shutdown(standin, server)``.
    """
    settings = settings or AgentSettings()
    if idle_timeout is not None:
        settings.idle_timeout = idle_timeout
    standin = SsmStandIn(
        moto_url=moto_url, agent_version=agent_version, settings=settings, **options
    )
    sockets = bind_sockets(port, host)
    server = HTTPServer(make_app(standin), idle_connection_timeout=3600)
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    standin.base_url = f"http://{url_host}:{bound_port}"
    standin.loop  # noqa: B018 - bind the stand-in to this loop now
    return standin, server, standin.base_url


async def shutdown(standin: SsmStandIn, server: HTTPServer) -> None:
    """Stop listening, end every session, close every connection."""
    server.stop()
    standin.close()
    await server.close_all_connections()
