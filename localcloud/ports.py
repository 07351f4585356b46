"""Ports chosen now and bound later by another process: the notebook servers and sshd of
simulated instances, and the tests' hubs, proxies and PostgreSQL servers.

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, which every
``connect`` and every other ``bind(0)`` draws from too: tunnels, the AWS front, every outgoing
request. Released and bound again seconds later (the session's public port by every test
module's hub), such a port can be taken in between; a test run under load lost a module to
it. The kernel never hands out a port below the ephemeral range
(``net.ipv4.ip_local_port_range``), so one chosen there stays free unless chosen again.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: the lowest port chosen: above the registered services this machine may run (PostgreSQL's
#: 5432, Jupyter's 8888, ...)
LOWEST = 20000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A loopback port free now, below the ephemeral range when there is room for it."""
    ephemeral_start = int(_RANGE_FILE.read_text().split()[0]) if _RANGE_FILE.exists() else 0
    if ephemeral_start - LOWEST >= 1000:
        rng = random.SystemRandom()
        for _attempt in range(100):
            port = rng.randrange(LOWEST, ephemeral_start)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
