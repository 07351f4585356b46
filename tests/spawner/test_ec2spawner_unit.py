"""EC2Spawner's rules that need no cloud: poll() answers from facts (an AWS error is never
"stopped"), the state identifies the instance across stop and hub restarts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spawner.aws import AwsError, ErrorKind
from spawner.ec2spawner import STATE_VERSION, EC2Spawner
from spawner.poller import UNKNOWN, InstanceView


class FakePoller:
    def __init__(self, answer):
        self.answer = answer

    def get(self, instance_id):
        return self.answer

    async def ensure_fresh(self):
        if self.answer is UNKNOWN:  # AWS does not answer
            raise AwsError("DescribeInstances", "RequestLimitExceeded", "", ErrorKind.THROTTLED)


class FakeAws:
    def __init__(self, error=None, state="running"):
        self.error, self.state = error, state

    async def call(self, service, operation, **kwargs):
        if self.error:
            raise self.error
        return {"Reservations": [{"Instances": [{"State": {"Name": self.state}}]}]}


def spawner(answer, aws=None) -> EC2Spawner:
    s = EC2Spawner(user=SimpleNamespace(name="alice", url="/user/alice/"))
    s.instance_id, s.region = "i-0123456789abcdef0", "us-east-1"
    s.poller_for = lambda region: FakePoller(answer)
    s.aws_for = lambda region: aws or FakeAws()
    s.tunnel = object()  # an open tunnel: poll() does not try to reopen it

    async def no_refresh():
        return None

    s._refresh_token_if_needed = no_refresh
    return s


def view(state: str) -> InstanceView:
    return InstanceView(
        instance_id="i-0123456789abcdef0", state=state, instance_type="t3.large", tags={}
    )


async def test_never_started_is_not_running():
    s = spawner(None)
    s.instance_id = None
    assert await s.poll() == 0


async def test_unknown_state_is_not_stopped():
    """The poller has had no recent answer from AWS: keep the server, do not declare it gone."""
    assert await spawner(UNKNOWN).poll() is None


@pytest.mark.parametrize(
    "state, expected",
    [
        ("pending", None),
        ("running", None),
        ("stopping", 0),
        ("stopped", 0),
        ("terminated", 0),
    ],
)
async def test_poll_follows_the_instance_state(state, expected):
    s = spawner(view(state))

    async def closed():
        s.tunnel = None

    s._close_tunnel = closed
    assert await s.poll() == expected


async def test_absent_from_describe_is_confirmed_before_it_counts():
    gone = AwsError("DescribeInstances", "InvalidInstanceID.NotFound", "", ErrorKind.NOT_FOUND)
    assert await spawner(None, FakeAws(error=gone)).poll() == 0
    flaky = AwsError("DescribeInstances", "InternalError", "", ErrorKind.TRANSIENT)
    assert await spawner(None, FakeAws(error=flaky)).poll() is None
    assert await spawner(None, FakeAws(state="running")).poll() is None


def test_state_identifies_the_instance_and_survives_stop():
    s = spawner(None)
    s.volume_id, s.tunnel_port = "vol-0123456789abcdef0", 40123
    s.last_options = {"community": "ad-portal", "image": "jupyter"}
    state = s.get_state()
    assert state["version"] == STATE_VERSION
    restored = spawner(None)
    restored.instance_id = restored.region = None
    restored.load_state(state)
    assert (restored.instance_id, restored.region, restored.volume_id, restored.tunnel_port) == (
        "i-0123456789abcdef0",
        "us-east-1",
        "vol-0123456789abcdef0",
        40123,
    )
    restored.clear_state()  # JupyterHub calls it after every stop: stop is not delete
    assert restored.get_state()["instance_id"] == "i-0123456789abcdef0"


def test_hub_environment_does_not_reach_the_instance():
    assert EC2Spawner().env_keep == []
