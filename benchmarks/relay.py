"""Benchmark of SSH through the hub's relay against SSH straight to the same sshd.

    .venv/bin/python -m benchmarks.relay [--megabytes 50] [--round-trips 200]

One run, one machine: the local cloud (Session Manager stand-in with its rate model off) and
the hub's own pacing off (``EC2Spawner.tunnel_pace = None``; on AWS one session carries about
1 MB/s, which would be the only figure measured), so that the figures are the relay's and the
tunnel's own cost; a real hub,
alice's server with its real sshd (`localcloud.instances.sshd`). The same OpenSSH client does
the same work two ways:

- **relay**: ``ssh`` with ``ProxyCommand snh ssh-proxy`` (the README's set-up): laptop ->
  websocket -> hub -> Session Manager tunnel (smux over the data channel) -> agent -> sshd;
- **direct**: ``ssh -p <the sshd's loopback port> 127.0.0.1``, the same sshd, nothing between.

Figures: ``scp`` of N MB to the server (best of two each way, interleaved) and the p50 of M
one-byte round trips through an open session (``cat`` echoing each byte). Printed: both, the
throughput ratio relay/direct and the latency the relay adds. Limits (issue 13): throughput
ratio at least 0.5, p50 added latency under 5 ms. Exit status 1 if a limit is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from localcloud.instances.sshd import local_user
from tests.integration.harness import (
    free_port,
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    start_localcloud,
    token_for,
)
from tests.integration.laptop import Laptop, add_key
from tests.integration.spawn_harness import front_control, instances_of, start_server

MIN_THROUGHPUT_RATIO = 0.5
MAX_ADDED_P50_MS = 5.0


def scp_seconds(laptop: Laptop, config: Path, alias: str, source: Path, *, up: bool) -> float:
    """One ``scp`` of ``source`` to the server (``up``) or back from it."""
    remote = f"{alias}:bench-upload.bin"
    paths = [str(source), remote] if up else [remote, f"{source}.back"]
    started = time.perf_counter()
    done = subprocess.run(
        ["scp", "-q", "-F", str(config), *paths],
        env=laptop.env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scp via {alias} failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - started


def round_trips_ms(laptop: Laptop, config: Path, alias: str, count: int) -> list[float]:
    """One byte out, the same byte back, ``count`` times, through one session running
    ``cat`` (after 20 unmeasured ones: the session and its channel warmed up)."""
    session = subprocess.Popen(
        ["ssh", "-T", "-F", str(config), alias, "cat"],
        env=laptop.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert session.stdin is not None and session.stdout is not None
    times = []
    try:
        for n in range(count + 20):
            started = time.perf_counter()
            session.stdin.write(b"x")
            if session.stdout.read(1) != b"x":
                raise RuntimeError(f"the echo via {alias} broke")
            if n >= 20:
                times.append((time.perf_counter() - started) * 1000)
    finally:
        session.stdin.close()
        session.wait(30)
    return times


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="snh-bench-relay-"))
    cloud = start_localcloud(tmp / "cloud", f"http://127.0.0.1:{free_port()}", "--boot-delay", "0")
    try:
        ssm = cloud.endpoints["aws"]["ssm_control_url"]
        requests.put(f"{ssm}/settings", json={"messageRate": None}, timeout=10).raise_for_status()
        state = tmp / "hub"
        state.mkdir()
        env = hub_env(
            cloud,
            state,
            SNH_EXTRA_CONFIG=str(
                hub_test_config(state, refresh_age=300, extra="c.EC2Spawner.tunnel_pace = None\n")
            ),
            SNH_SSH_USER=local_user(),
        )
        hub = start_hub(env, state / "hub.log")
        try:
            return measure(args, tmp, cloud, hub)
        finally:
            hub.stop()
    finally:
        cloud.stop()


def measure(args: argparse.Namespace, tmp: Path, cloud, hub) -> dict[str, dict[str, float]]:
    laptop = Laptop(
        tmp / "laptop", hub, "alice", token_for(hub, "alice", ["custom:snh-relay!user"])
    )
    session, _ = sign_in(hub, "alice")
    assert add_key(hub, session, laptop.public_key).status_code == 200
    start_server(hub, "alice")
    [instance] = [i for i in instances_of(cloud, "alice") if i["State"]["Name"] == "running"]
    listed = front_control(cloud, "GET", "/instances")["instances"]
    sim = next(i for i in listed if i["instanceId"] == instance["InstanceId"])
    direct = tmp / "laptop" / ".ssh" / "direct"
    direct.write_text(
        laptop.config.read_text()
        .replace("    ProxyCommand ", f"    Port {sim['sshPort']}\n    #ProxyCommand ")
        .replace(f"    HostName {laptop.alias}", "    HostName 127.0.0.1")
        + "    HostKeyAlias bench-direct\n"
    )
    upload = tmp / "upload.bin"
    upload.write_bytes(os.urandom(args.megabytes * 1024 * 1024))
    scp: dict[str, list[float]] = {"relay": [], "direct": [], "relay_down": [], "direct_down": []}
    for _ in range(2):  # interleaved, so that both see the same machine
        for way, config in (("relay", laptop.config), ("direct", direct)):
            scp[way].append(scp_seconds(laptop, config, laptop.alias, upload, up=True))
            scp[f"{way}_down"].append(scp_seconds(laptop, config, laptop.alias, upload, up=False))
    latency = {
        "relay": round_trips_ms(laptop, laptop.config, laptop.alias, args.round_trips),
        "direct": round_trips_ms(laptop, direct, laptop.alias, args.round_trips),
    }
    return {
        way: {
            "scp_s": min(scp[way]),
            "mb_per_s": args.megabytes / min(scp[way]),
            "down_s": min(scp[f"{way}_down"]),
            "down_mb_per_s": args.megabytes / min(scp[f"{way}_down"]),
            "p50_ms": statistics.median(latency[way]),
            "p90_ms": statistics.quantiles(latency[way], n=10)[-1],
        }
        for way in ("relay", "direct")
    }


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> bool:
    mb = args.megabytes
    print(f"{'':8}{f'scp {mb} MB up':>16}{'MB/s':>8}{f'scp {mb} MB down':>18}{'MB/s':>8}", end="")
    print(f"{'p50 RTT':>10}{'p90 RTT':>10}")
    for way, r in results.items():
        print(
            f"{way:8}{r['scp_s']:15.2f}s{r['mb_per_s']:8.1f}{r['down_s']:17.2f}s"
            f"{r['down_mb_per_s']:8.1f}{r['p50_ms']:8.2f}ms{r['p90_ms']:8.2f}ms"
        )
    relay, direct = results["relay"], results["direct"]
    print(
        f"throughput relay/direct: up {relay['mb_per_s'] / direct['mb_per_s']:.2f}x, "
        f"down {relay['down_mb_per_s'] / direct['down_mb_per_s']:.2f}x"
    )
    ratio = min(
        relay["mb_per_s"] / direct["mb_per_s"], relay["down_mb_per_s"] / direct["down_mb_per_s"]
    )
    added = relay["p50_ms"] - direct["p50_ms"]
    print(f"p50 latency added by the relay: {added:.2f} ms")
    checks = [
        ("throughput ratio relay/direct, lower way", ratio, ratio >= MIN_THROUGHPUT_RATIO, ">="),
        ("p50 added latency (ms)", added, added < MAX_ADDED_P50_MS, "<"),
    ]
    ok = True
    limits = {">=": MIN_THROUGHPUT_RATIO, "<": MAX_ADDED_P50_MS}
    for name, value, passed, op in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value:.2f} (limit {op} {limits[op]})")
        ok &= passed
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    return 0 if report(run(args), args) else 1


if __name__ == "__main__":
    sys.exit(main())
