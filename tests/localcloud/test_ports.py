"""`localcloud.ports.free_port`: a port chosen now for a process that binds it later."""

from __future__ import annotations

import socket

from localcloud import ports


def test_a_chosen_port_is_below_the_ephemeral_range_and_free():
    """Below ``ip_local_port_range`` no ``connect`` or ``bind(0)`` of another process can take
    the port between its choice and its bind (a loaded test run lost a module to that)."""
    start = int(ports._RANGE_FILE.read_text().split()[0])
    chosen = {ports.free_port() for _ in range(20)}
    assert all(ports.LOWEST <= port < start for port in chosen)
    assert len(chosen) > 1  # drawn at random: two workers choosing at once rarely meet
    for port in chosen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_not_chosen(monkeypatch):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    taken = held.getsockname()[1]
    draws = iter([taken, taken + 1 if taken + 1 < 65536 else taken - 1])

    class Fixed:
        def randrange(self, _low: int, _high: int) -> int:
            return next(draws)

    monkeypatch.setattr(ports.random, "SystemRandom", Fixed)
    monkeypatch.setattr(ports, "LOWEST", 1024)
    try:
        assert ports.free_port() != taken
    finally:
        held.close()
