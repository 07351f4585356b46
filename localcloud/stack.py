"""The AWS half of the local cloud, put together: moto, the SSM stand-in, the AWS front, the
resources the communities need, and the instance simulator.

One call starts it on the running loop, one call stops it (every notebook process included);
``python -m localcloud serve`` and the tests use the same composition::

    aws = await start_aws(state_dir, synapse_base_url=synapse_url, boot_delay=0)
    boto3.client("ec2", endpoint_url=aws.front_url, ...)
    ...
    await aws.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer

from .aws.front import AwsFront, instance_app, serve_front, shutdown_front
from .aws.moto_server import MotoServer, index_moto_instances, index_moto_tags, start_moto
from .aws.moto_setup import (
    DEFAULT_PARAMETER_PREFIX,
    LIGHT_SUBNETS,
    REGION,
    SUBNETS,
    CloudIds,
    setup,
)
from .aws.principals import MotoPrincipals, issue_user_keys
from .instances.control import control_routes as simulator_routes
from .instances.realboot import MachineHost
from .instances.simulator import DEFAULT_BOOT_DELAY, InstanceSimulator
from .ssm import SsmStandIn
from .ssm import serve as serve_ssm
from .ssm import shutdown as shutdown_ssm

#: credentials that provision the local cloud in moto (moto checks none)
TEST_ACCESS_KEY_ID = "testing"
TEST_SECRET_ACCESS_KEY = "testing"
#: the IAM user whose keys the hub (and the tests acting as the hub) sign with: issued by
#: moto's IAM, so that the SSM stand-in can verify the data channel's signatures
HUB_USER_NAME = "notebook-hub"


@dataclass
class LocalAws:
    """Handles of the running pieces; ``close()`` stops them all."""

    state_dir: Path
    moto: MotoServer
    ssm: SsmStandIn
    ssm_server: HTTPServer
    ssm_url: str
    front: AwsFront
    front_server: HTTPServer
    front_url: str
    simulator: InstanceSimulator
    ids: CloudIds
    communities_file: Path
    access_key_id: str
    secret_access_key: str
    region: str = REGION

    def endpoints(self) -> dict[str, Any]:
        """The ``"aws"`` entry of ``endpoints.json``."""
        return {
            "endpoint_url": self.front_url,
            "moto_url": self.moto.url,
            "ssm_standin_url": self.ssm_url,
            "ssm_control_url": f"{self.ssm_url}/_control",
            "region": self.region,
            "communities_file": str(self.communities_file),
            "control_url": f"{self.front_url}/_control",
            "instances_log": str(self.simulator.activity.path),
            "volumes_dir": str(self.simulator.volumes_dir),
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "resources": self.ids.to_json(),
        }

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client on the front, as the hub makes them (the hub's credentials)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.front_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            **config,
        )

    async def close(self) -> None:
        """Notebooks first (they may still talk to the rest), then the servers."""
        await self.simulator.close()
        await shutdown_front(self.front, self.front_server)
        await shutdown_ssm(self.ssm, self.ssm_server)
        await asyncio.to_thread(self.moto.stop)


async def start_aws(
    state_dir: Path,
    *,
    front_port: int = 0,
    synapse_base_url: str | None = None,
    boot_delay: float = DEFAULT_BOOT_DELAY,
    region: str = REGION,
    parameter_prefix: str = DEFAULT_PARAMETER_PREFIX,
    light_instances: bool = False,
    real_boot: bool = False,
    hub_url: str | None = None,
) -> LocalAws:
    """Start everything on the running loop (moto in a thread) and provision the communities'
    resources; ``<state_dir>/communities.yaml`` is written before this returns.
    ``light_instances``: instances without a notebook process of their own, in larger
    subnets, with moto's tag and instance lookups indexed — for benchmarks with thousands of
    servers. ``real_boot``: each instance a booted machine (`localcloud.instances.realboot`;
    needs root, and builds the machines' root file system and notebook image the first
    time), whose notebooks reach the hub at ``hub_url`` and Synapse (the stand-in at
    ``synapse_base_url``) at its public names."""
    if light_instances:
        index_moto_tags()
        index_moto_instances()
    machines = None
    if real_boot:
        machines = MachineHost(state_dir, region, hub_url=hub_url, synapse_url=synapse_base_url)
        await machines.prepare()
    moto = await asyncio.to_thread(start_moto)
    started: list[Any] = []
    try:
        hub_keys = await asyncio.to_thread(_hub_keys, moto.url, region)
        ssm, ssm_server, ssm_url = await serve_ssm(
            moto_url=moto.url, credentials=MotoPrincipals(), region=region
        )
        started.append((shutdown_ssm, ssm, ssm_server))
        simulator = InstanceSimulator(
            moto_url=moto.url,
            ssm=ssm,
            state_dir=state_dir,
            synapse_base_url=synapse_base_url,
            region=region,
            boot_delay=boot_delay,
            light_instances=light_instances,
            machines=machines,
        )
        front, front_server, front_url = await serve_front(
            front_port, moto_url=moto.url, ssm_url=ssm_url, extra_routes=simulator_routes(simulator)
        )
        started.append((shutdown_front, front, front_server))
        simulator.aws_endpoint_url = front_url
        if machines is not None:
            machines.aws_app = instance_app(front)
            front.consoles = machines.console
        front.calls.listeners.append(simulator.on_aws_call)
        ids, communities_file = await asyncio.to_thread(
            setup,
            moto.url,
            state_dir,
            region=region,
            parameter_prefix=parameter_prefix,
            subnet_cidrs=LIGHT_SUBNETS if light_instances else SUBNETS,
            images=machines.images() if machines is not None else None,
        )
        await simulator.start()
    except BaseException:
        for stop, *handles in reversed(started):
            with contextlib.suppress(Exception):
                await stop(*handles)
        await asyncio.to_thread(moto.stop)
        raise
    return LocalAws(
        state_dir=state_dir,
        moto=moto,
        ssm=ssm,
        ssm_server=ssm_server,
        ssm_url=ssm_url,
        front=front,
        front_server=front_server,
        front_url=front_url,
        simulator=simulator,
        ids=ids,
        communities_file=communities_file,
        access_key_id=hub_keys[0],
        secret_access_key=hub_keys[1],
        region=region,
    )


def _hub_keys(moto_url: str, region: str) -> tuple[str, str]:
    """The hub's own access key, issued by moto's IAM (blocking)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=moto_url,
        region_name=region,
        aws_access_key_id=TEST_ACCESS_KEY_ID,
        aws_secret_access_key=TEST_SECRET_ACCESS_KEY,
    )
    return issue_user_keys(iam, HUB_USER_NAME)
