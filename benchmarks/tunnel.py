"""Benchmark of the SSM tunnel against a direct loopback connection, in one run.

    .venv/bin/python -m benchmarks.tunnel [--size-mb 50] [--requests 1000] [--idle 100]
        [--sessions 4] [--rate 1000] [--rated-size-mb 50]

Processes, as on AWS: a notebook-like server (the instance's port 8888, serving JupyterLab's
built assets too), the SSM stand-in (service + agent, which on AWS run in AWS and on the
instance), the hub side — `Tunnel` in this process, alone on its event loop as in the hub —
and a load client in a fourth process. What is printed are the figures and their ratios
(this machine is shared and noisy: compare ratios from one run, not absolute times between
runs). Exit status 1 if a limit is missed.

Part 1, the stand-in's rate model off (the hub must never be the bottleneck): a 50 MB
download and 1,000 small requests over 10 connections, through the tunnel and directly, then
100 idle tunnels. Limits: at least 10 MB/s, p50 added latency under 2 ms, under 1 MiB of hub
memory per idle tunnel.

Part 2, the rate model on (``--rate`` stream-data messages a second per session and
direction, as AWS is reported to carry: what a user on AWS would see): a JupyterLab first
page load (every file of its built application, over 6 kept-alive connections as a browser
fetches them), a 50 MB download over one connection and the same 50 MB as 8 parallel range
requests (as download managers fetch), each through a tunnel with one session and with
``--sessions``; and the stalled-neighbour figure: the page load's throughput while another
connection of the same tunnel stops reading a large download, as a fraction of its throughput
without it. Limits: N sessions at least 3x one session on the page load and on the ranged
download; stalled-neighbour figure at least 0.9. A single connection is one smux stream and so
one session whatever the tunnel does: its figure is printed, not checked.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

from localcloud.instances.notebook_like import LAB_STATIC
from spawner.ssm.tunnel import DEFAULT_MAX_SESSIONS, Tunnel, TunnelSettings, default_ssm_client
from tests.integration.ssm_harness import (
    ACCESS_KEY_ID,
    INSTANCE_ID,
    SECRET_ACCESS_KEY,
    start_notebook_like,
    start_ssm_standin,
)

MIN_MB_PER_S = 10.0
MAX_ADDED_P50_MS = 2.0
MAX_IDLE_TUNNEL_BYTES = 1024 * 1024
MIN_SESSIONS_SPEEDUP = 3.0
MIN_STALLED_NEIGHBOUR = 0.9
BROWSER_CONNECTIONS = 6
RANGE_PARTS = 8


async def load(*args: str) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.load_client", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"load client {args} failed")
    return json.loads(out)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@functools.cache
def ssm_client(ssm_url: str) -> Any:
    """One client per endpoint, shared by every tunnel, as the hub shares its region's
    (`spawner.region.Region`): a boto3 client is about 11 MB, which a tunnel of its own
    would count as the tunnel's."""
    return default_ssm_client("us-east-1", ssm_url)


def tunnel(ssm_url: str, sessions: int) -> Tunnel:
    return Tunnel(
        INSTANCE_ID,
        8888,
        TunnelSettings(max_sessions=sessions),
        endpoint_url=ssm_url,
        region="us-east-1",
        ssm_client=ssm_client(ssm_url),
    )


async def measure_unrated(ssm_url: str, target: str, args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    size = args.size_mb * 1024 * 1024
    async with tunnel(ssm_url, args.sessions) as t:
        via = f"127.0.0.1:{t.local_port}"
        await load("download", via, str(1024 * 1024))  # warm-up
        cpu0 = cpu_seconds()
        tunneled = await load("download", via, str(size))
        figures["tunnel_hub_cpu_s_per_100mb"] = (cpu_seconds() - cpu0) * 100 / args.size_mb
        direct = await load("download", target, str(size))
        figures["tunnel_mb_per_s"] = tunneled["mb_per_s"]
        figures["direct_mb_per_s"] = direct["mb_per_s"]

        lat_tunnel = await load("latency", via, str(args.requests), "10")
        lat_direct = await load("latency", target, str(args.requests), "10")
        for key in ("p50_ms", "p99_ms"):
            figures[f"tunnel_{key}"] = lat_tunnel[key]
            figures[f"direct_{key}"] = lat_direct[key]

    tunnels = [tunnel(ssm_url, args.sessions) for _ in range(args.idle)]
    await tunnels[0].start()  # the shared boto3 client and thread pool exist before measuring
    rss0 = rss_bytes()
    await asyncio.gather(*(t.start() for t in tunnels[1:]))
    await asyncio.sleep(2)
    rss1, cpu1 = rss_bytes(), cpu_seconds()
    await asyncio.sleep(args.idle_seconds)
    figures["idle_tunnel_bytes"] = (rss1 - rss0) / (args.idle - 1)
    figures["idle_tunnel_cpu_ms_per_min"] = (
        (cpu_seconds() - cpu1) / args.idle / args.idle_seconds * 60 * 1e3
    )
    await asyncio.gather(*(t.stop() for t in tunnels))
    return figures


def lab_paths(path_file: Path) -> int:
    """Every file of JupyterLab's built application, largest first (the entry bundles); the
    list goes to ``path_file`` for the load client. Returns the total size in bytes."""
    files = sorted(
        (p for p in LAB_STATIC.iterdir() if p.is_file()), key=lambda p: -p.stat().st_size
    )
    path_file.write_text("".join(f"/static/lab/{p.name}\n" for p in files))
    return sum(p.stat().st_size for p in files)


async def pageload(address: str, path_file: Path, connections: int) -> float:
    return (await load("pageload", address, str(connections), str(path_file)))["mb_per_s"]


async def measure_rated(ssm_url: str, target: str, args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    size = args.rated_size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        paths = Path(tmp) / "lab-paths.txt"
        figures["pageload_bytes"] = lab_paths(paths)
        figures["pageload_direct_mb_per_s"] = await pageload(target, paths, BROWSER_CONNECTIONS)
        for label, sessions in (("one", 1), ("n", args.sessions)):
            async with tunnel(ssm_url, sessions) as t:
                via = f"127.0.0.1:{t.local_port}"
                figures[f"pageload_{label}_mb_per_s"] = await pageload(
                    via, paths, BROWSER_CONNECTIONS
                )
                single = await load("download", via, str(size))
                figures[f"download_{label}_mb_per_s"] = single["mb_per_s"]
                ranged = await load("ranges", via, str(size), str(RANGE_PARTS))
                figures[f"ranges_{label}_mb_per_s"] = ranged["mb_per_s"]
                figures[f"sessions_{label}"] = t.metrics.sessions_opened

        # the stalled neighbour: the page load beside a download whose reader stopped
        async with tunnel(ssm_url, args.sessions) as t:
            via = f"127.0.0.1:{t.local_port}"
            others = BROWSER_CONNECTIONS - 1
            figures["stall_without_mb_per_s"] = await pageload(via, paths, others)
        async with tunnel(ssm_url, args.sessions) as t:
            via = f"127.0.0.1:{t.local_port}"
            reader, writer = await asyncio.open_connection("127.0.0.1", t.local_port)
            writer.write(b"GET /blob?size=104857600&seed=9 HTTP/1.1\r\nHost: bench\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")  # ... and nothing more is read
            for _ in range(1200):  # the reader's buffer fills within seconds; a minute at most
                if t.stalled_sessions:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the stalled reader never stalled its session")
            figures["stall_with_mb_per_s"] = await pageload(via, paths, others)
            figures["stall_stalled_sessions"] = t.stalled_sessions
            writer.close()
    return figures


def check(name: str, value: str, limit: str, passed: bool) -> bool:
    print(f"{'PASS' if passed else 'FAIL'}  {name}: {value} (limit {limit})")
    return passed


def report(f: dict[str, float], args: argparse.Namespace) -> bool:
    added = f["tunnel_p50_ms"] - f["direct_p50_ms"]
    print("rate model off:")
    print(
        f"  throughput  tunnel {f['tunnel_mb_per_s']:8.1f} MB/s   direct "
        f"{f['direct_mb_per_s']:8.1f} MB/s   ratio tunnel/direct "
        f"{f['tunnel_mb_per_s'] / f['direct_mb_per_s']:.3f}"
    )
    for key in ("p50_ms", "p99_ms"):
        print(
            f"  latency {key[:3]} tunnel {f['tunnel_' + key]:8.3f} ms     direct "
            f"{f['direct_' + key]:8.3f} ms     ratio tunnel/direct "
            f"{f['tunnel_' + key] / f['direct_' + key]:.2f}"
        )
    print(f"  hub CPU per 100 MB through the tunnel: {f['tunnel_hub_cpu_s_per_100mb']:.2f} s")
    print(
        f"  idle tunnels: {f['idle_tunnel_bytes'] / 1024:.0f} KiB resident and "
        f"{f['idle_tunnel_cpu_ms_per_min']:.3f} ms CPU per minute, per tunnel"
    )
    n = args.sessions
    print(f"rate model on ({args.rate:g} messages/s per session and direction), N = {n}:")
    rows = (
        ("JupyterLab page load", "pageload", f"{f['pageload_bytes'] / 1e6:.1f} MB, 6 conns"),
        ("download, 1 connection", "download", f"{args.rated_size_mb} MB"),
        ("download, 8 ranges", "ranges", f"{args.rated_size_mb} MB"),
    )
    for title, key, what in rows:
        one, many = f[f"{key}_one_mb_per_s"], f[f"{key}_n_mb_per_s"]
        direct = f" direct {f['pageload_direct_mb_per_s']:7.1f}" if key == "pageload" else ""
        print(
            f"  {title:24} ({what}): 1 session {one:6.2f} MB/s  {n} sessions {many:6.2f} MB/s"
            f"  ratio N/1 {many / one:.2f}{direct}"
        )
    stall = f["stall_with_mb_per_s"] / f["stall_without_mb_per_s"]
    print(
        f"  stalled neighbour: page load on 5 connections {f['stall_without_mb_per_s']:.2f} MB/s"
        f" alone, {f['stall_with_mb_per_s']:.2f} MB/s beside a stalled reader: {stall:.2f}"
    )
    ok = True
    ok &= check(
        "throughput through the tunnel",
        f"{f['tunnel_mb_per_s']:.1f} MB/s",
        f">= {MIN_MB_PER_S} MB/s",
        f["tunnel_mb_per_s"] >= MIN_MB_PER_S,
    )
    ok &= check(
        "p50 added latency", f"{added:.2f} ms", f"< {MAX_ADDED_P50_MS} ms", added < MAX_ADDED_P50_MS
    )
    ok &= check(
        "hub memory per idle tunnel",
        f"{f['idle_tunnel_bytes'] / 1024:.0f} KiB",
        f"< {MAX_IDLE_TUNNEL_BYTES // 1024} KiB",
        f["idle_tunnel_bytes"] < MAX_IDLE_TUNNEL_BYTES,
    )
    for key, title in (("pageload", "page load"), ("ranges", "ranged download")):
        ratio = f[f"{key}_n_mb_per_s"] / f[f"{key}_one_mb_per_s"]
        ok &= check(
            f"{title}, {n} sessions / 1 session",
            f"{ratio:.2f}",
            f">= {MIN_SESSIONS_SPEEDUP}",
            ratio >= MIN_SESSIONS_SPEEDUP,
        )
    ok &= check(
        "stalled-neighbour figure", f"{stall:.2f}", f">= {MIN_STALLED_NEIGHBOUR}", stall >= 0.9
    )
    return ok


async def measure(args: argparse.Namespace) -> dict[str, float]:
    notebook = start_notebook_like()
    figures: dict[str, float] = {}
    try:
        ssm = start_ssm_standin(notebook.address)
        try:
            figures.update(await measure_unrated(ssm.address, notebook.address, args))
        finally:
            ssm.stop()
        rated = start_ssm_standin(notebook.address, "--message-rate", str(args.rate))
        try:
            figures.update(await measure_rated(rated.address, notebook.address, args))
        finally:
            rated.stop()
    finally:
        notebook.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=100, help="idle tunnels to open")
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument(
        "--sessions", type=int, default=DEFAULT_MAX_SESSIONS, help="N: sessions per tunnel"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s per session")
    parser.add_argument("--rated-size-mb", type=int, default=50)
    args = parser.parse_args()
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_ACCESS_KEY
    figures = asyncio.run(measure(args))
    return 0 if report(figures, args) else 1


if __name__ == "__main__":
    sys.exit(main())
