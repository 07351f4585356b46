"""One instance's machine: its own root over the shared Debian root, booted by systemd-nspawn.

The real-boot counterpart of an EC2 instance's virtual machine. Its root file system is an
overlay: the shared, read-only root built by ``localcloud.machines.rootfs`` below, and a
directory of its own above (``<dir>/upper``) that outlives its stops, as an instance's root
volume does. ``boot`` starts ``systemd-nspawn -b`` (systemd is PID 1 inside: units, timers and
``shutdown`` work as on an instance) and returns once systemd says the boot is over;
``poweroff`` is EC2's stop (systemd stops every unit, ExecStop lines included), ``wait`` reports
the machine's end however it came (a ``shutdown -h now`` from inside ends it with status 0, a
reboot from inside with ``REBOOT_STATUS``).

Each boot has a boot id of its own (``/proc/sys/kernel/random/boot_id`` inside), which is how
tests tell a new boot from the old one. The machine has a network namespace of its own with
only a loopback (``--private-network``): nothing on the host can connect into it, as nothing
can reach an instance without an inbound rule; what it may reach outside is bound into it as
Unix sockets (``binds``) by whoever boots it.

Settings the machine needs on a host whose PID 1 is not systemd (the local cloud's, checked on
Debian 12 with cgroup v1): ``--register=no --keep-unit`` (no machined, no system bus), and
commands inside run through ``nsenter`` into the leader's namespaces (``run``).

Everything here needs root (mounts, namespaces), as EC2's hypervisor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

#: systemd-nspawn's exit status when the machine rebooted itself (its manual: "133").
REBOOT_STATUS = 133
#: How long systemd may take to stop every unit before the machine is killed.
POWEROFF_SECONDS = 120.0
BOOT_SECONDS = 120.0
#: What ``systemctl is-system-running`` says once the boot is over (degraded: a unit failed,
#: which a test of a failing bootstrap wants to see, not to wait on).
BOOTED = frozenset({"running", "degraded"})
#: ... and once systemd runs and starts the units: what EC2's "running" means (an instance
#: is running while its user data and units are still at work, for as long as they take).
STARTED = BOOTED | {"starting"}


class MachineError(Exception):
    """The machine could not be booted, reached or stopped."""


@dataclass(frozen=True)
class Bind:
    """A host path bound into the machine (``--bind`` or ``--bind-ro``)."""

    host: Path
    inside: str
    read_only: bool = False

    def option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.host}:{self.inside}"


@dataclass(frozen=True)
class Ran:
    """What a command inside the machine did."""

    status: int
    stdout: str
    stderr: str


def require_tools() -> None:
    """Raise ``MachineError`` naming what is missing (``make test`` installs it)."""
    missing = [t for t in ("systemd-nspawn", "nsenter", "mount", "umount") if not shutil.which(t)]
    if missing:
        raise MachineError(
            f"real-boot machines need {', '.join(missing)} (Debian's systemd-container and "
            "util-linux; `make test` installs them)"
        )
    if os.geteuid() != 0:
        raise MachineError("real-boot machines need root (overlay mounts and namespaces)")


def _in_other_pid_namespace(pid: int) -> bool:
    """Whether ``pid`` is still a machine's PID 1 and not a host process that got its number
    after the machine died."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


class Machine:
    """One machine; see the module docstring. Not safe to share between event loops."""

    def __init__(
        self,
        name: str,
        rootfs: Path,
        directory: Path,
        *,
        binds: tuple[Bind, ...] = (),
    ) -> None:
        self.name = name
        self.rootfs = rootfs
        self.dir = directory
        self.binds = binds
        self.boots = 0
        self._process: asyncio.subprocess.Process | None = None
        self._leader: int | None = None

    # -- where things are ------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def upper(self) -> Path:
        """What this machine wrote to its root file system (its "root volume")."""
        return self.dir / "upper"

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def leader(self) -> int | None:
        """The host's pid of the machine's PID 1 while it runs (``nsenter -t``'s target)."""
        return self._leader if self.running else None

    # -- life --------------------------------------------------------------------------------
    async def boot(self, within: float = BOOT_SECONDS, *, until: frozenset[str] = BOOTED) -> None:
        """Boot, and return once systemd inside says one of ``until`` (by default: the boot
        is over; `STARTED`: systemd is starting the units)."""
        if self.running:
            raise MachineError(f"{self.name} is already running")
        await asyncio.to_thread(self._mount)
        self.boots += 1
        with self.console_path.open("ab") as console:
            console.write(f"-- boot {self.boots} of {self.name} --\n".encode())
            console.flush()
            self._process = await asyncio.create_subprocess_exec(
                "systemd-nspawn",
                "--quiet",
                f"--directory={self.root}",
                f"--machine={self.name}",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
                "--private-network",
                *(b.option() for b in self.binds),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._leader = None
        try:
            await self._wait_booted(within, until)
        except BaseException:
            await self.kill()
            raise

    async def _wait_booted(self, within: float, until: frozenset[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        said = ""
        while loop.time() < deadline:
            if not self.running:
                raise MachineError(
                    f"{self.name} ended while booting (systemd-nspawn exited with "
                    f"{self._process.returncode if self._process else '?'}); its console:\n"
                    + self.console_output(4096)
                )
            self._leader = self._find_leader()
            if self._leader is not None:
                with contextlib.suppress(MachineError):  # it may have just gone again
                    ran = await self.run("systemctl", "is-system-running", timeout=10)
                    said = ran.stdout.strip()
                    if said in until:
                        return
            await asyncio.sleep(0.1)
        raise MachineError(
            f"{self.name} did not finish booting in {within:g} s (systemd: {said}); its "
            "console:\n" + self.console_output(4096)
        )

    def _find_leader(self) -> int | None:
        """The machine's PID 1, as the host sees it: the child of systemd-nspawn that is in a
        PID namespace of its own. (nspawn first forks an "outer child" in the host's namespace,
        which makes PID 1 and exits: taken for the leader, it would leave every later command
        without a machine to enter.)"""
        if self._process is None:
            return None
        with contextlib.suppress(psutil.Error, OSError):
            host = os.readlink(f"/proc/{self._process.pid}/ns/pid")
            for child in psutil.Process(self._process.pid).children(recursive=True):
                if os.readlink(f"/proc/{child.pid}/ns/pid") != host:
                    return child.pid
        return None

    async def poweroff(self, within: float = POWEROFF_SECONDS) -> int:
        """EC2's stop: systemd stops every unit and powers off; killed after ``within``.
        Returns systemd-nspawn's exit status."""
        if not self.running:
            return await self.wait()
        with contextlib.suppress(MachineError):
            await self.run("systemctl", "--no-block", "poweroff", timeout=30)
        try:
            return await asyncio.wait_for(self.wait(), within)
        except TimeoutError:
            await self.kill()
            return await self.wait()

    async def kill(self) -> None:
        """Pull the plug (a failed boot, a poweroff that hangs, the local cloud going away).

        PID 1 of the machine first: systemd puts itself in a session of its own, so killing
        systemd-nspawn's process group leaves the machine running, orphaned, holding its root.
        The kernel kills every process of a PID namespace whose PID 1 dies."""
        leader = self._find_leader() or self._leader  # the one seen at boot, if nspawn died
        if leader is not None and self._process is not None and _in_other_pid_namespace(leader):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leader, signal.SIGKILL)
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        self._leader = None
        await asyncio.to_thread(self._unmount)

    async def wait(self) -> int:
        """Until the machine ends, however it ends; its systemd-nspawn's exit status."""
        if self._process is None:
            return 0
        status = await self._process.wait()
        self._leader = None
        await asyncio.to_thread(self._unmount)
        return status

    async def remove(self) -> None:
        """EC2's terminate: the machine and its root volume go."""
        await self.kill()
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    # -- inside --------------------------------------------------------------------------------
    async def run(self, *command: str, stdin: bytes | None = None, timeout: float = 60) -> Ran:
        """Run a command in the running machine (its namespaces, as root)."""
        leader = self._leader
        if leader is None or not self.running:
            raise MachineError(f"{self.name} is not running")
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--target={leader}",
            "--all",
            "--",
            *command,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise MachineError(
                f"{command[0]} in {self.name} took more than {timeout:g} s"
            ) from None
        return Ran(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    async def boot_id(self) -> str:
        ran = await self.run("cat", "/proc/sys/kernel/random/boot_id")
        return ran.stdout.strip()

    def console_output(self, limit: int = 64 * 1024) -> str:
        """The newest ``limit`` bytes of the console (EC2's GetConsoleOutput keeps 64 KB)."""
        try:
            with self.console_path.open("rb") as console:
                console.seek(0, os.SEEK_END)
                console.seek(max(0, console.tell() - limit))
                return console.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # -- the overlay ----------------------------------------------------------------------------
    def _mount(self) -> None:
        for part in ("upper", "work", "root"):
            (self.dir / part).mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.root):
            return
        options = f"lowerdir={self.rootfs},upperdir={self.upper},workdir={self.dir / 'work'}"
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise MachineError(f"cannot mount the root of {self.name}: {done.stderr.strip()}")

    def _unmount(self) -> None:
        if os.path.ismount(self.root):
            subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True, check=False)
