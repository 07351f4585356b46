"""A jupyter-server extension that stands in for RStudio Server on simulated instances.

The RStudio image runs ``rserver`` behind ``jupyterhub-singleuser`` (jupyter-rsession-proxy);
``rserver`` is not installed on this machine, so the simulator starts the same single-user
server with this extension and ``default_url`` ``/rstudio``: the user lands, authenticated by
the hub as for the real thing, on a page that says which image would run and that RStudio
itself is not available here. Loaded with
``--ServerApp.jpserver_extensions=localcloud.instances.rstudio_page=True``.
"""

from __future__ import annotations

import html
import os
from typing import Any

import tornado.web
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join

PATH = "/rstudio"
IMAGE_ENV = "LOCALCLOUD_IMAGE"

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


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    route = url_path_join(web_app.settings["base_url"], PATH) + "/?"
    web_app.add_handlers(".*$", [(route, RStudioPage)])
