"""A small HTTP + websocket server shaped like a notebook server, as the far end of tunnels.

Tunnel tests and benchmarks need a target that behaves like ``jupyterhub-singleuser`` on the
wire (keep-alive HTTP/1.1, large streamed responses, long-lived websockets) without a hub
behind it. Run it alone: ``python -m localcloud.instances.notebook_like --port 8888``; it prints
``{"listening": "127.0.0.1:<port>"}`` when ready.

Endpoints: ``GET /api`` (a JSON version, like Jupyter Server's), ``GET /small`` (two bytes),
``GET /blob?size=N&seed=S`` (N deterministic bytes, see :func:`blob`; a ``Range: bytes=A-B``
header gets that part with 206, as Jupyter Server's file handlers answer), ``POST /sha256``
(digest of the request body), ``GET /ws/echo`` (websocket echo), and ``GET /static/lab/…``:
JupyterLab's own built assets (``<prefix>/share/jupyter/lab/static``), as a notebook server
serves them on a first page load.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import sys
from pathlib import Path

import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

CHUNK = 256 * 1024
#: JupyterLab's built application (what ``/lab`` loads), from the installed jupyterlab package
LAB_STATIC = Path(sys.prefix) / "share" / "jupyter" / "lab" / "static"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def blob(size: int, seed: int = 0) -> bytes:
    """The bytes ``/blob`` serves: reproducible anywhere, so a client can check a digest."""
    return random.Random(seed).randbytes(size)


class ApiHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"version": "2.0.0-notebook-like"})


class SmallHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write(b"ok")


class BlobHandler(tornado.web.RequestHandler):
    async def get(self) -> None:
        size = int(self.get_argument("size", "0"))
        data = blob(size, int(self.get_argument("seed", "0")))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Accept-Ranges", "bytes")
        first, last = 0, size - 1
        match = _RANGE.match(self.request.headers.get("Range", ""))
        if match is not None and size:
            first = int(match[1])
            last = min(int(match[2]) if match[2] else size - 1, size - 1)
            if first > last:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.set_header("Content-Length", str(last - first + 1 if size else 0))
        view = memoryview(data)[first : last + 1]
        try:
            for start in range(0, len(view), CHUNK):
                self.write(bytes(view[start : start + CHUNK]))
                await self.flush()
        except StreamClosedError:
            pass  # the client went away mid-body (a test or benchmark closing a reader)


@tornado.web.stream_request_body
class Sha256Handler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def data_received(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)

    def post(self) -> None:
        self.write({"sha256": self.digest.hexdigest(), "size": self.size})


class EchoSocket(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/api", ApiHandler),
            (r"/small", SmallHandler),
            (r"/blob", BlobHandler),
            (r"/sha256", Sha256Handler),
            (r"/ws/echo", EchoSocket),
            (r"/static/lab/(.*)", tornado.web.StaticFileHandler, {"path": str(LAB_STATIC)}),
        ],
        websocket_max_message_size=64 * 1024 * 1024,
    )


async def serve(port: int = 0, host: str = "127.0.0.1") -> tuple[HTTPServer, int]:
    sockets = bind_sockets(port, host)
    server = HTTPServer(make_app(), max_body_size=1 << 30)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def _main(port: int) -> None:
    _, bound = await serve(port)
    print(json.dumps({"listening": f"127.0.0.1:{bound}"}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_main(parser.parse_args().port))


if __name__ == "__main__":
    main()
