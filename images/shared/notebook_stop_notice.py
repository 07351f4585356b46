"""A jupyter-server extension of both notebook images: JupyterLab shows the hub's warning
before this server is stopped (an idle cull, or a spent budget), with **Keep running**.

The hub knows when it will stop a server (its culler's rule, the server's last activity,
the community's budget: ``operations.stop_watch``); the browser tab does not, and must not
hold a hub token. So the tab asks this server, and this server asks the hub with its own
token (``JUPYTERHUB_API_TOKEN``, which may access this server and nothing else):

- ``GET <base_url>snh/stop-notice`` → the hub's
  ``GET /hub/api/users/<user>[/servers/<server>]/stop-notice`` (the notice, or null), plus
  ``poll_seconds``: how often the tab asks again;
- ``POST <base_url>snh/keep-running`` → the hub's ``…/keep-running`` (the grant, audited by
  the hub with ``via: jupyterlab``; its refusal's message is passed on).

Neither request is activity (``_track_activity = False``): asking whether the server will be
stopped must not keep it running; Keep running is, because the hub records it as such. Only
the server's owner may ask (a user the server is shared with, or an admin let in, would
otherwise act as the owner with the server's token).

The JupyterLab side is ``jupyter/labextensions/snh-stop-notice`` beside this file: a
prebuilt extension that shows the notice with JupyterLab's own notifications.
``StopNotice.poll_seconds`` (60 by default) is how often the tab asks.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

DEFAULT_POLL_SECONDS = 60.0


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "notebook_stop_notice"}]


def hub_url(action: str, environ: Any = os.environ) -> str:
    """The hub API URL of ``action`` for this server (JupyterHub's singleuser variables)."""
    api = environ["JUPYTERHUB_API_URL"].rstrip("/")
    url = f"{api}/users/{quote(environ['JUPYTERHUB_USER'], safe='')}"
    server = environ.get("JUPYTERHUB_SERVER_NAME", "")
    if server:
        url += f"/servers/{quote(server, safe='')}"
    return f"{url}/{action}"


class HubRelayHandler(APIHandler):
    """Ask the hub on the signed-in user's behalf, with this server's token."""

    _track_activity = False

    def initialize(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds

    async def _ask(self, method: str, action: str) -> None:
        # Anyone the server lets in (a user it is shared with, an admin with admin_access)
        # would act with its token as the owner: only the owner may.
        owner = os.environ.get("JUPYTERHUB_USER", "")
        if getattr(self.current_user, "username", None) != owner:
            raise web.HTTPError(403, "Only the server's owner may do this.")
        request = HTTPRequest(
            hub_url(action),
            method=method,
            body=b"" if method == "POST" else None,
            headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
            request_timeout=20,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:  # refused, or timed out
            raise web.HTTPError(502, f"The hub did not answer: {e}") from None
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": f"The hub answered {response.code} without a JSON object."}
        if response.code == 200:
            body["poll_seconds"] = self.poll_seconds
        self.set_status(response.code if response.code != 599 else 502)
        self.finish(body)


class StopNoticeHandler(HubRelayHandler):
    @web.authenticated
    async def get(self) -> None:
        await self._ask("GET", "stop-notice")


class KeepRunningHandler(HubRelayHandler):
    @web.authenticated
    async def post(self) -> None:
        await self._ask("POST", "keep-running")


def _load_jupyter_server_extension(serverapp: Any) -> None:
    if not os.environ.get("JUPYTERHUB_API_TOKEN"):
        serverapp.log.info("notebook_stop_notice: not under JupyterHub; nothing to show")
        return
    options = serverapp.config.get("StopNotice", {})
    poll = float(options.get("poll_seconds", DEFAULT_POLL_SECONDS))
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (f"{base}snh/stop-notice", StopNoticeHandler, {"poll_seconds": poll}),
            (f"{base}snh/keep-running", KeepRunningHandler, {"poll_seconds": poll}),
        ],
    )
    serverapp.log.info("notebook_stop_notice: JupyterLab shows the hub's stop warnings")
