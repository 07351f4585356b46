"""The shared poller's describes under many callers at once (issue 5: 500 servers).

EC2's DescribeInstances is rate-limited per account ("Request throttling for the Amazon EC2
API": the describe actions share one bucket), and each call of the poller lists every instance
of the hub. Callers of ``refresh()`` (every spawn looks for its instance) must share describes,
and each caller must still get a describe that *began after* it asked, or a spawn could miss
the instance it just launched.
"""

from __future__ import annotations

import asyncio
from typing import Any

from spawner.aws import AwsError, ErrorKind
from spawner.poller import InstancePoller


class SlowEc2:
    """DescribeInstances as a slow paginated call that sees the world as it was when it began."""

    region = "us-east-1"

    def __init__(self) -> None:
        self.world: list[str] = []
        self.describes = 0
        self.fail = False
        self.kwargs: dict[str, Any] = {}

    async def paginate(self, service: str, operation: str, **kwargs: Any) -> list[dict]:
        assert (service, operation) == ("ec2", "describe_instances")
        self.kwargs = kwargs
        self.describes += 1
        seen = list(self.world)
        await asyncio.sleep(0.05)
        if self.fail:
            raise AwsError(
                "DescribeInstances", "RequestLimitExceeded", "slow down", ErrorKind.THROTTLED
            )
        instances = [{"InstanceId": i, "State": {"Name": "running"}, "Tags": []} for i in seen]
        return [{"Reservations": [{"Instances": instances}]}]


async def test_fifty_concurrent_refreshes_make_two_describes():
    ec2 = SlowEc2()
    poller = InstancePoller(ec2, "hub")  # type: ignore[arg-type]
    await asyncio.gather(*(poller.refresh() for _ in range(50)))
    assert ec2.describes == 1  # all arrived before the first one began
    ec2.world.append("i-0000000000000000a")
    first = asyncio.ensure_future(poller.refresh())
    await asyncio.sleep(0.01)  # the second describe is under way
    await asyncio.gather(*(poller.refresh() for _ in range(49)), first)
    assert ec2.describes == 3  # the one under way, and one shared by the 49 late callers


async def test_a_caller_sees_what_existed_when_it_asked():
    ec2 = SlowEc2()
    poller = InstancePoller(ec2, "hub")  # type: ignore[arg-type]
    early = asyncio.ensure_future(poller.refresh())
    await asyncio.sleep(0.01)  # that describe has already looked
    ec2.world.append("i-0000000000000000b")  # launched now
    await poller.refresh()
    assert "i-0000000000000000b" in poller.instances
    await early


async def test_every_sharer_gets_the_error():
    ec2 = SlowEc2()
    ec2.fail = True
    poller = InstancePoller(ec2, "hub")  # type: ignore[arg-type]
    results = await asyncio.gather(*(poller.refresh() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, AwsError) for r in results) and ec2.describes == 1
    ec2.fail = False
    await poller.refresh()
    assert poller.fresh


async def test_one_page_is_as_large_as_ec2_allows():
    """DescribeInstances: "MaxResults ... Valid range: 5 - 1000"; every page is a call."""
    ec2 = SlowEc2()
    await InstancePoller(ec2, "hub").refresh()  # type: ignore[arg-type]
    assert ec2.kwargs["PaginationConfig"] == {"PageSize": 1000}
    assert ec2.kwargs["Filters"] == [{"Name": "tag:jupyterhub:hub", "Values": ["hub"]}]
