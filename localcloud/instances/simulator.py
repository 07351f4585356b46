"""The instance simulator: does on this machine what the bootstrap does on a real instance.

moto keeps instances as records; nothing runs on them. The simulator watches them
(DescribeInstances on moto directly every ``poll_interval``, and at once, for the instances
they name, when the AWS front answers a RunInstances, StartInstances, StopInstances,
TerminateInstances or RebootInstances) and, for each instance:

running (launched or started)
    after ``boot_delay`` (default 2 s, 0 for benchmarks): reads the user data's
    ``server.conf``, assumes the instance profile's role, reads the ``config`` and
    ``jupyterhub-env`` parameters with it (retrying until the hub has written them), makes the
    home volume's directory ``<state>/volumes/<volume id>/`` (the volume attached at
    ``HOME_DEVICE``), and starts a real ``jupyterhub-singleuser`` on a free port standing in
    for the instance's 8888 (``localcloud.instances.notebook``). Only once it listens is the
    instance registered with the SSM stand-in (remote port 8888 -> that port): until then
    StartSession answers ``TargetNotConnected``, as for an agent that has not come online.
    A notebook process that exits on its own is started again (docker's ``--restart
    unless-stopped``), with a short backoff; the agent stays online meanwhile.
stopping / stopped / shutting-down / terminated
    deregisters the instance (its sessions drop) and stops the process group (SIGTERM, then
    SIGKILL). The volume directory stays; after termination it is removed if moto deleted the
    volume (``DeleteOnTermination``), kept otherwise.
reboot
    both of the above.
snapshots
    an EBS snapshot holds the volume's blocks as they were when it was requested: when the
    AWS front answers ``CreateSnapshot``, the volume's directory is copied to
    ``<state>/snapshots/<snapshot id>/`` (before the hub can make another call); a volume
    created from a snapshot (``RunInstances`` with a snapshot in its block device mapping, as
    a zone move does) starts as that copy at its first mount; ``DeleteSnapshot`` removes it.
light instances (``light_instances``, ``serve --light-instances``; for benchmarks at scale)
    the boot is the same up to the notebook: user data, role credentials, parameters, home
    volume; then, instead of a process of its own, the instance's 8888 resolves to the one
    shared ``localcloud.instances.light`` responder (started at the first light boot), which
    answers what the hub asks of a single-user server. It is registered with the SSM
    stand-in at once; stop, start and terminate work as above. The setting applies from the
    next boot. With hundreds of instances, the watch's own DescribeInstances on moto slows
    down with them: the simulator waits ``WATCH_COST_FACTOR`` times as long as its last look
    took (at least ``poll_interval``) unless the hub's calls wake it.
the idle backstop
    while an instance runs, the simulator does what ``notebook-bootstrap backstop`` (run by a
    systemd timer the user data installs) does on AWS (``localcloud.instances.backstop``): every
    ``backstop_check_seconds`` it asks the notebook for its ``last_activity`` and, once the
    instance has been idle (counted from its boot if never used) for its limit, writes why to
    the log and shuts the guest down: the instance stops in moto with the state reason
    ``Client.InstanceInitiatedShutdown`` (not through the AWS front: the hub made no call), its
    notebook is killed, and the hub sees it stopped at its next poll. The limit is
    ``backstop_idle_seconds`` when set (tests), else the instance's own (``server.conf``'s
    ``BACKSTOP_IDLE_SECONDS``, else 24 h).

real boot (``machines``, ``start_aws(real_boot=True)``)
    none of the above runs in Python: each instance is a booted Linux machine that runs its
    user data and the bootstrap itself (``localcloud.instances.realboot``); the simulator
    boots it when moto runs the instance, powers it off when the hub stops it, and turns a
    ``shutdown -h now`` inside into a stop with the guest-shutdown reason.

Every action is one line in ``<state>/instances.log`` (never a secret). Tests and the demo
steer it through this object or the AWS front's ``/_control/`` routes
(``localcloud.instances.control``): ``boot_delay``, ``instances()``, ``fail_boot(id)`` (the
instance never comes up: no notebook, no agent), ``fail_next_boots(n)``, ``kill_notebook(id)``
(the process dies as in a crash), ``backstop_idle_seconds`` and ``backstop_check_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from spawner.naming import CONTAINER_NOTEBOOK_PORT, INSTANCE_SSH_PORT, SSH_PORT

from ..aws.calls import CallRecord
from ..machines.imds import InstanceIdentity, RoleSession
from ..machines.machine import Machine, MachineError
from ..ssm.registry import Resolver
from .activity import ActivityLog
from .backstop import BackstopClock, ask_notebook, idle_limit
from .boot_reads import (
    INSTANCE_INITIATED,
    BootError,
    MotoReader,
    ServerParameters,
    mark_instance_initiated_shutdown,
)
from .light import LightResponder
from .notebook import (
    NotebookProcess,
    RoleCredentials,
    notebook_environment,
    write_synapse_config,
)
from .realboot import BootFacts, MachineHost, session_from_sts
from .sshd import SshDaemon
from .userdata import UserDataError, read_server_conf, user_data_text

if TYPE_CHECKING:
    from ..ssm import SsmStandIn

log = logging.getLogger(__name__)
T = TypeVar("T")

#: moto's account: what an instance identity document names as the owner
MOTO_ACCOUNT = "123456789012"
DEFAULT_BOOT_DELAY = 2.0
POLL_INTERVAL = 0.5
LISTEN_TIMEOUT = 90.0
PARAMETER_RETRY = (0.2, 2.0)  # first and longest wait between parameter reads
RESTART_BACKOFF = (0.5, 10.0)
#: How long a boot waits for the instance profile to show in DescribeInstances.
PROFILE_WAIT = 10.0
#: The watch waits at least this many times its last look's duration (moto's DescribeInstances
#: grows with the instances; a look must not take most of the local cloud's CPU).
WATCH_COST_FACTOR = 10.0
HALTED = frozenset({"stopping", "stopped", "shutting-down", "terminated"})
#: How often the backstop looks (the instance's timer: every 5 minutes).
BACKSTOP_CHECK_SECONDS = 60.0
#: States a targeted look follows until they end (the periodic look catches the rest).
TRANSITIONS = frozenset({"pending", "stopping", "shutting-down"})
#: The instance ids in a RunInstances answer (EC2's XML).
_LAUNCHED_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")
WATCHED_ACTIONS = frozenset(
    {"RunInstances", "StartInstances", "StopInstances", "TerminateInstances", "RebootInstances"}
)


@dataclass
class BootPlan:
    """What a boot found out, enough to (re)start the notebook."""

    conf: dict[str, str]
    env: dict[str, str]
    home: Path
    runtime_dir: Path
    kind: str
    port: int  # the instance's notebook port (8888)
    backstop_limit: int = 24 * 3600
    #: the config parameter's: who may log in over SSH, and the app ports the bootstrap
    #: would publish on the instance's loopback
    authorized_keys: tuple[str, ...] = ()
    app_ports: frozenset[int] = frozenset()


@dataclass
class SimulatedInstance:
    instance_id: str
    state: str = "unknown"  # moto's, as last seen
    #: the simulator's: new, booting, running, restarting, failed, stopping, stopped,
    #: terminated
    phase: str = "new"
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # device name -> volume id
    home_volume: str | None = None
    volume_dir: Path | None = None
    process: NotebookProcess | None = None
    sshd: SshDaemon | None = None
    registered: bool = False
    fail_boot: bool = False
    boots: int = 0
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    halting: asyncio.Task[None] | None = None
    #: the simulator's call generation when the hub last stopped/rebooted it
    halted_at: int = 0
    plan: BootPlan | None = None
    backstop: BackstopClock | None = None
    #: stopped by its own backstop (a guest shutdown), not started since
    guest_stopped: bool = False
    #: a light boot: the shared responder's port stands in for the notebook's
    light_port: int | None = None

    @property
    def port(self) -> int | None:
        if self.light_port is not None:
            return self.light_port
        return self.process.port if self.process and self.process.returncode is None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "state": self.state,
            "phase": self.phase,
            "detail": self.detail,
            "port": self.port,
            "pid": self.pid,
            "sshPort": self.sshd.port if self.sshd is not None else None,
            "volumeId": self.home_volume,
            "volumeDir": str(self.volume_dir) if self.volume_dir else None,
            "agentOnline": self.registered,
            "light": self.light_port is not None,
            "boots": self.boots,
            "restarts": self.restarts,
            "failBoot": self.fail_boot,
            "backstop": self.backstop.to_json() if self.backstop and self.task else None,
        }


class InstanceSimulator:
    """See the module docstring. ``start()`` on a running loop, ``close()`` to stop all."""

    def __init__(
        self,
        *,
        moto_url: str,
        ssm: SsmStandIn,
        state_dir: Path,
        aws_endpoint_url: str = "",
        synapse_base_url: str | None = None,
        region: str = "us-east-1",
        boot_delay: float = DEFAULT_BOOT_DELAY,
        poll_interval: float = POLL_INTERVAL,
        backstop_idle_seconds: float | None = None,
        backstop_check_seconds: float = BACKSTOP_CHECK_SECONDS,
        light_instances: bool = False,
        machines: MachineHost | None = None,
    ) -> None:
        self.moto_url = moto_url
        self.ssm = ssm
        self.state_dir = state_dir
        #: what the notebooks get as AWS_ENDPOINT_URL (the AWS front); moto if unset
        self.aws_endpoint_url = aws_endpoint_url or moto_url
        self.synapse_base_url = synapse_base_url
        self.region = region
        self.boot_delay = boot_delay
        self.poll_interval = poll_interval
        #: the backstop's limit for every instance (None: each instance's own)
        self.backstop_idle_seconds = backstop_idle_seconds
        self.backstop_check_seconds = backstop_check_seconds
        #: boot without a notebook process, answered by the shared light responder
        self.light_instances = light_instances
        self.light = LightResponder()
        #: real-boot mode (`localcloud.instances.realboot`): each instance a booted machine
        self.machines = machines
        self.volumes_dir = state_dir / "volumes"
        self.snapshots_dir = state_dir / "snapshots"
        self.runtime_root = state_dir / "runtime"
        self.consoles_dir = state_dir / "consoles"
        self.activity = ActivityLog(state_dir / "instances.log")
        self._reader: MotoReader | None = None
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="simulator")
        self._instances: dict[str, SimulatedInstance] = {}
        self._fail_ids: set[str] = set()
        self._fail_next = 0
        self._wake = asyncio.Event()
        self._full_look = False  # a look at every instance is asked for
        self._targets: set[str] = set()  # instances the hub's calls changed
        self._waiting: set[str] = set()  # ... still in a transition at the last look
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        self._poll_errors = 0
        self._generation = 0  # bumped by every instance call of the hub
        self._background: set[asyncio.Task[None]] = set()

    # -- public API ----------------------------------------------------------------------------
    @property
    def reader(self) -> MotoReader:
        if self._reader is None:
            raise RuntimeError("the simulator has not been started")
        return self._reader

    async def start(self) -> None:
        """Start watching moto (the first look happens before this returns)."""
        self._reader = await self._in_thread(MotoReader, self.moto_url, self.region)
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_loop())

    async def close(self) -> None:
        """Stop watching, stop every notebook process, deregister every instance."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for sim in self._instances.values():
            if sim.task is not None:
                self._start_halt(sim, "local cloud shutting down")
        halts = [sim.halting for sim in self._instances.values() if sim.halting is not None]
        await asyncio.gather(*halts, *self._background, return_exceptions=True)
        for sim in self._instances.values():  # anything a failed halt left behind
            if sim.process is not None:
                sim.process.kill_now()
        if self.machines is not None:
            await self.machines.close()
        await self.light.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def poke(self, instance_ids: Iterable[str] = ()) -> None:
        """Look at moto now instead of at the next interval: at ``instance_ids`` only, when
        given (what a hub's call changed), else at every instance."""
        ids = set(instance_ids)
        if ids:
            self._targets |= ids
        else:
            self._full_look = True
        self._wake.set()

    def instances(self) -> list[dict[str, Any]]:
        """The simulated instances (id, states, port, pid, volume directory, ...); a real-boot
        instance's machine too (its directory on the host and its PID 1 there), which tests
        look into as one looks at an instance's root volume and console."""
        return [self._describe(sim) for sim in self._instances.values()]

    def _describe(self, sim: SimulatedInstance) -> dict[str, Any]:
        info = sim.to_json()
        machine = self.machines.get(sim.instance_id) if self.machines is not None else None
        if machine is not None:
            info["machine"] = {"dir": str(machine.dir), "leader": machine.leader}
        return info

    def get(self, instance_id: str) -> SimulatedInstance | None:
        return self._instances.get(instance_id)

    def fail_boot(self, instance_id: str, fail: bool = True) -> None:
        """Make (or stop making) every boot of ``instance_id`` fail: it runs in EC2, but no
        notebook starts and its agent never comes online. Takes effect at its next boot."""
        if fail:
            self._fail_ids.add(instance_id)
        else:
            self._fail_ids.discard(instance_id)
        sim = self._instances.get(instance_id)
        if sim is not None:
            sim.fail_boot = fail

    def fail_next_boots(self, count: int = 1) -> None:
        """The next ``count`` boots, of whichever instances, fail as with ``fail_boot``."""
        self._fail_next = max(0, count)

    def kill_notebook(self, instance_id: str) -> int | None:
        """SIGKILL the instance's notebook (a crash); the restart policy starts it again.
        Returns the killed pid, None if there was no process."""
        sim = self._instances.get(instance_id)
        if sim is None or sim.process is None or sim.process.returncode is not None:
            return None
        pid = sim.process.pid
        sim.process.kill_now()
        return pid

    async def wait_for(
        self, instance_id: str, phase: str | tuple[str, ...], within: float = 30.0
    ) -> SimulatedInstance:
        """Wait until the instance reaches ``phase`` (for tests); raises ``TimeoutError``."""
        phases = (phase,) if isinstance(phase, str) else phase
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            sim = self._instances.get(instance_id)
            if sim is not None and sim.phase in phases:
                return sim
            await asyncio.sleep(0.05)
        sim = self._instances.get(instance_id)
        raise TimeoutError(
            f"{instance_id} not {'/'.join(phases)} after {within}s "
            f"(now {sim.phase if sim else 'unknown'}: {sim.detail if sim else ''})"
        )

    def on_aws_call(self, record: CallRecord) -> None:
        """Listener for the AWS front: react to the hub's instance calls without waiting."""
        if record.service == "ec2" and record.action == "CreateSnapshot" and record.status == 200:
            self._snapshot_blocks(record)
            return
        if record.service == "ec2" and record.action == "DeleteSnapshot" and record.status == 200:
            snapshot = record.params.get("SnapshotId", "")
            if snapshot.startswith("snap-"):
                shutil.rmtree(self.snapshots_dir / snapshot, ignore_errors=True)
            return
        if record.service != "ec2" or record.action not in WATCHED_ACTIONS:
            return
        if record.status != 200 or self._closed:
            return
        self._generation += 1
        changed = {v for k, v in record.params.items() if k.startswith("InstanceId.")}
        if record.action == "RunInstances":
            changed = set(_LAUNCHED_ID.findall(record.answer.decode(errors="replace")))
        for value in changed:
            sim = self._instances.get(value)
            if sim is None:
                continue
            if sim.guest_stopped and record.action == "StopInstances":
                # EC2 leaves a stopped instance as it is; moto's StopInstances rewrites its
                # state reason (Client.UserInitiatedShutdown): put the guest's back.
                mark_instance_initiated_shutdown(sim.instance_id, self.region)
                continue
            sim.guest_stopped = False
            if record.action in ("StopInstances", "TerminateInstances", "RebootInstances"):
                sim.halted_at = self._generation
                if sim.task is not None:
                    what = record.action.removesuffix("Instances").lower()
                    self._start_halt(sim, f"{what} requested")
        self.poke(changed)

    # -- watching ------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        """Looks at every instance every ``poll_interval`` (or ``WATCH_COST_FACTOR`` times
        as long as the last such look took), and between them at the instances the hub's
        calls changed: with thousands of instances a look at all of them takes seconds of
        moto's time, and a spawn after another would otherwise make one each."""
        loop = asyncio.get_running_loop()
        took = 0.0
        last_full = loop.time()
        while not self._closed:
            full_due = last_full + max(self.poll_interval, WATCH_COST_FACTOR * took)
            wait = full_due - loop.time()
            if self._waiting:  # instances in a transition: look at them again soon
                wait = min(wait, self.poll_interval)
            if wait > 0 and not self._wake.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            if self._full_look or loop.time() >= full_due:
                self._full_look = False
                self._targets.clear()
                self._waiting.clear()
                began = loop.time()
                await self.poll_once()
                took = loop.time() - began
                last_full = loop.time()
            elif self._targets or self._waiting:
                ids = self._targets | self._waiting
                self._targets, self._waiting = set(), set()
                if not await self.poll_once(ids):
                    self._waiting |= ids  # moto did not answer: look again soon

    async def poll_once(self, instance_ids: Iterable[str] = ()) -> bool:
        """One look at moto (at every instance, or at ``instance_ids``), and what follows
        from it; False if moto did not answer."""
        generation = self._generation
        ids = set(instance_ids)
        try:
            items = await self._in_thread(self.reader.describe_instances, ids)
        except Exception as exc:
            self._poll_errors += 1
            if self._poll_errors in (1, 10) or self._poll_errors % 120 == 0:
                log.warning(
                    "DescribeInstances on moto failed (%s times): %s", self._poll_errors, exc
                )
            return False
        self._poll_errors = 0
        for item in items:
            self._reconcile(item, generation)
            if ids and item.get("State", {}).get("Name") in TRANSITIONS:
                self._waiting.add(item["InstanceId"])
        return True

    def _reconcile(self, item: dict[str, Any], generation: int) -> None:
        instance_id = item["InstanceId"]
        state = item.get("State", {}).get("Name", "unknown")
        sim = self._instances.get(instance_id)
        if sim is None:
            sim = self._instances[instance_id] = SimulatedInstance(
                instance_id, fail_boot=instance_id in self._fail_ids
            )
        previous, sim.state, sim.info = sim.state, state, item
        devices = {
            m["DeviceName"]: m["Ebs"]["VolumeId"]
            for m in item.get("BlockDeviceMappings", [])
            if "Ebs" in m
        }
        if devices:
            sim.devices = devices
        if self._closed:
            return
        halting = sim.halting is not None and not sim.halting.done()
        # A look that began before the hub stopped this instance may still say "running".
        stale = generation < sim.halted_at
        if state == "running" and sim.task is None and not halting and not stale:
            sim.task = asyncio.create_task(self._lifecycle(sim))
        elif state in HALTED:
            if sim.task is not None:
                self._start_halt(sim, state)
            elif not halting:
                self._set_halted(sim)
            if state == "terminated" and previous != "terminated" and previous != "unknown":
                task = asyncio.create_task(self._after_termination(sim))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    # -- one boot: from running to the notebook answering, and restarts ------------------------
    async def _lifecycle(self, sim: SimulatedInstance) -> None:
        sim.boots += 1
        sim.phase, sim.detail = "booting", f"boot {sim.boots}"
        sim.plan = None
        if self.machines is not None:
            try:
                await self._run_machine(sim, self.machines)
            finally:
                await self._cleanup(sim)
            return
        sim.backstop = clock = BackstopClock(booted_at=time.time())
        self.activity.write(sim.instance_id, f"running: booting (boot delay {self.boot_delay:g}s)")
        # The backstop's timer runs from the boot on, whatever the bootstrap does.
        backstop = asyncio.create_task(self._backstop(sim, clock))
        try:
            if self.boot_delay > 0:
                await asyncio.sleep(self.boot_delay)
            injected = sim.fail_boot or self._fail_next > 0
            if injected:
                if not sim.fail_boot:
                    self._fail_next -= 1
                sim.phase, sim.detail = "failed", "boot failure injected"
                self.activity.write(
                    sim.instance_id,
                    "boot failed (injected): no notebook will start, the agent stays offline",
                )
                await backstop  # the instance runs on, without a notebook
                return
            try:
                plan = await self._prepare(sim)
            except (BootError, UserDataError) as exc:
                sim.phase, sim.detail = "failed", str(exc)
                self.activity.write(sim.instance_id, f"bootstrap failed: {exc}")
                await backstop
                return
            sim.plan = plan
            clock.limit = plan.backstop_limit
            if self.light_instances:
                await self._run_light(sim, plan)
            else:
                await self._run_notebook(sim, plan)
        finally:
            backstop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backstop
            await self._cleanup(sim)

    async def _run_machine(self, sim: SimulatedInstance, machines: MachineHost) -> None:
        """Real boot: the instance's machine runs its user data and the bootstrap itself
        (`localcloud.instances.realboot`); the simulator turns how the machine ends into
        what EC2 shows."""
        iid = sim.instance_id
        self.activity.write(iid, "running: booting its machine (real boot)")

        def booted(machine: Machine) -> None:
            sim.phase, sim.detail = "running", f"machine booted (boot {machine.boots})"
            self.activity.write(iid, f"machine booted (boot {machine.boots} of its root volume)")

        def rebooted(machine: Machine, _status: int) -> None:
            sim.phase, sim.detail = "booting", "rebooted from inside"
            self.activity.write(iid, "the machine rebooted itself: booting again")

        def online(resolve: Resolver) -> None:
            address = sim.info.get("PrivateIpAddress")
            self.ssm.register(iid, resolve, **({"ip_address": address} if address else {}))
            sim.registered = True
            self.activity.write(iid, "agent online: its dials run inside the machine")

        def offline() -> None:
            if sim.registered:
                self.ssm.deregister(iid)
                sim.registered = False
                self.activity.write(iid, "agent offline (the boot ended)")

        try:
            facts = await self._boot_facts(sim)
            status = await machines.run(
                facts, booted=booted, rebooted=rebooted, online=online, offline=offline
            )
        except Exception as exc:  # the machine cannot run (a link, nspawn, moto): say why
            if not isinstance(exc, MachineError | OSError):
                log.exception("%s: the machine failed", iid)
            sim.phase, sim.detail = "failed", (str(exc).splitlines() or [repr(exc)])[0]
            self.activity.write(iid, f"machine failed: {sim.detail}")
            return
        if status != 0:
            sim.phase, sim.detail = "failed", f"the machine ended with status {status}"
            self.activity.write(iid, f"{sim.detail}: the instance is left running, impaired")
            return
        # ``shutdown -h now`` inside, with InstanceInitiatedShutdownBehavior=stop: EC2 stops it
        code = await self._stop_by_guest(sim, "the machine powered off;")
        if code is not None:
            self.activity.write(iid, f"the machine powered itself off: the instance stops ({code})")
            self.poke([iid])

    async def _boot_facts(self, sim: SimulatedInstance) -> BootFacts:
        """The user data, identity and role a machine of this instance gets from EC2."""
        iid = sim.instance_id
        # a look taken while moto was still in RunInstances may lack the instance's profile
        # and volumes: wait for the profile as a boot does (`_instance_profile`)
        profile = await self._instance_profile(sim)
        info = sim.info
        user_data, home = b"", None
        try:  # it boots all the same, with nothing to do
            user_data = await self._in_thread(self.reader.user_data, iid)
            conf = read_server_conf(user_data_text(user_data))
            home = await self._home_volume(sim, conf["HOME_DEVICE"], owner=(1000, 100))
        except (BootError, UserDataError, KeyError) as exc:
            self.activity.write(iid, f"the machine boots without user data or home: {exc}")
        identity = InstanceIdentity(
            instance_id=iid,
            region=self.region,
            availability_zone=(info.get("Placement") or {}).get("AvailabilityZone", ""),
            instance_type=str(info.get("InstanceType", "")),
            image_id=str(info.get("ImageId", "")),
            account_id=MOTO_ACCOUNT,
            private_ip=str(info.get("PrivateIpAddress") or "10.0.0.10"),
            launched_at=info.get("LaunchTime") or dt.datetime.now(dt.UTC),
        )
        options = info.get("MetadataOptions") or {}
        metadata = {
            "hop_limit": int(options.get("HttpPutResponseHopLimit") or 1),
            "tokens_required": options.get("HttpTokens") == "required",
        }
        if not profile:
            self.activity.write(iid, "no instance profile: the metadata service has no role")
            return BootFacts(identity, user_data, home=home, **metadata)
        role_arn, first = await self._in_thread(self.reader.role_session, iid, profile)
        sessions = [session_from_sts(first)]  # the first ask gets these: one AssumeRole less

        async def credentials() -> RoleSession:
            if sessions:
                return sessions.pop()
            _arn, creds = await self._in_thread(self.reader.role_session, iid, profile)
            return session_from_sts(creds)

        return BootFacts(
            identity,
            user_data,
            role_name=role_arn.rpartition("/")[2],
            credentials=credentials,
            hostname="ip-" + identity.private_ip.replace(".", "-"),
            home=home,
            **metadata,
        )

    async def _prepare(self, sim: SimulatedInstance) -> BootPlan:
        iid = sim.instance_id
        conf = await self._in_thread(self.reader.server_conf, iid)
        if sim.backstop is not None:
            sim.backstop.limit = idle_limit(conf)
        path = conf["NOTEBOOK_PARAMETER_PATH"]
        self.activity.write(
            iid,
            f"user data: server.conf parameter path {path}, port {conf['NOTEBOOK_PORT']}, "
            f"home device {conf['HOME_DEVICE']}",
        )
        profile = await self._instance_profile(sim)
        if not profile:
            raise BootError("the instance has no instance profile: it cannot read parameters")
        role_arn, credentials = await self._in_thread(
            self.reader.role_credentials, iid, str(profile)
        )
        self.activity.write(iid, f"instance role {role_arn}: temporary credentials obtained")
        params = await self._read_parameters(sim, path, credentials)
        kind = str(params.config.get("image_kind", "jupyter"))
        image = str(params.config.get("image", ""))
        self.activity.write(
            iid,
            f"parameters read: config (image {image or '?'}, kind {kind}) and jupyterhub-env "
            f"({len(params.env)} variables)",
        )
        home = await self._home_volume(sim, conf["HOME_DEVICE"])
        if self.synapse_base_url and write_synapse_config(home, self.synapse_base_url):
            self.activity.write(iid, "wrote ~/.synapseConfig (endpoints of the Synapse stand-in)")
        runtime_dir = self.runtime_root / iid
        runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = notebook_environment(
            params.env,
            home=home,
            runtime_dir=runtime_dir,
            aws_endpoint_url=self.aws_endpoint_url,
            region=conf.get("AWS_REGION") or self.region,
            credentials=credentials,
            image=image,
        )
        port = int(conf.get("NOTEBOOK_PORT") or params.config.get("port") or 8888)
        limit = idle_limit(conf)
        keys = params.config.get("ssh_authorized_keys") or []
        ports = params.config.get("relay_ports") or [SSH_PORT]
        app_ports = frozenset(int(p) for p in ports) - {SSH_PORT, CONTAINER_NOTEBOOK_PORT}
        return BootPlan(
            conf, env, home, runtime_dir, kind, port, limit, tuple(map(str, keys)), app_ports
        )

    async def _instance_profile(self, sim: SimulatedInstance) -> str | None:
        """The profile's ARN as the watch last saw the instance. A look taken while moto was
        still inside RunInstances may not show the association yet (with no boot delay, the
        boot starts from that look): look again for a few seconds, as the bootstrap keeps
        asking IMDS for the role's credentials."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROFILE_WAIT
        while True:
            profile = (sim.info.get("IamInstanceProfile") or {}).get("Arn")
            if profile or loop.time() >= deadline:
                return str(profile) if profile else None
            self.poke([sim.instance_id])
            await asyncio.sleep(0.2)

    async def _read_parameters(
        self, sim: SimulatedInstance, path: str, credentials: RoleCredentials
    ) -> ServerParameters:
        """Retry until the hub has written them (it writes and tags them around the launch)."""
        wait, longest = PARAMETER_RETRY
        said = False
        while True:
            try:
                answer = await self._in_thread(self.reader.read_parameters, path, credentials)
            except BootError:
                raise
            except Exception as exc:  # AccessDenied before the tag, throttling, ...
                answer = [f"({type(exc).__name__})"]
            if isinstance(answer, ServerParameters):
                return answer
            if not said:
                said = True
                sim.detail = "waiting for parameters"
                self.activity.write(
                    sim.instance_id, f"waiting for parameters: {', '.join(answer)} not readable"
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest)

    def _snapshot_blocks(self, record: CallRecord) -> None:
        """An EBS snapshot holds the volume's blocks as they were when it was requested:
        the volume's directory is copied as the front answers (before the hub can make
        another call), to ``<state>/snapshots/<snapshot id>/``."""
        found = re.search(rb"<snapshotId>(snap-[0-9a-f]+)</snapshotId>", record.answer)
        volume = record.params.get("VolumeId", "")
        source = self.volumes_dir / volume
        if found is None or not volume or not source.is_dir():
            return
        snapshot = found.group(1).decode()
        shutil.copytree(source, self.snapshots_dir / snapshot, symlinks=True, dirs_exist_ok=True)
        self.activity.write(volume, f"snapshot {snapshot}: the volume's blocks copied")

    async def _home_volume(
        self, sim: SimulatedInstance, device: str, *, owner: tuple[int, int] | None = None
    ) -> Path:
        """The home volume's directory; a volume created from a snapshot (EC2 creates it
        from the snapshot's blocks) starts as that snapshot's copy. ``owner``: (uid, gid) of
        a new one, as the bootstrap leaves a volume it formats (a real-boot machine's
        bootstrap finds it mounted and uses it as it is)."""
        volume = sim.devices.get(device) or sim.devices.get(_alias(device))
        if volume is None:
            raise BootError(f"no volume attached at {device}: cannot mount the home directory")
        sim.home_volume = volume
        sim.volume_dir = self.volumes_dir / volume
        fresh = not sim.volume_dir.exists()
        restored = ""
        if fresh:
            snapshot = await self._in_thread(self.reader.volume_snapshot, volume)
            if snapshot and (self.snapshots_dir / snapshot).is_dir():
                await self._in_thread(
                    shutil.copytree, self.snapshots_dir / snapshot, sim.volume_dir, True
                )
                restored = f"created from snapshot {snapshot}: "
        sim.volume_dir.mkdir(parents=True, exist_ok=True)
        if fresh and not restored and owner is not None:
            os.chown(sim.volume_dir, *owner)
        self.activity.write(
            sim.instance_id,
            f"home volume {volume} at {device}: {restored}"
            f"{'formatted (first use)' if fresh and not restored else 'mounted'} "
            f"{sim.volume_dir}",
        )
        return sim.volume_dir

    async def _start_sshd(self, sim: SimulatedInstance, plan: BootPlan) -> None:
        """The image's sshd (`localcloud.instances.sshd`), for the boot's lifetime: the
        container's start hook starts it beside the notebook. A failure is logged; the
        notebook runs without it, as the hook lets it."""
        try:
            sshd = await SshDaemon.start(
                home=plan.home,
                runtime_dir=plan.runtime_dir,
                authorized_keys=list(plan.authorized_keys),
                session_env=plan.env,
                console=self.consoles_dir / f"{sim.instance_id}.sshd.log",
            )
        except OSError as exc:
            self.activity.write(sim.instance_id, f"sshd not started: {exc}")
            return
        sim.sshd = sshd
        listening = await sshd.wait_listening()
        self.activity.write(
            sim.instance_id,
            f"sshd pid {sshd.pid} on 127.0.0.1:{sshd.port} (the instance's {INSTANCE_SSH_PORT}), "
            f"{len(plan.authorized_keys)} key(s)" + ("" if listening else ": not listening"),
        )

    async def _run_notebook(self, sim: SimulatedInstance, plan: BootPlan) -> None:
        iid = sim.instance_id
        loop = asyncio.get_running_loop()
        backoff = RESTART_BACKOFF[0]
        await self._start_sshd(sim, plan)
        while True:
            process = await NotebookProcess.start(
                env=plan.env,
                home=plan.home,
                kind=plan.kind,
                console=self.consoles_dir / f"{iid}.log",
                sshd_pid=sim.sshd.pid if sim.sshd is not None else None,
            )
            sim.process = process
            page = ", RStudio launcher page" if plan.kind == "rstudio" else ""
            self.activity.write(
                iid,
                f"started jupyterhub-singleuser pid {process.pid} on 127.0.0.1:{process.port} "
                f"(the instance's {plan.port}{page})",
            )
            started = loop.time()
            if await process.wait_listening(LISTEN_TIMEOUT):
                sim.phase, sim.detail = "running", f"notebook on 127.0.0.1:{process.port}"
                if not sim.registered:
                    self._register(sim, plan.port)
                else:
                    self.activity.write(iid, f"notebook listening again on port {process.port}")
                code = await process.proc.wait()
            else:
                code = process.returncode
                if code is None:
                    self.activity.write(iid, f"notebook did not listen within {LISTEN_TIMEOUT:g}s")
                    code = await process.stop()
            sim.phase, sim.detail = "restarting", f"notebook exited with status {code}"
            sim.restarts += 1
            if loop.time() - started > 30:
                backoff = RESTART_BACKOFF[0]
            self.activity.write(
                iid,
                f"notebook pid {process.pid} exited with status {code}: restarting in "
                f"{backoff:g}s (restart policy unless-stopped)",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF[1])

    async def _run_light(self, sim: SimulatedInstance, plan: BootPlan) -> None:
        """The instance's 8888 is the shared responder's port, until the instance halts."""
        sim.light_port = await self.light.start()
        sim.phase, sim.detail = "running", f"light: shared responder on 127.0.0.1:{sim.light_port}"
        self.activity.write(
            sim.instance_id,
            f"light instance: no notebook process; the instance's {plan.port} is the shared "
            f"responder on 127.0.0.1:{sim.light_port}",
        )
        self._register(sim, plan.port)
        await asyncio.Future()  # cancelled by the halt

    def _register(self, sim: SimulatedInstance, remote_port: int) -> None:
        def resolve(port: int) -> tuple[str, int]:
            """The instance's ports: the notebook's, the sshd's, and the app ports the
            bootstrap publishes (on AWS the container's; here the host's own loopback, where
            an app started in the simulated server listens)."""
            local = sim.port if port == remote_port else None
            if port == INSTANCE_SSH_PORT and sim.sshd is not None:
                local = sim.sshd.port
            elif sim.plan is not None and port in sim.plan.app_ports:
                local = port
            if local is None:
                raise LookupError(f"nothing listens on port {port} of {sim.instance_id}")
            return "127.0.0.1", local

        address = sim.info.get("PrivateIpAddress")
        details = {"ip_address": address} if address else {}
        self.ssm.register(sim.instance_id, resolve, **details)
        sim.registered = True
        self.activity.write(
            sim.instance_id, f"agent online: sessions to port {remote_port} reach the notebook"
        )

    # -- the idle backstop ----------------------------------------------------------------------
    async def _backstop(self, sim: SimulatedInstance, clock: BackstopClock) -> None:
        """The instance's timer: look at the notebook's activity; shut down when idle too long."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            # In short naps, so that a new check interval (tests) applies at once.
            await asyncio.sleep(max(0.05, min(self.backstop_check_seconds, 1.0)))
            if loop.time() - checked < self.backstop_check_seconds:
                continue
            checked = loop.time()
            if self.backstop_idle_seconds is not None:
                clock.limit = self.backstop_idle_seconds
            elif sim.plan is not None:
                clock.limit = sim.plan.backstop_limit
            port, plan = sim.port, sim.plan
            if port is not None and plan is not None and sim.phase == "running":
                try:
                    clock.observe(await ask_notebook(port, plan.env), time.time())
                except Exception as exc:
                    clock.failed(str(exc))
            elif sim.phase != "running":
                clock.failed(f"the notebook is not running ({sim.phase}: {sim.detail})")
            now = time.time()
            if clock.expired(now):
                await self._guest_shutdown(sim, clock.reason(now))
                return

    async def _guest_shutdown(self, sim: SimulatedInstance, reason: str) -> None:
        """``shutdown -h now`` inside the instance: EC2 stops it (never terminates)."""
        iid = sim.instance_id
        self.activity.write(iid, f"notebook-backstop: {reason}")
        self.activity.write(iid, "notebook-backstop: shutdown -h now (the instance stops)")
        code = await self._stop_by_guest(sim, "notebook-backstop:")
        if code is not None:
            self._start_halt(sim, f"instance-initiated shutdown ({code})")

    async def _stop_by_guest(self, sim: SimulatedInstance, who: str) -> str | None:
        """What EC2 does when the guest shuts down: the instance stops in moto, with the
        guest-shutdown state reason; returns that reason's code (None: moto refused, which
        ``who`` reports in the activity log)."""
        self._generation += 1
        sim.halted_at = self._generation  # a look at moto begun before must not restart it
        try:
            code = await self._in_thread(self.reader.guest_shutdown, sim.instance_id)
        except Exception as exc:
            self.activity.write(sim.instance_id, f"{who} the stop failed in moto: {exc}")
            return None
        sim.guest_stopped = code == INSTANCE_INITIATED
        return str(code)

    # -- stopping --------------------------------------------------------------------------------
    def _start_halt(self, sim: SimulatedInstance, reason: str) -> None:
        if sim.halting is not None and not sim.halting.done():
            return
        sim.phase, sim.detail = "stopping", reason
        sim.halting = asyncio.create_task(self._halt(sim, reason))

    async def _halt(self, sim: SimulatedInstance, reason: str) -> None:
        task, sim.task = sim.task, None
        if task is not None:
            if not task.done():
                self.activity.write(sim.instance_id, f"{reason}: shutting down")
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_halted(sim)
        if not self._closed:
            self.poke([sim.instance_id])  # it may have been started again meanwhile

    def _set_halted(self, sim: SimulatedInstance) -> None:
        if sim.state == "terminated":
            sim.phase, sim.detail = "terminated", ""
        elif sim.state in HALTED:
            sim.phase, sim.detail = "stopped", ""
        else:
            sim.phase, sim.detail = "stopped", "rebooting"

    async def _cleanup(self, sim: SimulatedInstance) -> None:
        """Deregister the agent and stop the notebook (what the end of a boot leaves)."""
        if sim.registered:
            self.ssm.deregister(sim.instance_id)
            sim.registered = False
            self.activity.write(sim.instance_id, "agent offline (deregistered)")
        sim.light_port = None
        sshd, sim.sshd = sim.sshd, None
        if sshd is not None:
            code = await sshd.stop()
            self.activity.write(sim.instance_id, f"sshd pid {sshd.pid} stopped (status {code})")
        process, sim.process = sim.process, None
        if process is not None:
            code = await process.stop()
            self.activity.write(
                sim.instance_id, f"notebook pid {process.pid} stopped (status {code})"
            )
        shutil.rmtree(self.runtime_root / sim.instance_id, ignore_errors=True)

    async def _after_termination(self, sim: SimulatedInstance) -> None:
        """Remove the home volume's directory if the volume went with the instance (and
        the machine with its root volume)."""
        if sim.halting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sim.halting
        if self.machines is not None:
            await self.machines.remove(sim.instance_id)
        volume = sim.home_volume or sim.devices.get("/dev/sdf")
        if volume is None:
            self.activity.write(sim.instance_id, "terminated")
            return
        try:
            exists = await self._in_thread(self.reader.volume_exists, volume)
        except Exception as exc:
            self.activity.write(sim.instance_id, f"terminated; volume {volume} unknown: {exc}")
            return
        directory = self.volumes_dir / volume
        if exists:
            self.activity.write(
                sim.instance_id,
                f"terminated; home volume {volume} kept (not deleted on termination)",
            )
        else:
            shutil.rmtree(directory, ignore_errors=True)
            self.activity.write(
                sim.instance_id, f"terminated; home volume {volume} deleted: removed {directory}"
            )

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))


def _alias(device: str) -> str:
    """``/dev/sdf`` <-> ``/dev/xvdf`` (the names Xen and Nitro instances show for one disk)."""
    if device.startswith("/dev/sd"):
        return "/dev/xvd" + device[len("/dev/sd") :]
    if device.startswith("/dev/xvd"):
        return "/dev/sd" + device[len("/dev/xvd") :]
    return device
