"""Benchmark of starting servers: EC2Spawner on the local cloud next to LocalProcessSpawner.

    .venv/bin/python -m benchmarks.spawn [--users 20]

One run, one machine: the local cloud with the simulated boot delay at zero, then the same
hub (same configuration, same proxy) twice — once with EC2Spawner, once with JupyterHub's
SimpleLocalProcessSpawner starting the same `jupyterhub-singleuser` directly. For each, the
time from the start request to the server answering through the proxy (`/user/<name>/api`),
for one user and for N users starting together. Printed: the figures and their ratios
(compare ratios from one run; this machine is shared and noisy). Exit status 1 if a limit is
missed.

Limits (issue "Start server"): one EC2 start at most 1.5x the LocalProcessSpawner start; the
median start among N concurrent ones at most 3x one start (the last of N concurrent starts is
printed too: on 2 cores, N notebook servers starting at once queue for CPU under either
spawner, which the ratio of the two spawners shows).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.integration.harness import (
    free_port,
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    start_localcloud,
)
from tests.integration.spawn_harness import stop_server

MAX_EC2_VS_LOCAL = 1.5
MAX_CONCURRENT_VS_ONE = 3.0
TEAM = "3500001"

LOCAL_PROCESS = f"""
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [{str(Path(sys.executable).with_name("jupyterhub-singleuser"))!r}]
c.Spawner.args = ["--ServerApp.allow_root=True"]
c.SimpleLocalProcessSpawner.home_dir_template = "{{tmp}}/homes/{{{{username}}}}"
"""


def time_start(hub, user: str) -> float:
    """Seconds from the start request to /user/<name>/api answering through the proxy."""
    started = time.perf_counter()
    r = hub.api("POST", f"/users/{user}/server", json={})
    assert r.status_code in (201, 202), r.text
    while True:
        try:
            # Not following redirects: before the route exists the hub answers /user/... with a
            # redirect to its own pages; only the notebook server answers 200 with its version.
            r = requests.get(f"{hub.url}/user/{user}/api", timeout=10, allow_redirects=False)
            if r.status_code == 200 and "version" in r.json():
                return time.perf_counter() - started
        except (requests.RequestException, ValueError):
            pass
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"{user}'s server did not answer in 300 s")
        time.sleep(0.05)


def measure(hub, users: list[str]) -> dict[str, float]:
    one = time_start(hub, users[0])
    stop_server(hub, users[0])
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        times = list(pool.map(lambda u: time_start(hub, u), users))
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda u: stop_server(hub, u, timeout=120), users))
    return {"one": one, "median": statistics.median(times), "last": max(times)}


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="snh-bench-"))
    hub_url = f"http://127.0.0.1:{free_port()}"
    cloud = start_localcloud(tmp / "cloud", hub_url, "--boot-delay", "0")
    results: dict[str, dict[str, float]] = {}
    try:
        users = [f"bench{i:02d}" for i in range(args.users)]
        for i, name in enumerate(users):
            cloud.control(
                "POST",
                "/users",
                {
                    "userId": str(3410000 + i),
                    "userName": name,
                    "firstName": "Bench",
                    "lastName": str(i),
                    "email": f"{name}@example.org",
                    "teams": [TEAM],
                },
            )
        for label, extra in (
            ("EC2Spawner", ""),
            ("LocalProcessSpawner", LOCAL_PROCESS.replace("{tmp}", str(tmp))),
        ):
            state = tmp / label
            state.mkdir()
            env = hub_env(
                cloud,
                state,
                SNH_EXTRA_CONFIG=str(hub_test_config(state, refresh_age=300, extra=extra)),
            )
            hub = start_hub(env, state / "hub.log")
            try:
                for name in users:
                    sign_in(hub, name)
                results[label] = measure(hub, users)
            finally:
                hub.stop()
    finally:
        cloud.stop()
    return results


def report(results: dict[str, dict[str, float]], n: int) -> bool:
    ec2, local = results["EC2Spawner"], results["LocalProcessSpawner"]
    print(f"{'':22}{'1 user':>10}{f'{n} users, median':>20}{f'{n} users, last':>18}")
    for label, r in results.items():
        print(f"{label:22}{r['one']:9.2f}s{r['median']:19.2f}s{r['last']:17.2f}s")
    print(
        f"{'ratio EC2/local':22}{ec2['one'] / local['one']:9.2f}x"
        f"{ec2['median'] / local['median']:19.2f}x{ec2['last'] / local['last']:17.2f}x"
    )
    checks = [
        (
            "one EC2 start vs one LocalProcessSpawner start",
            ec2["one"] / local["one"],
            MAX_EC2_VS_LOCAL,
        ),
        (
            f"median of {n} concurrent EC2 starts vs one",
            ec2["median"] / ec2["one"],
            MAX_CONCURRENT_VS_ONE,
        ),
    ]
    print(
        f"(for reference: last of {n} concurrent vs one, EC2 {ec2['last'] / ec2['one']:.2f}x, "
        f"local {local['last'] / local['one']:.2f}x)"
    )
    ok = True
    for name, value, limit in checks:
        passed = value <= limit
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value:.2f}x (limit {limit}x)")
        ok &= passed
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    return 0 if report(run(args), args.users) else 1


if __name__ == "__main__":
    sys.exit(main())
