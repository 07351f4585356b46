"""How a session reaches a real-boot machine's ports: through connections the machine opened.

On AWS the SSM Agent runs on the instance, dials *out* to the service, and for a port
forwarding session connects to the port on the instance's own loopback: nothing connects into
the instance. Here the data channel's agent half (messages, acknowledgements, smux) is the SSM
stand-in's (`localcloud.ssm.agent`), and the part that must be on the instance is the
machine's agent unit (``agent_inside``, installed in its root volume like the SSM Agent on an
AMI): it connects out to the link socket ``agent.sock`` and keeps a few connections waiting.

`AgentLink` is the host's end. The stand-in's agent dials ``resolve(port)``, a listener on the
host's loopback (one per remote port, made when first asked for); each connection it accepts
takes one waiting connection of the machine, sends ``DIAL <port>``, and on ``OK`` carries the
bytes both ways. ``ERR`` (nothing listens there inside) closes the stand-in's connection. The
instance is online from the agent unit's first connection, as an agent registers once it
runs; the machine's end (or a reboot) makes the link go, and the instance offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .links import copy_stream

log = logging.getLogger(__name__)

#: Where the agent unit's program is put in a machine's root volume, and the unit.
AGENT_PROGRAM = "usr/local/lib/localcloud/ssm-agent.py"
AGENT_UNIT_NAME = "localcloud-ssm-agent.service"
AGENT_UNIT = f"""\
# The SSM agent's dials into this instance's ports (local cloud), started as on an AMI.
[Unit]
Description=SSM agent port link (local cloud)
After=network.target

[Service]
ExecStart=/usr/bin/python3 /{AGENT_PROGRAM}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""
#: How long a dial waits for the machine to offer a connection, and an offer may take to
#: say it is one; how many waiting connections a machine may hold on the host at most.
DIAL_WAIT = 10.0
HELLO_WAIT = 10.0
MAX_SPARES = 16

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def agent_program() -> str:
    """The agent unit's program, as it is put into a machine."""
    return (Path(__file__).with_name("agent_inside.py")).read_text()


def install_agent(upper: Path) -> None:
    """The agent unit and its program in a machine's root volume, enabled."""
    program = upper / AGENT_PROGRAM
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(agent_program())
    units = upper / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / AGENT_UNIT_NAME).write_text(AGENT_UNIT)
    link = units / "multi-user.target.wants" / AGENT_UNIT_NAME
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{AGENT_UNIT_NAME}")


class AgentLink:
    """The host's end of one machine's agent link, for one boot; see the module docstring."""

    def __init__(
        self, socket_path: Path, *, online: Callable[[Callable[[int], tuple[str, int]]], None]
    ) -> None:
        """``online`` is called once, with `resolve`, at the agent unit's first connection."""
        self.socket_path = socket_path
        self._online = online
        self._said_online = False
        self._closed = False
        self._spares: deque[Pair] = deque()
        self._offered = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._listeners: dict[int, socket.socket] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Serve the link socket (owner-only: root in the machine)."""
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._offer, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)

    def resolve(self, remote_port: int) -> tuple[str, int]:
        """Where the stand-in's agent dials for ``remote_port`` of the instance (a resolver,
        `localcloud.ssm.registry.Resolver`): a listener on the host's loopback, bound now and
        served from the next loop iteration (the kernel queues what arrives before)."""
        if self._closed:
            raise LookupError("the machine's boot is over")
        listener = self._listeners.get(remote_port)
        if listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            listener.setblocking(False)
            self._listeners[remote_port] = listener
            task = asyncio.ensure_future(self._serve_port(remote_port, listener))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)
        return "127.0.0.1", listener.getsockname()[1]

    async def _serve_port(self, remote_port: int, listener: socket.socket) -> None:
        async def dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._dial(remote_port, reader, writer)

        self._servers.append(await asyncio.start_server(dial, sock=listener))

    async def _offer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A waiting connection from the machine's agent unit (at most ``MAX_SPARES``)."""
        try:
            hello = await asyncio.wait_for(reader.readline(), HELLO_WAIT)
        except (ConnectionError, OSError, TimeoutError):
            hello = b""
        if hello != b"READY\n" or self._closed or len(self._spares) >= MAX_SPARES:
            writer.close()
            return
        self._spares.append((reader, writer))
        self._offered.set()
        if not self._said_online:
            self._said_online = True
            self._online(self.resolve)

    async def _take(self) -> Pair | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DIAL_WAIT
        while True:
            while self._spares:
                pair = self._spares.popleft()
                if not pair[1].is_closing() and not pair[0].at_eof():
                    return pair  # (one whose unit restarted has been closed from inside)
                pair[1].close()
            self._offered.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offered.wait(), remaining)

    async def _dial(
        self, remote_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection of the stand-in's agent to ``remote_port`` of the instance."""
        pair = await self._take()
        if pair is None:
            log.info("%s: no agent connection for port %s", self.socket_path, remote_port)
            writer.close()
            return
        inner_reader, inner_writer = pair
        try:
            inner_writer.write(f"DIAL {remote_port}\n".encode())
            await inner_writer.drain()
            answer = await inner_reader.readline()
        except (ConnectionError, OSError):
            answer = b""
        if answer != b"OK\n":
            log.info("port %s in the machine: %s", remote_port, answer.decode(errors="replace"))
            inner_writer.close()
            writer.close()
            return
        await asyncio.gather(copy_stream(reader, inner_writer), copy_stream(inner_reader, writer))
        inner_writer.close()
        writer.close()

    async def close(self) -> None:
        """The boot is over: stop serving; the connections still open end."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for server in self._servers:
            server.close()
        for listener in self._listeners.values():
            with contextlib.suppress(OSError):
                listener.close()
        for _reader, writer in self._spares:
            writer.close()
        self._spares.clear()
        for task in list(self._pipes):
            task.cancel()
        self.socket_path.unlink(missing_ok=True)
