"""Benchmark of the SSM tunnel against a direct loopback connection, in one run.

    .venv/bin/python -m benchmarks.tunnel [--size-mb 50] [--requests 1000] [--idle 100]

Processes, as on AWS: a notebook-like server (the instance's port 8888), the SSM stand-in
(service + agent, which on AWS run in AWS and on the instance), the hub side — `Tunnel` in
this process, alone on its event loop as in the hub — and a load client in a fourth process.
Each measurement runs once through the tunnel and once directly against the server; what is
printed are the figures and their ratios (this machine is shared and noisy: compare ratios
from one run, not absolute times between runs). Exit status 1 if a limit is missed.

Limits (issue "SSM Session Manager port forwarding"): at least 10 MB/s through the tunnel
(the real service allows about 1 MB/s per session, so the hub must never be the bottleneck),
p50 added latency under 2 ms, under 1 MiB of hub memory per idle tunnel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys

from spawner.ssm.tunnel import Tunnel
from tests.integration.ssm_harness import INSTANCE_ID, start_notebook_like, start_ssm_standin

MIN_MB_PER_S = 10.0
MAX_ADDED_P50_MS = 2.0
MAX_IDLE_TUNNEL_BYTES = 1024 * 1024


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


async def measure(ssm_url: str, target: str, args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    size = args.size_mb * 1024 * 1024
    async with Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm_url, region="us-east-1") as tunnel:
        via = f"127.0.0.1:{tunnel.local_port}"
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

    tunnels = [
        Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm_url, region="us-east-1")
        for _ in range(args.idle)
    ]
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


def report(f: dict[str, float]) -> bool:
    added = f["tunnel_p50_ms"] - f["direct_p50_ms"]
    checks = [
        (
            "throughput through the tunnel",
            f"{f['tunnel_mb_per_s']:.1f} MB/s",
            f">= {MIN_MB_PER_S} MB/s",
            f["tunnel_mb_per_s"] >= MIN_MB_PER_S,
        ),
        (
            "p50 added latency",
            f"{added:.2f} ms",
            f"< {MAX_ADDED_P50_MS} ms",
            added < MAX_ADDED_P50_MS,
        ),
        (
            "hub memory per idle tunnel",
            f"{f['idle_tunnel_bytes'] / 1024:.0f} KiB",
            f"< {MAX_IDLE_TUNNEL_BYTES // 1024} KiB",
            f["idle_tunnel_bytes"] < MAX_IDLE_TUNNEL_BYTES,
        ),
    ]
    print(
        f"throughput  tunnel {f['tunnel_mb_per_s']:8.1f} MB/s   direct "
        f"{f['direct_mb_per_s']:8.1f} MB/s   ratio tunnel/direct "
        f"{f['tunnel_mb_per_s'] / f['direct_mb_per_s']:.3f}"
    )
    for key in ("p50_ms", "p99_ms"):
        print(
            f"latency {key[:3]} tunnel {f['tunnel_' + key]:8.3f} ms     direct "
            f"{f['direct_' + key]:8.3f} ms     ratio tunnel/direct "
            f"{f['tunnel_' + key] / f['direct_' + key]:.2f}"
        )
    print(f"hub CPU per 100 MB through the tunnel: {f['tunnel_hub_cpu_s_per_100mb']:.2f} s")
    print(
        f"idle tunnels: {f['idle_tunnel_bytes'] / 1024:.0f} KiB resident and "
        f"{f['idle_tunnel_cpu_ms_per_min']:.3f} ms CPU per minute, per tunnel"
    )
    ok = True
    for name, value, limit, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value} (limit {limit})")
        ok &= passed
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=100, help="idle tunnels to open")
    parser.add_argument("--idle-seconds", type=float, default=20)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "benchmark")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark")
    notebook = start_notebook_like()
    ssm = start_ssm_standin(notebook.address)
    try:
        figures = asyncio.run(measure(ssm.address, notebook.address, args))
    finally:
        ssm.stop()
        notebook.stop()
    return 0 if report(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
