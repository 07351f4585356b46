"""Reading websocket frames in batches, for tornado's websocket protocol (either side).

Tornado reads every frame with four awaited ``read_bytes`` calls (header, length, mask,
payload) and calls ``on_message`` once per frame; at thousands of 1 KiB SSM messages per second
that is most of the CPU time of whoever reads them: the Session Manager stand-in (server side)
and the hub's data channels (client side). This protocol reads whatever the socket has (up to
256 KiB), parses every complete frame in it, and hands consecutive binary messages to the
handler as one list (``on_binary_messages``). Everything else (text, ping, pong, close,
fragmented messages, size limit, protocol errors) ends up where tornado would put it: text and
control frames go through tornado's own ``_handle_message``. Backpressure: nothing is read
while the handler's ``read_gate`` (an ``asyncio.Event``) is clear, or until the awaitable that
``on_binary_messages`` returned is done; either way it reaches the peer through TCP.

It relies on a few tornado internals (``WebSocketProtocol13`` attributes); ``supported()``
says whether they are there, and the handler falls back to tornado's reader otherwise.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketProtocol13

READ_SIZE = 256 * 1024
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class _ProtocolViolation(Exception):
    """The peer broke RFC 6455: the connection is aborted, as tornado does."""


async def _handed(result: Any) -> None:
    """Wait for what the handler returned, if anything: it reads no more until then."""
    if result is not None:
        await result


def supported() -> bool:
    """Whether this tornado has the internals the batch reader builds on."""
    return all(
        hasattr(WebSocketProtocol13, name)
        for name in ("_receive_frame_loop", "_handle_message", "_abort")
    )


class BatchReadingProtocol(WebSocketProtocol13):
    """``WebSocketProtocol13`` with a batch frame reader (masked frames, from a client, and
    unmasked ones, from a server)."""

    async def _receive_frame_loop(self) -> None:
        # Long: one parse loop over the buffer, inline on purpose: a helper per frame would
        # cost a call per 1 KiB message on the path this module exists to make cheap.
        buffer = bytearray()
        fragments: bytearray | None = None
        fragments_opcode = 0
        handler: Any = self.handler
        max_size = self.params.max_message_size
        try:
            gate: asyncio.Event | None = getattr(handler, "read_gate", None)
            while not self.client_terminated:
                if gate is not None and not gate.is_set():
                    await gate.wait()
                chunk = await self.stream.read_bytes(READ_SIZE, partial=True)
                self._wire_bytes_in += len(chunk)
                buffer += chunk
                batch: list[bytes] = []
                pos = 0
                end = len(buffer)
                while True:
                    if end - pos < 2:
                        break
                    b0 = buffer[pos]
                    b1 = buffer[pos + 1]
                    length = b1 & 0x7F
                    head = pos + 2
                    if length == 126:
                        if end - head < 2:
                            break
                        length = _U16.unpack_from(buffer, head)[0]
                        head += 2
                    elif length == 127:
                        if end - head < 8:
                            break
                        length = _U64.unpack_from(buffer, head)[0]
                        head += 8
                    masked = b1 & 0x80
                    start = head + 4 if masked else head
                    stop = start + length
                    if b0 & 0x70:
                        raise _ProtocolViolation("reserved bits set")
                    opcode = b0 & 0x0F
                    final = b0 & 0x80
                    if opcode & 0x8 and (length > 125 or not final):
                        raise _ProtocolViolation("bad control frame")
                    if length + (len(fragments) if fragments is not None else 0) > max_size:
                        self.close(1009, "message too big")
                        raise _ProtocolViolation("message too big")
                    if end < stop:
                        break
                    payload = bytes(buffer[start:stop])
                    if masked:
                        payload = _websocket_mask(bytes(buffer[head:start]), payload)
                    pos = stop
                    if opcode == 0x2 and final and fragments is None:
                        batch.append(payload)
                        continue
                    if opcode == 0x0:  # continuation
                        if fragments is None:
                            raise _ProtocolViolation("continuation of nothing")
                        fragments += payload
                        if not final:
                            continue
                        opcode, payload, fragments = fragments_opcode, bytes(fragments), None
                    elif not opcode & 0x8:
                        if fragments is not None:
                            raise _ProtocolViolation("new message inside a fragmented one")
                        if not final:
                            fragments, fragments_opcode = bytearray(payload), opcode
                            continue
                    if batch:
                        await _handed(handler.on_binary_messages(batch))
                        batch = []
                    if opcode == 0x2:
                        await _handed(handler.on_binary_messages([payload]))
                    else:
                        self._handle_message(opcode, payload)
                    if self.client_terminated:
                        break
                del buffer[:pos]
                if batch:
                    await _handed(handler.on_binary_messages(batch))
                await asyncio.sleep(0)  # let the flush run and other connections be served
        except StreamClosedError:
            self._abort()
        except _ProtocolViolation:
            self._abort()
        finally:
            handler.on_ws_connection_close(self.close_code, self.close_reason)
