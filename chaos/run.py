"""A chaos run: analysts keep working while everything that can go wrong does, and then
nothing the hub promised may be lost.

    .venv/bin/python -m chaos [--users 30] [--minutes 10] [--seed N] [--outage 120]

On this machine: the local cloud (real ``jupyterhub-singleuser`` in every simulated instance,
no boot delay), a PostgreSQL server for the hub (as production), a hub started the way
operators start it. N analysts (`chaos.workload.Analyst`) sign in, start a server each
through the REST API and work in it (files, code, terminal commands) for the run's length
while the seeded schedule (`chaos.schedule`, printed first) runs its faults; for the whole
run one of the community's two subnets has no capacity. After the last fault the faults are
cleared and the analysts have `RECOVERY_SECONDS` to get their servers back (they start them
again when they find them stopped, as a person would).

Then it prints and checks (exit status 1 when one is not 0):

- files lost: every file a server acknowledged, read back with the same SHA-256;
- orphan instances: running instances of this hub that no server of the hub knows;
- servers stuck pending: a start or stop JupyterHub still reports in progress;
- analysts without their server after recovery;

and the longest time an analyst was without their server (the first failed step to the next
step that worked), with steps, failures and restarts per analyst.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.integration.harness import (
    Hub,
    LocalCloud,
    free_port,
    hub_env,
    hub_test_config,
    start_hub,
    start_localcloud,
    token_for,
    wait_until,
)
from tests.integration.spawn_harness import front_control, moto

from .schedule import Fault, schedule
from .workload import Analyst

HUB_ID = "chaos"
TEAM = "3500001"  # the ad-portal community's team in the stand-in
OPTIONS = {"community": "ad-portal", "image": "jupyter", "instance_type": "t3.large"}
RECOVERY_SECONDS = 240.0
#: How the fault log says a fault did not happen (the short run in make test fails on it).
NOT_APPLIED = "NOT APPLIED:"
#: A Synapse outage: every path of the stand-in answers 503 (enough answers for any run).
OUTAGE_ANSWERS = 10**6


@dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    analysts: list[Analyst] = field(default_factory=list)
    files_written: int = 0
    files_lost: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    fault_log: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (
            self.files_lost or self.orphans or self.stuck or self.unreachable or self.errors
        )


class Chaos:
    """The run's stack and its fault actions."""

    def __init__(self, cloud: LocalCloud, hub: Hub, env: dict[str, str], users: list[str]):
        self.cloud = cloud
        self.hub = hub
        self.env = env
        self.users = users
        self.ec2 = moto(cloud, "ec2")
        self.log: list[str] = []

    def apply(self, fault: Fault, late: float = 0.0) -> None:
        """Apply ``fault`` (``late`` seconds after its time: the one before took long)."""
        action = getattr(self, fault.kind)
        try:
            detail = action(fault)
        except Exception as e:  # a fault that could not be applied is reported, not fatal
            detail = f"{NOT_APPLIED} {e!r}"
        line = f"{fault}: {detail}" + (f" ({late:.1f}s late)" if late >= 1 else "")
        self.log.append(line)
        print(f"  fault {line}", flush=True)

    def hub_kill(self, fault: Fault) -> str:
        began = time.monotonic()
        self.hub.crash()
        self.hub = start_hub(self.env, self.hub.log_path)
        return f"hub killed and answering again after {time.monotonic() - began:.1f}s"

    def aws_throttle(self, fault: Fault) -> str:
        for action in (
            "DescribeInstances",
            "StartInstances",
            "PutParameter",
            "DescribeInstanceInformation",
        ):
            service = "ssm" if action in ("PutParameter", "DescribeInstanceInformation") else "ec2"
            front_control(
                self.cloud,
                "POST",
                "/faults",
                {"service": service, "action": action, "code": "RequestLimitExceeded", "count": 5},
            )
        return "5 RequestLimitExceeded each on 4 operations"

    def channel_cut(self, fault: Fault) -> str:
        def connected() -> list[str]:
            sessions = self._ssm("GET", "/state")["sessions"]
            return [s["SessionId"] for s in sessions if s.get("Status") == "Connected"]

        # right after a hub restart the tunnels reopen with the next request: wait for one
        live = wait_until_quiet(connected, 30)
        if not live:
            return f"{NOT_APPLIED} no session to cut within 30 s"
        sid = live[fault.pick % len(live)]
        self._ssm("POST", f"/sessions/{sid}/drop")
        return f"websocket of session {sid} dropped"

    def agent_restart(self, fault: Fault) -> str:
        instance = self._instance(fault.pick)
        self._ssm("POST", f"/instances/{instance}/restart")
        return f"agent of {instance} restarted"

    def synapse_outage(self, fault: Fault) -> str:
        self.cloud.inject_fault(path="*", count=OUTAGE_ANSWERS, status=503)
        timer = threading.Timer(fault.seconds, self.cloud.clear_faults)
        timer.daemon = True
        timer.start()
        return f"Synapse answers 503 to everything for {fault.seconds:.0f}s"

    def reboot(self, fault: Fault) -> str:
        instance = self._instance(fault.pick)
        self.ec2.reboot_instances(InstanceIds=[instance])
        return f"{instance} rebooted"

    def stop_behind(self, fault: Fault) -> str:
        instance = self._instance(fault.pick + 1)
        self.ec2.stop_instances(InstanceIds=[instance])
        return f"{instance} stopped behind the hub's back"

    def _instance(self, pick: int) -> str:
        running = sorted(
            i["InstanceId"]
            for r in self.ec2.describe_instances(
                Filters=[
                    {"Name": "tag:jupyterhub:hub", "Values": [HUB_ID]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )["Reservations"]
            for i in r["Instances"]
        )
        if not running:
            raise RuntimeError("no running instance")
        return running[pick % len(running)]

    def _ssm(self, method: str, path: str) -> Any:
        answer = requests.request(
            method, f"{self.cloud.endpoints['aws']['ssm_control_url']}{path}", timeout=10
        )
        answer.raise_for_status()
        return answer.json() if answer.content else None


def create_user(cloud: LocalCloud, index: int, name: str) -> None:
    cloud.control(
        "POST",
        "/users",
        {
            "userId": str(3700000 + index),
            "userName": name,
            "firstName": "Chaos",
            "lastName": str(index),
            "email": f"{name}@example.org",
            "teams": [TEAM],
        },
    )


def start_servers(hub: Hub, users: list[str], deadline: float) -> list[str]:
    """Start every server (10 at a time); the users whose server did not become ready."""

    def start(user: str) -> bool:
        hub.api("POST", f"/users/{user}/server", json=OPTIONS)
        while time.monotonic() < deadline:
            model = (hub.user(user) or {}).get("servers", {}).get("")
            if model and model.get("ready"):
                return True
            if not model or not model.get("pending"):
                return False
            time.sleep(1)
        return False

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        return [u for u, ok in zip(users, pool.map(start, users), strict=True) if not ok]


def check(outcome: Outcome, chaos: Chaos) -> None:
    """The promises, after recovery."""
    hub = chaos.hub
    for analyst in outcome.analysts:

        def back(analyst: Analyst = analyst) -> bool:
            if analyst.reachable():
                return True
            analyst.recover()  # as the analyst would: start it if it is not starting
            return False

        ok = wait_until_quiet(back, RECOVERY_SECONDS)
        if not ok:
            outcome.unreachable.append(f"{analyst.user} ({analyst.record.last_error})")
            continue
        for path, digest in analyst.record.files.items():
            outcome.files_written += 1
            if analyst.read_back(path) != digest:
                outcome.files_lost.append(f"{analyst.user}:{path}")
    known = set()
    for user in chaos.users:
        model = hub.api("GET", f"/users/{user}", params={"include_stopped_servers": "1"}).json()
        for name, server in model.get("servers", {}).items():
            if server.get("pending"):
                outcome.stuck.append(f"{user}/{name}: {server['pending']}")
            instance = (server.get("state") or {}).get("instance_id")
            if instance:
                known.add(instance)
    for r in chaos.ec2.describe_instances(
        Filters=[
            {"Name": "tag:jupyterhub:hub", "Values": [HUB_ID]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]:
        for i in r["Instances"]:
            if i["InstanceId"] not in known:
                outcome.orphans.append(i["InstanceId"])


def wait_until_quiet(predicate: Any, timeout: float) -> Any:
    """What ``predicate`` gave once truthy, polled every 2 s; None after ``timeout``."""
    with contextlib.suppress(TimeoutError):
        return wait_until(predicate, timeout, "a condition", interval=2)
    return None


def run(
    users: int, duration: float, seed: int, outage: float, workdir: Path | None = None
) -> Outcome:
    """One chaos run (see the module docstring); the stack is torn down at the end."""
    faults = schedule(seed, duration, outage=outage)
    outcome = Outcome(seed, faults)
    print(f"Chaos run: {users} analysts, {duration:.0f}s, seed {seed} (replay: --seed {seed})")
    for fault in faults:
        print(f"  scheduled {fault}")
    tmp = workdir or Path(tempfile.mkdtemp(prefix="snh-chaos-"))
    print(f"State and logs: {tmp}", flush=True)
    hub_url = f"http://127.0.0.1:{free_port()}"
    cloud = start_localcloud(tmp / "cloud", hub_url, "--boot-delay", "0")
    chaos: Chaos | None = None
    stop = threading.Event()
    try:
        names = [f"chaos{i:03d}" for i in range(users)]
        for i, name in enumerate(names):
            create_user(cloud, i, name)
        state = tmp / "hub"
        state.mkdir(parents=True, exist_ok=True)
        env = hub_env(
            cloud,
            state,
            SNH_HUB_ID=HUB_ID,
            SNH_EXTRA_CONFIG=str(
                hub_test_config(state, refresh_age=300, extra="c.Spawner.poll_interval = 10\n")
            ),
            IDLE_TIMEOUT_SECONDS=str(7 * 24 * 3600),
        )
        hub = start_hub(env, state / "hub.log")
        chaos = Chaos(cloud, hub, env, names)
        # each analyst signs in and makes a token on the token page, as for a script
        tokens = {name: token_for(hub, name, None) for name in names}
        subnet = cloud.endpoints["aws"]["resources"]["subnets"][0]
        front_control(
            cloud,
            "POST",
            "/faults",
            {
                "service": "ec2",
                "action": "RunInstances",
                "code": "InsufficientInstanceCapacity",
                "params": {"SubnetId": subnet},
                "count": OUTAGE_ANSWERS,
            },
        )
        print(f"No capacity in {subnet} for the whole run; starting {users} servers", flush=True)
        failed = start_servers(hub, names, time.monotonic() + 120 + 10 * users)
        if failed:
            outcome.errors.append(f"servers did not start before the faults: {failed}")
            return outcome
        rng = random.Random(seed)
        outcome.analysts = [
            Analyst(hub_url, name, tokens[name], seed=rng.randrange(10**9), stop=stop)
            for name in names
        ]
        began = time.monotonic()
        for analyst in outcome.analysts:
            analyst.start()
        for fault in faults:
            delay = began + fault.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            chaos.apply(fault, late=max(0.0, -delay))
        time.sleep(max(0.0, began + duration - time.monotonic()))
        print("Faults over: clearing them; recovery", flush=True)
        front_control(cloud, "DELETE", "/faults")
        cloud.clear_faults()
        time.sleep(30)  # the analysts find their servers again, starting them if stopped
        stop.set()
        for analyst in outcome.analysts:
            analyst.join(60)
        check(outcome, chaos)
        outcome.fault_log = chaos.log
    except Exception as e:
        outcome.errors.append(repr(e))
    finally:
        stop.set()
        if chaos is not None:
            chaos.hub.stop()
        cloud.stop()
    return outcome


def report(outcome: Outcome) -> bool:
    print()
    print(f"Seed {outcome.seed}; faults applied:")
    for line in outcome.fault_log:
        print(f"  {line}")
    columns = ("steps", "failed", "starts", "files")
    print(f"{'analyst':<10} " + " ".join(f"{c:>6}" for c in columns) + "  longest without server")
    for a in outcome.analysts:
        r = a.record
        figures = (r.steps, r.failures, r.starts, len(r.files))
        print(f"{r.user:<10} " + " ".join(f"{f:>6}" for f in figures) + f"  {r.longest_down:.1f}s")
    worst = max(outcome.analysts, key=lambda a: a.record.longest_down, default=None)
    if worst is not None:
        print(
            f"longest time an analyst was without their server: "
            f"{worst.record.longest_down:.1f}s ({worst.user}; it began with "
            f"{worst.record.longest_cause[:200]})"
        )
    checks = [
        ("files lost", outcome.files_lost, f"of {outcome.files_written} written"),
        ("orphan instances", outcome.orphans, ""),
        ("servers stuck pending", outcome.stuck, ""),
        ("analysts without their server after recovery", outcome.unreachable, ""),
        ("run errors", outcome.errors, ""),
    ]
    for name, found, note in checks:
        shown = f"{len(found)} {note}".rstrip()
        listed = f": {', '.join(found[:10])}" if found else ""
        print(f"{'PASS' if not found else 'FAIL'}  {name}: {shown} (limit 0){listed}")
    return outcome.passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--outage", type=float, default=120.0, help="Synapse outage, seconds")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    outcome = run(args.users, args.minutes * 60, seed, args.outage)
    return 0 if report(outcome) else 1
