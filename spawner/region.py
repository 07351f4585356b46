"""What the hub keeps about each AWS region it runs servers in, in one object per region.

One hub process talks to each region through one `Aws` (boto3 clients and their call
counts), one `InstancePoller` per hub id (the shared ``DescribeInstances`` of every server),
and two caches of things EC2 never changes (a subnet's zone, an AMI's root device). They used
to be process-wide registries found by class attributes; now `Regions` holds them, the hub
configuration makes one and hands it to whoever needs it (the spawner class, the admin
overview, the home page's notices, the metrics), the way kubespawner's reflectors are
objects the spawner class holds. A test makes its own and nothing leaks into the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

from operations import metrics

from .aws import Aws, AwsError, ErrorKind
from .naming import ROOT_DEVICE
from .poller import InstancePoller, InstanceView, describe_hub_instances

#: The poller's interval when nobody says otherwise (see `InstancePoller`).
DEFAULT_POLL_INTERVAL = 40.0


class Region:
    """One region: its AWS client, the pollers of the hub ids that ask, and the caches."""

    def __init__(
        self, name: str, endpoint_url: str | None = None, *, aws: Aws | None = None
    ) -> None:
        self.name = name
        self.aws = aws or Aws(name, endpoint_url)
        self._pollers: dict[str, InstancePoller] = {}
        self._zones: dict[str, str] = {}
        self._root_devices: dict[str, str] = {}

    def poller(
        self,
        hub_id: str,
        *,
        interval: float = DEFAULT_POLL_INTERVAL,
        pages_per_minute: float | None = None,
    ) -> InstancePoller:
        """The hub's poller here, started (or restarted, if its loop died). The first caller
        sets the interval and page budget; every server of a hub shares one describe."""
        poller = self._pollers.get(hub_id)
        if poller is None:
            poller = self._pollers[hub_id] = InstancePoller(
                self.aws, hub_id, interval=interval, pages_per_minute=pages_per_minute
            )
        poller.ensure_running()
        return poller

    def add_poller(self, poller: InstancePoller) -> InstancePoller:
        """Use ``poller`` for its hub id, as it is (not started: tests set its view)."""
        self._pollers[poller.hub_id] = poller
        return poller

    def running_poller(self, hub_id: str) -> InstancePoller | None:
        """The hub's poller if a spawner started one; pages look, they never start one."""
        return self._pollers.get(hub_id)

    async def views(
        self,
        hub_id: str,
        instance_ids: Iterable[str] | None = None,
        *,
        describe: bool = False,
    ) -> dict[str, InstanceView]:
        """The hub's instances here by id: the poller's view when it is fresh (no AWS call),
        unless ``describe`` asks for EC2's own answer; else one paginated describe (of
        ``instance_ids`` only, when given). Raises `AwsError`. What the admin overview and
        the home page show."""
        poller = self._pollers.get(hub_id)
        if poller is not None and poller.fresh and not describe:
            return dict(poller.instances)
        return await describe_hub_instances(self.aws, hub_id, instance_ids)

    async def root_device(self, ami: str) -> str:
        """The AMI's root device name (an AMI never changes, so it is asked once)."""
        if ami not in self._root_devices:
            answer = await self.aws.call("ec2", "describe_images", ImageIds=[ami])
            images = answer.get("Images", [])
            if not images:
                raise AwsError(
                    "DescribeImages", "InvalidAMIID.NotFound", ami, ErrorKind.CONFIGURATION
                )
            self._root_devices[ami] = images[0].get("RootDeviceName") or ROOT_DEVICE
        return self._root_devices[ami]

    async def zone_of(self, subnet: str) -> str:
        """The subnet's availability zone; the region's name when EC2 cannot say (it is only
        used for progress messages and prices, never to place anything)."""
        if subnet not in self._zones:
            try:
                answer = await self.aws.call("ec2", "describe_subnets", SubnetIds=[subnet])
                self._zones[subnet] = answer["Subnets"][0]["AvailabilityZone"]
            except (AwsError, LookupError):
                return self.name
        return self._zones[subnet]

    async def close(self) -> None:
        for poller in self._pollers.values():
            await poller.stop()


class Regions:
    """The `Region` of each region name, made when first asked for, for one hub process.

    ``endpoint_url`` points every client at one endpoint (the local cloud's AWS front); None
    in a real deployment. Each client is exported to the metrics as it is made.
    """

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._regions: dict[str, Region] = {}

    def __getitem__(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = Region(name, self.endpoint_url)
            metrics.track_aws(region.aws)
        return region

    def add(self, region: Region) -> Region:
        """Use ``region`` for its name (tests: a region whose client is a fake)."""
        self._regions[region.name] = region
        return region

    @classmethod
    def of(cls, *clients: Aws) -> Regions:
        """Regions whose clients are these (one per region: tests, with fakes)."""
        regions = cls()
        for aws in clients:
            regions.add(Region(aws.region, aws=aws))
        return regions

    def __iter__(self) -> Iterator[Region]:
        return iter(list(self._regions.values()))

    async def close(self) -> None:
        await asyncio.gather(*(region.close() for region in self))

    def __repr__(self) -> str:
        return f"Regions({sorted(self._regions)!r}, endpoint_url={self.endpoint_url!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> Regions:
        """Itself: traitlets deep-copies config values (``c.EC2Spawner.regions``, the pages'
        handler arguments), and a copy would split the hub's clients and pollers."""
        return self


def aws_of(regions: Regions) -> Any:
    """``regions`` as the ``aws_for(region) -> Aws`` callable the batch jobs take."""
    return lambda name: regions[name].aws
