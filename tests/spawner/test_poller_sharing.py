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

import pytest

from spawner.aws import AwsError, ErrorKind
from spawner.poller import InstancePoller


class SlowEc2:
    """DescribeInstances as a slow paginated call that sees the world as it was when it began."""

    region = "us-east-1"

    def __init__(self) -> None:
        self.world: list[str] = []
        self.states: dict[str, str] = {}  # instance -> state, "running" if not here
        self.describes = 0
        self.fail = False
        self.kwargs: dict[str, Any] = {}
        self.asked: list[list[str] | None] = []  # per call: the instance-id filter's values
        self.values: list[int] = []  # per call: the values of all its filters
        self.pages = 1  # pages a look at every instance comes in

    async def paginate(self, service: str, operation: str, **kwargs: Any) -> list[dict]:
        assert (service, operation) == ("ec2", "describe_instances")
        self.kwargs = kwargs
        self.describes += 1
        ids = next((f["Values"] for f in kwargs["Filters"] if f["Name"] == "instance-id"), None)
        self.asked.append(ids)
        self.values.append(sum(len(f["Values"]) for f in kwargs["Filters"]))
        seen = [i for i in self.world if ids is None or i in ids]
        await asyncio.sleep(0.05)
        if self.fail:
            raise AwsError(
                "DescribeInstances", "RequestLimitExceeded", "slow down", ErrorKind.THROTTLED
            )
        instances = [
            {"InstanceId": i, "State": {"Name": self.states.get(i, "running")}, "Tags": []}
            for i in seen
        ]
        pages = self.pages if ids is None else 1
        return [{"Reservations": [{"Instances": instances[n::pages]}]} for n in range(pages)]

    @property
    def full_looks(self) -> int:
        return sum(ids is None for ids in self.asked)


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


async def wait_until(condition: Any, within: float = 30.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not within {within} s")


async def test_a_waiting_spawn_has_the_poller_ask_for_its_instance_only():
    """5,000 servers are five pages a look: while spawns wait, and the last look at every
    instance is recent, the poller asks for what they wait on."""
    ec2 = SlowEc2()
    ec2.world = [f"i-{n:017x}" for n in range(50)]
    launched = "i-00000000000000abc"
    ec2.world.append(launched)
    ec2.states[launched] = "pending"
    poller = InstancePoller(ec2, "hub", interval=3600, fast_interval=0.01)  # type: ignore[arg-type]
    await poller.refresh()
    poller.ensure_running()
    waiting = asyncio.ensure_future(poller.wait_for(launched, {"running"}))
    await wait_until(lambda: len(ec2.asked) >= 4)
    ec2.states[launched] = "running"
    async with asyncio.timeout(30):
        view = await waiting
    assert view.state == "running"
    assert ec2.full_looks <= 2  # the first, and the loop's own start
    assert all(ids == [launched] for ids in ec2.asked if ids is not None)
    assert len(poller.instances) == 51  # the others are still known
    await poller.stop()


async def test_the_look_at_every_instance_still_comes_every_interval():
    ec2 = SlowEc2()
    ec2.world = ["i-0000000000000000a", "i-0000000000000000b"]
    ec2.states["i-0000000000000000b"] = "pending"  # a spawn that waits for ever
    poller = InstancePoller(ec2, "hub", interval=0.3, fast_interval=0.01)  # type: ignore[arg-type]
    poller.ensure_running()
    waiting = asyncio.ensure_future(poller.wait_for("i-0000000000000000b", {"running"}))
    await wait_until(lambda: ec2.full_looks >= 3)
    assert any(ids == ["i-0000000000000000b"] for ids in ec2.asked)
    waiting.cancel()
    await poller.stop()


async def test_many_waited_instances_are_asked_for_199_a_call():
    """EC2 refuses more than 200 filter values in one call (``FilterLimitExceeded``), all
    filters together: 199 instance ids and the hub's tag."""
    ec2 = SlowEc2()
    ec2.world = [f"i-{n:017x}" for n in range(450)]
    poller = InstancePoller(ec2, "hub")  # type: ignore[arg-type]
    await poller.refresh_some(ec2.world)
    asked = [ids for ids in ec2.asked if ids is not None]
    assert [len(ids) for ids in asked] == [199, 199, 52]
    assert max(ec2.values) == 200
    assert sorted(i for ids in asked for i in ids) == sorted(ec2.world)
    assert len(poller.instances) == 450 and not poller.fresh  # a part is not a whole look


async def test_a_look_of_many_pages_comes_less_often_within_the_page_budget():
    """Each page is one call against EC2's API rate: at 5,000 servers (five pages) and 1.5
    pages a minute, a look every 200 s rather than every 40 s, and the view stays "fresh"
    for three such looks. Up to one page, ``interval`` as before."""
    ec2 = SlowEc2()
    ec2.world = [f"i-{n:017x}" for n in range(50)]
    poller = InstancePoller(ec2, "hub", interval=40, pages_per_minute=1.5)  # type: ignore[arg-type]
    await poller.refresh()
    assert poller.pages == 1 and poller.full_interval == 40 and poller.stale_after == 130
    ec2.pages = 5
    await poller.refresh()
    assert len(poller.instances) == 50
    assert poller.pages == 5 and poller.full_interval == 200 and poller.stale_after == 610
    assert InstancePoller(ec2, "hub", interval=40).full_interval == 40  # type: ignore[arg-type]


async def test_the_poller_loop_keeps_to_the_page_budget():
    """The loop's own looks: three looks of five pages at 600 pages a minute cannot come
    less than 0.5 s apart (timers only fire late under load, so this holds on a busy
    machine), and targeted looks for a waiting spawn go on meanwhile."""
    ec2 = SlowEc2()
    ec2.pages = 5
    ec2.world = ["i-0000000000000000a", "i-0000000000000000b"]
    ec2.states["i-0000000000000000b"] = "pending"  # a spawn that waits for ever
    poller = InstancePoller(
        ec2,  # type: ignore[arg-type]
        "hub",
        interval=0.01,
        fast_interval=0.01,
        pages_per_minute=600,
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    poller.ensure_running()
    waiting = asyncio.ensure_future(poller.wait_for("i-0000000000000000b", {"running"}))
    await wait_until(lambda: ec2.full_looks >= 3)
    assert loop.time() - began >= 2 * 0.5 * 0.99
    assert sum(ids == ["i-0000000000000000b"] for ids in ec2.asked) >= 2
    waiting.cancel()
    await poller.stop()


def test_a_page_budget_must_be_positive():
    with pytest.raises(ValueError, match="pages_per_minute"):
        InstancePoller(SlowEc2(), "hub", pages_per_minute=0)  # type: ignore[arg-type]
