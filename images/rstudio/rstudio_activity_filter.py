"""Long-polls are not activity: a jupyter-server extension for the RStudio image.

The hub's idle culler stops a server when the activity its notebook server reports (the
``last_activity`` of ``/api/status``, which ``jupyterhub-singleuser`` sends to the hub) is
older than the community's idle timeout. An open RStudio tab keeps one request to
``/rstudio/events/get_events`` pending at all times (RStudio's event long-poll: the server
answers when there is an event or after a while, and the browser asks again at once), and
jupyter-server-proxy, which serves RStudio under ``/rstudio``, records every proxied request as
API activity. A forgotten tab would keep its instance running, and billed, for ever.

The rule: a request whose path (after the server's base URL) matches one of
``LONG_POLL_PATHS`` is not activity. Kernels, terminals, RStudio's RPC calls (typing in the
console, saving a file, running code: ``/rstudio/rpc/...``) and every other request are.

How: a tornado output transform, created for each request before its handler runs, marks the
request's context (``contextvars``, which the handler's task inherits) as a long-poll or not,
and the server's ``settings`` become a dict that ignores writes of any ``*_last_activity`` key
made from a marked context. Nothing of jupyter-server-proxy is patched: whatever records
activity the usual way (``settings["api_last_activity"] = now``) is filtered the same way.

Installed in the RStudio image next to jupyter-server (this file into site-packages, and
``jupyter_server_config.d/rstudio_activity_filter.json`` beside it into
``<prefix>/etc/jupyter/jupyter_server_config.d/``); the local cloud's instance simulator loads
it the same way for the ``rstudio`` kind (``--ServerApp.jpserver_extensions``). More paths can
be set with ``c.RStudioActivityFilter.long_poll_paths = [...]`` (regular expressions matched
against the whole path after the base URL, e.g. ``rstudio/events/get_events``).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable
from typing import Any

#: Requests that are not activity, as regular expressions for the path after the base URL.
LONG_POLL_PATHS = (r"rstudio/events/get_events/?",)

_in_long_poll: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rstudio_activity_filter_in_long_poll", default=False
)


class ActivitySettings(dict):  # type: ignore[type-arg]
    """The server's settings, except that a long-poll cannot move ``*_last_activity``."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, str) and key.endswith("_last_activity") and _in_long_poll.get():
            return
        super().__setitem__(key, value)


def long_poll_marker(base_url: str, patterns: Iterable[str]) -> type:
    """The output transform class that marks each request's context."""
    prefix = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    compiled = [re.compile(p) for p in patterns]

    class MarkLongPolls:
        """Not a transform of the output: created per request, it only marks the context."""

        def __init__(self, request: Any) -> None:
            path = str(getattr(request, "path", "") or "")
            relative = path[len(prefix) :] if path.startswith(prefix) else None
            _in_long_poll.set(relative is not None and any(p.fullmatch(relative) for p in compiled))

        def transform_first_chunk(
            self, status_code: int, headers: Any, chunk: bytes, finishing: bool
        ) -> tuple[int, Any, bytes]:
            return status_code, headers, chunk

        def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
            return chunk

    return MarkLongPolls


def is_long_poll() -> bool:
    """Whether the request being handled in this context is a long-poll (for tests)."""
    return _in_long_poll.get()


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    configured = serverapp.config.get("RStudioActivityFilter", {}).get("long_poll_paths")
    patterns = tuple(configured) if configured else LONG_POLL_PATHS
    if not isinstance(web_app.settings, ActivitySettings):
        web_app.settings = ActivitySettings(web_app.settings)
    web_app.add_transform(long_poll_marker(web_app.settings.get("base_url", "/"), patterns))
    serverapp.log.info(
        "rstudio_activity_filter: requests to %s are not activity", ", ".join(patterns)
    )
