"""Real-boot instances: the simulator's mode in which an instance is a booted Linux machine.

In this mode the simulator does none of the bootstrap's work itself. When moto runs an
instance it boots one `localcloud.machines.machine.Machine` for it (its root volume an overlay
that outlives stops) with what EC2 gives an instance and nothing more:

- the instance's **user data**, byte for byte as ``DescribeInstanceAttribute`` returns it,
  where the machine's cloud-init reads it (`localcloud.machines.seed`): cloud-init writes
  ``server.conf``, the bootstrap script and its units, and the bootstrap runs at every boot;
- its **metadata service** at ``169.254.169.254`` (as the instance's metadata options say:
  IMDSv2, v1 too if tokens are optional, the hop limit for its containers), with the instance
  profile's role credentials from moto's STS, renewed before they expire;
- **AWS at its public names** over HTTPS, answered by the local cloud's AWS front through the
  machine's own link (without the stand-ins' control routes); and **Synapse at its public
  names**, answered by the Synapse stand-in, so that synapseclient's defaults reach it;
- **no inbound path**: the machine has only its loopback.

What the machine's life means for EC2 (moto): the hub's StopInstances powers the machine off
(systemd stops every unit, the bootstrap's ``stop`` included) and StartInstances boots it
again with a new boot id; a ``shutdown -h now`` inside (the bootstrap's idle backstop) ends
the machine with status 0, and the instance stops with EC2's guest-shutdown state reason
(``Client.InstanceInitiatedShutdown``); a reboot from inside boots it again, the instance
running throughout; TerminateInstances removes the machine and its root volume.

Session Manager reaches the machine as it reaches an instance, through its agent: the
machine's agent unit connects out and dials the instance's ports from inside
(`localcloud.machines.agent`); the instance is online from then until the boot ends. The
data channel's agent half is still the SSM stand-in's, on the host.

The container engine is podman (``docker run`` as the bootstrap writes it), the notebook image
is built here (`localcloud.machines.image`) into a store every machine has read-only, the
home volume's directory is mounted where the bootstrap mounts the volume, and the hub is
reachable from the machine and its containers through the machine's hub link. What still
stands in is in the README's "Real-boot machines".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import tornado.web
from tornado.httpserver import HTTPServer

from ..machines.agent import AgentLink, install_agent
from ..machines.image import BuiltImage, ensure_image
from ..machines.imds import CredentialProvider, InstanceIdentity, MetadataService, RoleSession
from ..machines.links import (
    LinkDirectory,
    install_links,
    serve_aws,
    serve_forward,
    serve_metadata,
)
from ..machines.machine import REBOOT_STATUS, STARTED, Bind, Machine, MachineError
from ..machines.rootfs import IMAGE_STORE, INSTANCE_PACKAGES, RootfsSpec, ensure_rootfs
from ..machines.seed import seed_user_data
from ..machines.tls import Authority, ensure_authority
from ..ssm.registry import Resolver

log = logging.getLogger(__name__)

#: Where the machines' link directories are (see `MachineHost.links`).
LINKS_ROOT = Path("/tmp/snh-links")
#: Where the bootstrap mounts the home volume (``notebook-bootstrap.sh``'s ``HOME_MOUNT``):
#: a mount there already is the home volume, and the bootstrap uses it as it is.
HOME_MOUNT = "/srv/notebook-home"

#: Where the root file systems and the local cloud's authority are kept between runs.
DEFAULT_CACHE = Path.home() / ".cache" / "synapse-notebook-hub" / "machines"


@dataclass(frozen=True)
class BootFacts:
    """What EC2 knows of an instance and a machine of it needs at boot."""

    identity: InstanceIdentity
    user_data: bytes
    #: the instance profile's role, and how to get its credentials (None: no profile)
    role_name: str | None = None
    credentials: CredentialProvider | None = None
    hostname: str = ""
    #: the home volume's directory, mounted where the bootstrap mounts the volume
    home: Path | None = None
    #: the instance's metadata options (EC2's defaults: a hop limit of 1, tokens optional)
    hop_limit: int = 1
    tokens_required: bool = False


@dataclass
class MachineHost:
    """The machines of one simulator: their shared root file system, the local cloud's
    authority, and the AWS front's app for instances (``instance_app``), which the local
    cloud sets once its front is up."""

    state_dir: Path
    region: str
    cache_dir: Path = DEFAULT_CACHE
    spec: RootfsSpec = field(default_factory=lambda: RootfsSpec(packages=INSTANCE_PACKAGES))
    aws_app: tornado.web.Application | None = None
    #: the hub the machines' notebooks call (its URL's port is the hub link's), if any
    hub_url: str | None = None
    #: the Synapse stand-in the machines reach at Synapse's names, if any
    synapse_url: str | None = None
    rootfs: Path | None = None
    authority: Authority | None = None
    image: BuiltImage | None = None
    _machines: dict[str, Machine] = field(default_factory=dict)

    async def prepare(self) -> None:
        """Build (or find in the cache) the root file system, the authority and the notebook
        image: about three minutes the first time on a machine, nothing after."""
        self.rootfs = await asyncio.to_thread(ensure_rootfs, self.cache_dir, self.spec)
        self.authority = await asyncio.to_thread(
            ensure_authority, self.cache_dir / "authority", self.region
        )
        self.image = await asyncio.to_thread(ensure_image, self.cache_dir, self.rootfs)

    def images(self) -> dict[str, str]:
        """Image kind -> the locally built image of that kind (the communities' choices)."""
        return {"jupyter": self.image.name} if self.image is not None else {}

    def _hub(self) -> tuple[str, int] | None:
        return _address(self.hub_url)

    def _synapse(self) -> tuple[str, int] | None:
        return _address(self.synapse_url)

    def _binds(self, machine: Machine, facts: BootFacts) -> tuple[Bind, ...]:
        """The machine's links, its own container storage (a plain directory: podman's
        overlay driver cannot sit on the machine's overlay root), the shared image store
        (read-only), and its home volume where the bootstrap mounts it."""
        binds = [
            self.links(machine.name).bind(),
            Bind(machine.dir / "containers", "/var/lib/containers"),
        ]
        if self.image is not None:
            binds.append(Bind(self.image.store, IMAGE_STORE, read_only=True))
        if facts.home is not None:
            binds.append(Bind(facts.home, HOME_MOUNT))
        (machine.dir / "containers").mkdir(parents=True, exist_ok=True)
        return tuple(binds)

    def links(self, instance_id: str) -> LinkDirectory:
        """The machine's link directory: under a short path, since a Unix socket's path may
        not exceed 107 bytes (a test's state directory under pytest-xdist already comes close),
        one per local cloud (named after its state directory)."""
        return LinkDirectory(self._links_root() / instance_id)

    def _links_root(self) -> Path:
        local_cloud = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        return LINKS_ROOT / local_cloud

    def machine(self, instance_id: str) -> Machine:
        """The instance's machine (one object for its whole life, over its root volume)."""
        machine = self._machines.get(instance_id)
        if machine is None:
            if self.rootfs is None:
                raise MachineError("the machines' root file system is not prepared")
            machine = Machine(
                instance_id,
                self.rootfs,
                self.state_dir / "machines" / instance_id,
                binds=(self.links(instance_id).bind(),),
            )
            self._machines[instance_id] = machine
        return machine

    def get(self, instance_id: str) -> Machine | None:
        return self._machines.get(instance_id)

    def console(self, instance_id: str) -> str | None:
        """The machine's console, the newest 64 KB (what ``GetConsoleOutput`` shows), or
        None if the instance has no machine here."""
        machine = self._machines.get(instance_id)
        return machine.console_output() if machine is not None else None

    async def run(
        self,
        facts: BootFacts,
        *,
        booted: Callable[[Machine], None],
        rebooted: Callable[[Machine, int], None],
        online: Callable[[Resolver], None],
        offline: Callable[[], None],
    ) -> int:
        """Boot the instance's machine and keep it up until it ends by itself; return how
        it ended (0: the guest shut down). A reboot from inside boots it again (EC2 keeps
        the instance running). Cancelled (the hub stopped the instance), the machine is
        powered off first, as EC2's stop does. ``online`` is called with the resolver of
        the machine's ports once its agent unit runs, ``offline`` when the boot ends."""
        iid = facts.identity.instance_id
        machine = self.machine(iid)
        links = self.links(iid)
        hub, synapse = self._hub(), self._synapse()
        if machine.boots == 0 and not (machine.upper / "etc/hosts").exists():
            assert self.rootfs is not None and self.authority is not None
            await asyncio.to_thread(
                partial(
                    install_links,
                    machine.upper,
                    self.rootfs,
                    links,
                    self.authority,
                    self.region,
                    hub_port=hub[1] if hub else None,
                    synapse=synapse is not None,
                )
            )
            await asyncio.to_thread(install_agent, machine.upper)
        await asyncio.to_thread(
            seed_user_data, machine.upper, iid, facts.hostname or iid, facts.user_data
        )
        machine.binds = self._binds(machine, facts)
        while True:
            servers: list[HTTPServer] = []
            forwards: list[asyncio.AbstractServer] = []
            metadata = None
            agent = AgentLink(links.agent_socket, online=online)
            try:
                metadata, servers = self._serve(facts, links)
                if hub:
                    forwards.append(await serve_forward(links.hub_socket, *hub))
                if synapse:
                    forwards.append(await serve_forward(links.synapse_socket, *synapse))
                await agent.start()
                await machine.boot(until=STARTED)  # EC2's running: units may still work
                booted(machine)
                status = await machine.wait()
            finally:
                if machine.running:
                    await asyncio.shield(machine.poweroff())
                offline()  # before the link goes: no session is placed on a dead link
                await agent.close()
                for server in servers:
                    server.stop()
                if metadata is not None:
                    metadata.close()
                for forward in forwards:
                    forward.close()
            if status != REBOOT_STATUS:
                return status
            rebooted(machine, status)

    def _serve(
        self, facts: BootFacts, links: LinkDirectory
    ) -> tuple[MetadataService, list[HTTPServer]]:
        if self.aws_app is None:
            raise MachineError("the machines have no AWS front to call")
        metadata = MetadataService(
            facts.identity,
            role_name=facts.role_name,
            credentials=facts.credentials,
            user_data=facts.user_data,
            hop_limit=facts.hop_limit,
            tokens_required=facts.tokens_required,
        )
        stale = (links.imds_socket, links.bridged_imds_socket, links.aws_socket)
        for socket in stale:  # left by a previous boot
            socket.unlink(missing_ok=True)
        return metadata, [*serve_metadata(metadata, links), serve_aws(self.aws_app, links)]

    async def remove(self, instance_id: str) -> None:
        """Termination: the machine, its root volume and its links go."""
        machine = self._machines.pop(instance_id, None)
        if machine is not None:
            await machine.remove()
        await asyncio.to_thread(shutil.rmtree, self.links(instance_id).path, True)

    async def close(self) -> None:
        """Pull every plug (the local cloud is going away; instances do not outlive it)."""
        machines, self._machines = list(self._machines.values()), {}
        for machine in machines:
            with contextlib.suppress(Exception):
                await machine.kill()
            await asyncio.to_thread(shutil.rmtree, self.links(machine.name).path, True)
        with contextlib.suppress(OSError):  # this cloud's, if no machine's is left in it
            self._links_root().rmdir()


def _address(url: str | None) -> tuple[str, int] | None:
    """Where on the host a link forwards to: ``url``'s host and port."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def session_from_sts(credentials: dict) -> RoleSession:
    """STS's ``Credentials`` as the metadata service hands them out."""
    expiration = credentials["Expiration"]
    if isinstance(expiration, str):
        expiration = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    return RoleSession(
        credentials["AccessKeyId"],
        credentials["SecretAccessKey"],
        credentials["SessionToken"],
        expiration,
    )
