"""The shared stand-in for the notebook servers of *light* simulated instances.

A real ``jupyterhub-singleuser`` per instance costs a process, ~80 MB and a second of CPU to
start; 500 of them do not fit on a small machine, yet a benchmark of the hub at 500 servers
needs 500 instances whose servers answer. In light mode (``python -m localcloud serve
--light-instances``) an instance still boots the way the hub notices (role credentials,
parameters, volume, SSM registration), but its port 8888 resolves to this one responder,
started once in the local cloud's process.

It answers what the hub asks of a single-user server, for any prefix:

- ``GET <prefix>api`` (JupyterHub's ``wait_up`` after a spawn and at hub start-up, the
  spawner's ``_wait_notebook``): 200, ``{"version": ...}`` and the ``X-JupyterHub-Version``
  header JupyterHub compares with its own;
- ``GET <prefix>api/status``: ``last_activity`` as Jupyter Server reports it, so the instance's
  idle backstop has something to read (the last request under that prefix other than these
  two probes, else when the responder started);
- any other request: 200 and a one-line HTML page.

It is plain asyncio: HTTP/1.1 with keep-alive, bodies read by ``Content-Length`` and
dropped; no chunked request bodies, no websockets (nothing the hub sends needs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime

from jupyterhub import __version__ as JUPYTERHUB_VERSION

MAX_HEAD = 64 * 1024
PROBES = ("api", "api/status")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class LightResponder:
    """One listening socket answering for every light instance; ``start()``, ``close()``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self.started = time.time()
        self.requests = 0
        self._activity: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._starting = asyncio.Lock()
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen on a free port (once; later and concurrent calls return the same port)."""
        async with self._starting:
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, self.host, 0, backlog=1024)
                self.port = int(self._server.sockets[0].getsockname()[1])
        assert self.port is not None
        return self.port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    def last_activity(self, prefix: str) -> float:
        """When a request other than the hub's probes last reached ``prefix``."""
        return self._activity.get(_normal(prefix), self.started)

    # -- HTTP ----------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_HEAD:
                    return
                method, path, version, headers = _parse(head)
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, content_type, body = self._answer(method, path)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nX-JupyterHub-Version: "
                    f"{JUPYTERHUB_VERSION}\r\nConnection: {'keep-alive' if keep else 'close'}"
                    "\r\n\r\n".encode()
                    + (body if method != "HEAD" else b"")
                )
                await writer.drain()
                if not keep:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        except ValueError:  # a request line or header that is not HTTP
            return
        finally:
            self._connections.discard(writer)
            writer.close()

    def _answer(self, method: str, target: str) -> tuple[str, str, bytes]:
        self.requests += 1
        path = target.split("?", 1)[0]
        prefix, probe = _split_probe(path)
        if probe == "api/status":
            status = {
                "started": _iso(self.started),
                "last_activity": _iso(self.last_activity(prefix)),
                "connections": 0,
                "kernels": 0,
            }
            return "200 OK", "application/json", json.dumps(status).encode()
        if probe == "api":
            return "200 OK", "application/json", json.dumps({"version": "light"}).encode()
        self._activity[_normal(path)] = time.time()
        page = f"<html><body>light simulated instance: {method} {path}</body></html>"
        return "200 OK", "text/html; charset=utf-8", page.encode()


def _parse(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def _split_probe(path: str) -> tuple[str, str]:
    """``/user/a/api/status`` -> (``/user/a/``, ``api/status``); no probe: (path, "")."""
    stripped = path.rstrip("/")
    for probe in sorted(PROBES, key=len, reverse=True):
        if stripped == f"/{probe}" or stripped.endswith(f"/{probe}"):
            return stripped[: -len(probe)], probe
    return path, ""


def _normal(path: str) -> str:
    """Whose activity a path is: ``/user/<name>/`` for JupyterHub's paths (a user's named
    servers share it), else the path itself."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "user":
        return "/".join(parts[:3]) + "/"
    return path if path.endswith("/") else path + "/"
