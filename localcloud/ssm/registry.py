"""Managed instances: which instance ids have an agent, whether it is online, where it dials.

On AWS an instance becomes a *managed node* when its SSM Agent registers, and
DescribeInstanceInformation reports it with ``PingStatus`` ``Online`` (or ``ConnectionLost``
when the agent stops pinging). StartSession needs the agent online, else ``TargetNotConnected``.

Here an instance is registered by whoever simulates it, with a *resolver*: a function from the
remote port a session asks for (the document's ``portNumber``) to the ``(host, port)`` the
agent really dials on this machine. The standalone CLI resolves every port to one
``HOST:PORT``; the composed local cloud maps each simulated instance's 8888 to the port its
notebook server listens on. A resolver may raise ``LookupError`` (or ``OSError``) for a port
nothing listens on: the agent then reports it as a refused connection.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Resolver = Callable[[int], tuple[str, int]]

DEFAULT_AGENT_VERSION = "3.3.1142.0"
INSTANCE_ID = re.compile(r"^(i-(\w{8}|\w{17})|mi-\w{17})$")  # InstanceId in service-2.json


def fixed_resolver(host: str, port: int) -> Resolver:
    """A resolver that sends every remote port to one address (the standalone CLI's)."""

    def resolve(_remote_port: int) -> tuple[str, int]:
        return host, port

    return resolve


@dataclass
class ManagedInstance:
    """One registered agent and what DescribeInstanceInformation says about it."""

    instance_id: str
    resolver: Resolver
    agent_version: str = DEFAULT_AGENT_VERSION
    online: bool = True
    registered_at: float = field(default_factory=time.time)
    last_ping: float = field(default_factory=time.time)
    platform_name: str = "Amazon Linux"
    platform_version: str = "2023"
    ip_address: str = "10.0.0.10"
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def ping_status(self) -> str:
        return "Online" if self.online else "ConnectionLost"

    @property
    def computer_name(self) -> str:
        return f"ip-{self.ip_address.replace('.', '-')}.ec2.internal"

    def describe(self, now: float) -> dict[str, Any]:
        """The ``InstanceInformation`` structure, with the fields AWS fills for EC2 nodes."""
        return {
            "InstanceId": self.instance_id,
            "PingStatus": self.ping_status,
            # An online agent pings every few minutes; report "just now" while online.
            "LastPingDateTime": now if self.online else self.last_ping,
            "AgentVersion": self.agent_version,
            "IsLatestVersion": False,
            "PlatformType": "Linux",
            "PlatformName": self.platform_name,
            "PlatformVersion": self.platform_version,
            "ResourceType": "EC2Instance",
            "IPAddress": self.ip_address,
            "ComputerName": self.computer_name,
            "RegistrationDate": self.registered_at,
            "SourceId": self.instance_id,
            "SourceType": "AWS::EC2::Instance",
        }


class InstanceRegistry:
    """The registered instances, in registration order (the order DescribeInstanceInformation
    pages through)."""

    def __init__(self) -> None:
        self._instances: dict[str, ManagedInstance] = {}

    def register(
        self,
        instance_id: str,
        resolver: Resolver,
        *,
        agent_version: str = DEFAULT_AGENT_VERSION,
        online: bool = True,
        **details: Any,
    ) -> ManagedInstance:
        """Add (or replace) an instance; ``details`` are other ``ManagedInstance`` fields."""
        if not INSTANCE_ID.match(instance_id):
            raise ValueError(f"not an instance id: {instance_id!r}")
        instance = ManagedInstance(
            instance_id=instance_id,
            resolver=resolver,
            agent_version=agent_version,
            online=online,
            **details,
        )
        self._instances[instance_id] = instance
        return instance

    def get(self, instance_id: str) -> ManagedInstance | None:
        return self._instances.get(instance_id)

    def set_online(self, instance_id: str, online: bool) -> ManagedInstance:
        """Mark the agent online or lost; raises ``KeyError`` for an unknown instance."""
        instance = self._instances[instance_id]
        if instance.online and not online:
            instance.last_ping = time.time()
        instance.online = online
        return instance

    def remove(self, instance_id: str) -> ManagedInstance | None:
        return self._instances.pop(instance_id, None)

    def all(self) -> list[ManagedInstance]:
        return list(self._instances.values())
