"""JupyterHub's REST API for one server (``/hub/api/users/<name>/server[s/<server>]``) with the
hub's rules where JupyterHub has no hook for them.

JupyterHub 6 lets a server's ``user_options`` be set without a start: ``PUT`` (create a named
server) and ``PATCH`` (edit a stopped one) write them to the database as given, and the next
start would only then find them wrong. Here they go through the spawner's one validator
(`spawner.options.validate_options`, against the server owner's communities, as at a
start) first, so a bad
value is refused with the same message as at a start and nothing is saved. A new server's
name follows JupyterHub 6's rule on 5.2 too (`spawner.naming.is_valid_server_name`),
checked before JupyterHub creates the server's record.

The handler is JupyterHub's own `UserServerAPIHandler` with these checks in front: the
scope check first (as JupyterHub's, so a caller without the scope learns nothing about the
options), then the rule, then JupyterHub's method. It must be routed before JupyterHub's
own handler for the same paths, and only an authenticator's handlers are
(``JupyterHub.init_handlers`` puts them first): ``SynapseOAuthenticator.first_handlers``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.scopes import needs_scope, scope_definitions
from tornado import web

from hub_config import CommunitiesConfig

from .naming import SERVER_NAME_MAX, is_valid_server_name
from .options import OptionsError, validate_options

#: The scope JupyterHub's own POST asks for: ``start:servers`` from 6.0, ``servers`` before.
START_SCOPE = "start:servers" if "start:servers" in scope_definitions else "servers"


class ServerAPIHandler(UserServerAPIHandler):
    """JupyterHub's handler, with the checks of the module docstring before each method."""

    def initialize(self, communities: CommunitiesConfig) -> None:
        self.communities = communities

    @needs_scope(START_SCOPE)
    async def post(self, user_name: str, server_name: str = "") -> None:
        self._check_new_name(user_name, server_name)
        await super().post(user_name, server_name)

    @needs_scope(START_SCOPE)
    async def put(self, user_name: str, server_name: str = "") -> None:
        if "put" not in vars(UserServerAPIHandler):  # JupyterHub 5.2 has no PUT
            raise web.HTTPError(405)
        self._check_new_name(user_name, server_name)
        body = self.get_server_json_body()
        await self._check_options(user_name, body.get("user_options"))
        await super().put(user_name, server_name)

    @needs_scope(START_SCOPE)
    async def patch(self, user_name: str, server_name: str = "") -> None:
        if "patch" not in vars(UserServerAPIHandler):  # JupyterHub 5.2 has no PATCH
            raise web.HTTPError(405)
        body = self.get_json_body() or {}
        if isinstance(body, dict) and "user_options" in body:
            await self._check_options(user_name, body["user_options"])
        await super().patch(user_name, server_name)

    def _check_new_name(self, user_name: str, server_name: str) -> None:
        user = self.find_user(user_name)
        if user is None or server_name in user.orm_spawners:
            return  # JupyterHub answers 404; an existing server keeps its name
        if not is_valid_server_name(server_name):
            raise web.HTTPError(
                400,
                f"Invalid server name {server_name[:60]!r}: use 1-{SERVER_NAME_MAX} lowercase "
                "letters, digits and single hyphens, starting with a letter (give it any "
                "display_name you like).",
            )

    async def _check_options(self, user_name: str, options: Any) -> None:
        """The spawner's validator on ``options`` as the user's next start would see them."""
        if options is None:
            return
        if not isinstance(options, dict):
            raise web.HTTPError(400, "user_options must be an object")
        user = self.find_user(user_name)
        if user is None:
            return  # JupyterHub answers 404
        auth_state = await user.get_auth_state() or {}
        try:
            validate_options(options, self.communities.for_teams(auth_state.get("teams", [])))
        except OptionsError as e:
            raise web.HTTPError(400, str(e)) from None


def named_server_limit(communities: CommunitiesConfig) -> Callable[[Any], Awaitable[int]]:
    """``JupyterHub.named_server_limit_per_user`` from the communities file: the sum of
    ``max_servers_per_user`` over the requesting user's communities. JupyterHub asks it of
    the user making the request (``get_current_user_named_server_limit``), so a service or
    an operator acting for someone gets 0, JupyterHub's "no limit"; and it counts server
    records, including ones that never started. It is therefore only a first bound on what
    a person makes for themselves. The exact rule, for everyone, is the spawner's count per
    community at each start (``EC2Spawner._check_server_limit``)."""

    async def limit(handler: Any) -> int:
        user = getattr(handler, "current_user", None)
        get_auth_state = getattr(user, "get_auth_state", None)
        if get_auth_state is None:
            return 0
        teams = (await get_auth_state() or {}).get("teams", [])
        return sum(c.max_servers_per_user for c in communities.for_teams(teams))

    return limit


def server_api_handlers(communities: CommunitiesConfig) -> list[tuple[str, type, dict[str, Any]]]:
    """The routes of JupyterHub's server API (``jupyterhub.apihandlers.users``), to this
    handler."""
    kwargs = {"communities": communities}
    return [
        (r"/api/users/([^/]+)/server", ServerAPIHandler, kwargs),
        (r"/api/users/([^/]+)/servers/([^/]*)", ServerAPIHandler, kwargs),
    ]
