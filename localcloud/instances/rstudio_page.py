"""A jupyter-server extension that stands in for RStudio Server on simulated instances.

The RStudio image runs ``rserver`` behind ``jupyterhub-singleuser`` (jupyter-rsession-proxy);
``rserver`` is not installed on this machine, so the simulator starts the same single-user
server with this extension and ``default_url`` ``/rstudio``: the user lands, authenticated by
the hub as for the real thing, on a page that says which image would run and that RStudio
itself is not available here. Loaded with
``--ServerApp.jpserver_extensions=localcloud.instances.rstudio_page=True``.

Two of RStudio's own endpoints are imitated, for the idle-culling rules
(``images/rstudio/rstudio_activity_filter.py``, which the simulator loads with this one):

- ``/rstudio/events/get_events``, the event long-poll an open RStudio tab keeps pending at all
  times: answered after ``LONG_POLL_SECONDS`` with no event;
- ``/rstudio/rpc/<method>``, the calls RStudio's client makes when the user does something
  (console input, saving a file): answered at once.

Both record activity exactly as jupyter-server-proxy does for every request it proxies
(``settings["api_last_activity"] = now``, when the request starts; here also when it ends), so
that what the filter lets through or not is what it would on the real image.
"""

from __future__ import annotations

import asyncio
import html
import os
from datetime import UTC, datetime
from typing import Any

import tornado.web
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join

PATH = "/rstudio"
IMAGE_ENV = "LOCALCLOUD_IMAGE"
#: How long the imitated event long-poll waits before answering "no event".
LONG_POLL_SECONDS = 1.0

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RStudio (local cloud)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;line-height:1.5}}
code{{background:#f3f3f3;padding:0 .2em}}</style></head>
<body><h1>RStudio</h1>
<p id="rstudio-standin">This server runs in the local cloud, where <code>rserver</code> is not
installed: on AWS this page would be RStudio Server from the image
<code>{image}</code>.</p>
<p>Everything else is real: your files are in <code>{home}</code> on your server's home volume,
and <a href="{lab}">JupyterLab</a> works.</p>
</body></html>
"""


class RStudioPage(JupyterHandler):
    """The launcher page (hub authentication as for any page of the server)."""

    @tornado.web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            PAGE.format(
                image=html.escape(os.environ.get(IMAGE_ENV, "the RStudio image")),
                home=html.escape(os.environ.get("HOME", "~")),
                lab=html.escape(url_path_join(self.base_url, "lab")),
            )
        )


class _ProxiedLikeRStudio(JupyterHandler):
    """What jupyter-server-proxy's handler does around a request to RStudio."""

    def check_xsrf_cookie(self) -> None:
        """RStudio has its own CSRF protection; jupyter-server-proxy skips jupyter's."""

    def record_activity(self) -> None:
        self.settings["api_last_activity"] = datetime.now(UTC)


class RStudioEvents(_ProxiedLikeRStudio):
    """RStudio's event long-poll: pending until an event (here: none) or a timeout."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self._poll()

    @tornado.web.authenticated
    async def post(self) -> None:
        await self._poll()

    async def _poll(self) -> None:
        self.record_activity()
        await asyncio.sleep(LONG_POLL_SECONDS)
        self.record_activity()
        self.finish({"result": {"events": []}})


class RStudioRpc(_ProxiedLikeRStudio):
    """One of RStudio's RPC calls: something the user did."""

    @tornado.web.authenticated
    def post(self, method: str) -> None:
        self.record_activity()
        self.finish({"result": None, "method": method})


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    base = url_path_join(web_app.settings["base_url"], PATH)
    web_app.add_handlers(
        ".*$",
        [
            (base + "/?", RStudioPage),
            (url_path_join(base, "events/get_events") + "/?", RStudioEvents),
            (url_path_join(base, "rpc/([A-Za-z0-9_]+)"), RStudioRpc),
        ],
    )
