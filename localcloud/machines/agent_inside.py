#!/usr/bin/python3
"""The part of the SSM agent that must run on the instance: its dials to the instance's ports.

Runs *inside* a real-boot machine (Debian's python3, the standard library only: nothing of the
project is installed there), started by the machine's ``localcloud-ssm-agent.service`` at
every boot, as the SSM Agent's own unit is on an AMI. Like the agent, it only ever connects
out: to ``/run/localcloud/agent.sock``, the link the local cloud serves, where it keeps
``SPARES`` connections waiting. The host sends ``DIAL <port>`` on one of them when a Session
Manager session opens a connection; this side connects to ``127.0.0.1:<port>`` inside the
machine, answers ``OK`` (or ``ERR <why>``), and from then on the connection carries that TCP
connection's bytes both ways. The data channel itself (messages, acknowledgements, smux) is
the SSM stand-in's agent half, on the host (`localcloud.ssm.agent`).
"""

import asyncio
import sys

LINK = "/run/localcloud/agent.sock"
SPARES = 4
RETRY_SECONDS = 1.0
CHUNK = 64 * 1024


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _spare(free: asyncio.Semaphore) -> None:
    """One waiting connection; the slot is given back once it is taken (or lost)."""
    try:
        reader, writer = await asyncio.open_unix_connection(LINK)
    except OSError:
        await asyncio.sleep(RETRY_SECONDS)  # the host is not serving the link (yet)
        free.release()
        return
    try:
        writer.write(b"READY\n")
        await writer.drain()
        line = await reader.readline()
    except (ConnectionError, OSError):
        line = b""
    free.release()
    parts = line.split()
    if len(parts) != 2 or parts[0] != b"DIAL" or not parts[1].isdigit():
        writer.close()
        return
    try:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", int(parts[1]))
    except OSError as exc:
        writer.write(f"ERR {exc.strerror or exc}\n".encode())
        writer.close()
        return
    writer.write(b"OK\n")
    await asyncio.gather(_copy(reader, target_writer), _copy(target_reader, writer))
    writer.close()
    target_writer.close()


async def main() -> None:
    free = asyncio.Semaphore(SPARES)
    running: set[asyncio.Task[None]] = set()
    while True:
        await free.acquire()
        task = asyncio.ensure_future(_spare(free))
        running.add(task)
        task.add_done_callback(running.discard)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
