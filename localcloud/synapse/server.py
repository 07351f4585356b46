"""The Synapse stand-in as a web server: its routes (Synapse's paths, the sign-in page,
``/_control/``) over one `SynapseStandIn`. Kept apart from the state (``app.py``), which the
handlers import: the state imports no handler."""

from __future__ import annotations

from collections.abc import Iterable

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .app import SynapseStandIn
from .clock import Clock
from .control import control_routes
from .directory import Directory, OAuthClient
from .handlers import (
    DiscoveryHandler,
    JwksHandler,
    MembershipStatusHandler,
    NotFoundHandler,
    RevokeHandler,
    TokenHandler,
    UserInfoHandler,
    UserProfileByIdHandler,
    UserProfileHandler,
)
from .keys import SigningKey
from .pages import SigninHandler


def make_app(standin: SynapseStandIn) -> tornado.web.Application:
    """The Tornado application: Synapse's paths, the sign-in page, and ``/_control/``."""
    args = {"standin": standin}
    # Spring MVC matches a trailing slash too (synapseclient asks for ``/userProfile/``).
    routes = [
        (r"/auth/v1/\.well-known/openid-configuration/?", DiscoveryHandler, args),
        (r"/auth/v1/oauth2/jwks/?", JwksHandler, args),
        (r"/auth/v1/oauth2/token/?", TokenHandler, args),
        (r"/auth/v1/oauth2/userinfo/?", UserInfoHandler, args),
        (r"/auth/v1/oauth2/revoke/?", RevokeHandler, args),
        (r"/repo/v1/userProfile/?", UserProfileHandler, args),
        (r"/repo/v1/userProfile/(\d+)/?", UserProfileByIdHandler, args),
        (r"/repo/v1/team/([^/]+)/member/([^/]+)/membershipStatus/?", MembershipStatusHandler, args),
        (r"/signin", SigninHandler, args),
        *control_routes(standin),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
    )


async def serve(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    clients: Iterable[OAuthClient] | None = None,
    directory: Directory | None = None,
    clock: Clock | None = None,
    signing_key: SigningKey | None = None,
) -> tuple[SynapseStandIn, HTTPServer, str]:
    """Start a stand-in on the running event loop; returns it, its server, and its base URL.

    ``port=0`` picks a free port. Without ``clients``/``directory`` the demo client and demo
    directory are used. Stop it with ``server.stop()`` and ``await
    server.close_all_connections()``.
    """
    standin = SynapseStandIn(
        clients=clients, directory=directory, clock=clock, signing_key=signing_key
    )
    sockets = bind_sockets(port, host)
    server = HTTPServer(make_app(standin))
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    standin.base_url = f"http://{url_host}:{bound_port}"
    return standin, server, standin.base_url
