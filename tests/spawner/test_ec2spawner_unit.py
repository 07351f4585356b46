"""EC2Spawner's rules that need no cloud: poll() answers from facts (an AWS error is never
"stopped"), the state identifies the instance across stop and hub restarts."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from spawner.aws import AwsError, ErrorKind
from spawner.ec2spawner import STATE_VERSION, EC2Spawner, StartFailed, token_digest
from spawner.options import SpawnOptions
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


@pytest.mark.parametrize("stretch, seconds", [(1.0, 30.0), (0.5, 30.0), (5.0, 150.0)])
async def test_polls_are_spaced_as_the_shared_view_is_stretched(stretch, seconds):
    """Issue 15: 5,000 servers polled every 30 s were 170 polls a second reading a view that
    changes every 200 s. A poll that finds the server running spaces JupyterHub's
    PeriodicCallback (tornado reads ``callback_time`` at each scheduling) by the poller's
    stretch; up to one page of instances nothing changes."""
    poller = FakePoller(view("running"))
    poller.stretch = stretch
    s = spawner(view("running"))
    s.poller_for = lambda region: poller
    s.poll_interval = 30
    s.start_polling()
    try:
        assert await s.poll() is None
        assert s._poll_callback.callback_time == seconds * 1e3
    finally:
        s.stop_polling()


def test_state_identifies_the_instance_and_survives_stop():
    s = spawner(None)
    s.volume_id, s.tunnel_port = "vol-0123456789abcdef0", 40123
    s.last_options = SpawnOptions("ad-portal", "jupyter", "t3.large", 20)
    state = s.get_state()
    assert state["version"] == STATE_VERSION
    assert state["options"] == {  # saved as user_options spell them
        "community": "ad-portal",
        "image": "jupyter",
        "instance_type": "t3.large",
        "disk_gb": 20,
    }
    restored = spawner(None)
    restored.instance_id = restored.region = None
    restored.load_state(state)
    assert (restored.instance_id, restored.region, restored.volume_id, restored.tunnel_port) == (
        "i-0123456789abcdef0",
        "us-east-1",
        "vol-0123456789abcdef0",
        40123,
    )
    assert restored.last_options == s.last_options  # typed again
    restored.clear_state()  # JupyterHub calls it after every stop: stop is not delete
    assert restored.get_state()["instance_id"] == "i-0123456789abcdef0"


def test_hub_environment_does_not_reach_the_instance():
    assert EC2Spawner().env_keep == []


class RecordingParameters:
    """Stands in for ParameterStore: records the tokens written."""

    written: list[str] = []

    def __init__(self, aws, key_id=None):
        pass

    async def write_synapse_token(self, names, token):
        self.written.append(token)

    async def delete(self, names):
        self.written.append("<deleted>")


def token_spawner(auth_state, refreshed=None) -> EC2Spawner:
    async def get_auth_state():
        return auth_state

    async def refresh_tokens(user, force=False):
        return refreshed

    s = EC2Spawner(user=SimpleNamespace(name="alice", url="/user/alice/"))
    s.user = SimpleNamespace(name="alice", url="/user/alice/", get_auth_state=get_auth_state)
    s.authenticator = SimpleNamespace(refresh_tokens=refresh_tokens)
    s.instance_id, s.region = "i-0123456789abcdef0", "us-east-1"
    s.aws_for = lambda region: FakeAws()
    s._token_written = token_digest("the-token-the-notebook-has")
    return s


async def test_a_restarted_hub_does_not_write_current_tokens_again(monkeypatch):
    """After a restart every running server's first poll checks its token parameter. The
    spawner's state says which token the parameter holds (its SHA-256, never the token), so
    a restart of 5,000 servers makes no ``PutParameter`` for tokens already there (Parameter
    Store throttles, and those calls slowed the sessions checking each server); a token that
    changed, or a state from before the digest was kept, is written once."""
    monkeypatch.setattr("spawner.ec2spawner.ParameterStore", RecordingParameters)
    RecordingParameters.written = []
    current = {"access_token": "the-token-the-notebook-has", "expires_at": time.time() + 86400}
    before = token_spawner(current)
    saved = before.get_state()
    assert saved["token_digest"] == token_digest("the-token-the-notebook-has")
    assert "the-token-the-notebook-has" not in json.dumps(saved)

    after = token_spawner(current)
    after._token_written = None
    after.load_state(saved)
    after._membership_due = lambda: False
    await after._refresh_token_if_needed()
    assert RecordingParameters.written == []

    older = token_spawner(current)
    older._token_written = None
    older.load_state({k: v for k, v in saved.items() if k != "token_digest"})
    older._membership_due = lambda: False
    await older._refresh_token_if_needed()
    await older._refresh_token_if_needed()
    assert RecordingParameters.written == ["the-token-the-notebook-has"]
    assert older.get_state()["token_digest"] == saved["token_digest"]


async def test_a_stopped_servers_state_keeps_no_token_digest():
    s = token_spawner({})
    await s._delete_parameters(FakeAws())
    assert "token_digest" not in s.get_state()


async def test_an_expired_token_is_never_written_to_the_parameter(monkeypatch):
    """Trust review, finding 8: a notebook must never be given an expired token. The refresh
    failed (Synapse down) and auth_state holds a token whose life is over (rotated earlier,
    never written): the notebook keeps the one it has until a refresh succeeds."""
    monkeypatch.setattr("spawner.ec2spawner.ParameterStore", RecordingParameters)
    RecordingParameters.written = []
    expired = {"access_token": "rotated-but-expired", "expires_at": time.time() - 5}
    await token_spawner(expired, refreshed=None)._refresh_token_if_needed()
    assert RecordingParameters.written == []
    fresh = {"access_token": "fresh", "expires_at": time.time() + 24 * 3600}
    await token_spawner(expired, refreshed={"auth_state": fresh})._refresh_token_if_needed()
    assert RecordingParameters.written == ["fresh"]


async def test_a_token_rewrite_in_flight_across_a_stop_writes_nothing(monkeypatch):
    """The poll's rewrite asks Synapse (slow in an outage); the server stops meanwhile and
    its parameters are deleted. The rewrite must not put the token back: a stopped server's
    token would stay in Parameter Store, readable by its instance's role, until the next
    start."""
    monkeypatch.setattr("spawner.ec2spawner.ParameterStore", RecordingParameters)
    RecordingParameters.written = []
    release = asyncio.Event()
    fresh = {"access_token": "fresh", "expires_at": time.time() + 24 * 3600}

    async def slow_refresh(user, force=False):
        await release.wait()
        return {"auth_state": fresh}

    s = token_spawner({"access_token": "old", "expires_at": time.time() + 60})
    s.authenticator = SimpleNamespace(refresh_tokens=slow_refresh)
    rewrite = asyncio.ensure_future(s._refresh_token_if_needed())
    await asyncio.sleep(0)  # the rewrite waits on Synapse
    await s._delete_parameters(FakeAws())  # the stop
    release.set()
    await rewrite
    assert RecordingParameters.written == ["<deleted>"]


async def test_the_auth_state_is_decrypted_again_only_when_something_changed(monkeypatch):
    """Decrypting the auth state at every poll (a thread-pool hop) was a quarter of a poll's
    cost at thousands of servers, to find the token already written. It is read again when
    its stored form changes (a sign-in or refresh stored a new token, which must reach the
    parameter at the next poll), when the token nears expiry, and when the membership check
    is due; never while the parameter is not yet current."""
    monkeypatch.setattr("spawner.ec2spawner.ParameterStore", RecordingParameters)
    RecordingParameters.written = []
    state = {"access_token": "the-token-the-notebook-has", "expires_at": time.time() + 86400}
    decrypts = []

    async def get_auth_state():
        decrypts.append(user.encrypted_auth_state)
        return dict(state)

    s = token_spawner(state)
    user = s.user
    user.encrypted_auth_state = b"sealed-1"
    s.user.get_auth_state = get_auth_state
    s._membership_due = lambda: False
    for _ in range(3):
        await s._refresh_token_if_needed()
    assert decrypts == [b"sealed-1"]  # the parameter was current: not read again

    state["access_token"] = "signed-in-again"
    user.encrypted_auth_state = b"sealed-2"
    await s._refresh_token_if_needed()
    await s._refresh_token_if_needed()
    assert decrypts == [b"sealed-1", b"sealed-2"]
    assert RecordingParameters.written == ["signed-in-again"]

    s._membership_due = lambda: True  # the teams are checked: read, and refreshed
    await s._refresh_token_if_needed()
    assert len(decrypts) == 3
    s._membership_due = lambda: False
    state["expires_at"] = time.time() + 60  # within token_refresh_margin: read at every poll
    s._auth_settled = (b"sealed-2", state["expires_at"])
    await s._refresh_token_if_needed()
    await s._refresh_token_if_needed()
    assert len(decrypts) == 5


async def test_a_token_not_yet_written_is_read_again_at_the_next_poll(monkeypatch):
    """A rewrite that failed (Parameter Store throttled) leaves nothing settled: the next
    poll decrypts and tries again rather than skipping an unchanged auth state."""
    failures = [AwsError("PutParameter", "ThrottlingException", "", ErrorKind.THROTTLED)]

    class FlakyParameters(RecordingParameters):
        async def write_synapse_token(self, names, token):
            if failures:
                raise failures.pop()
            self.written.append(token)

    monkeypatch.setattr("spawner.ec2spawner.ParameterStore", FlakyParameters)
    FlakyParameters.written = []
    s = token_spawner({"access_token": "new", "expires_at": time.time() + 86400})
    s.user.encrypted_auth_state = b"sealed"
    s._membership_due = lambda: False
    await s._refresh_token_if_needed()
    assert FlakyParameters.written == []
    await s._refresh_token_if_needed()
    assert FlakyParameters.written == ["new"]


async def test_a_start_with_an_expired_token_asks_to_sign_in_again():
    """The pre-spawn refresh could not rotate it: starting would hand the notebook a dead
    token, so the start is refused with what to do."""
    member = load_communities(DEFAULT_COMMUNITIES_PATH).communities[0]
    state = {
        "access_token": "old",
        "userid": "3412345",
        "teams": [member.team_id],
        "expires_at": time.time() - 1,
    }
    s = token_spawner(state)
    s.communities_file = str(DEFAULT_COMMUNITIES_PATH)
    s.user_options = {"community": member.id}
    with pytest.raises(StartFailed, match="sign out and sign in again"):
        await s._start()


class ConsoleAws:
    """GetConsoleOutput as EC2 answers it: ``Latest`` only on Nitro instances."""

    def __init__(self, output: str, nitro: bool = True) -> None:
        self.output, self.nitro = output, nitro
        self.asked: list[bool] = []

    async def call(self, service, operation, **kwargs):
        assert (service, operation) == ("ec2", "get_console_output")
        self.asked.append(kwargs["Latest"])
        if kwargs["Latest"] and not self.nitro:
            raise AwsError(
                "GetConsoleOutput",
                "UnsupportedOperation",
                "This instance type does not support the latest console output",
                ErrorKind.OTHER,
            )
        return {"InstanceId": kwargs["InstanceId"], "Output": self.output}


def console_spawner(aws: ConsoleAws, connected: asyncio.Event) -> EC2Spawner:
    s = spawner(view("running"))
    s.bootstrap_check_interval = 0.01

    async def running(poller):
        return None

    async def never_connects(image, aws):
        await connected.wait()

    s._wait_running = running
    s._wait_connected = never_connects
    return s


async def test_a_bootstrap_that_gave_up_fails_the_start_with_its_reason():
    """The bootstrap's ``die`` writes "notebook-bootstrap: failed at <time>: <why>" on the
    serial console (GetConsoleOutput): the start fails with that reason at once rather than
    after ``start_timeout``; a failure stamped before this start (an earlier boot) does not
    count, and an instance without ``Latest`` support is read without it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    old = "2020-01-01T00:00:00Z"
    output = (
        f"notebook-bootstrap: failed at {old}: cannot pull an old image\n"
        "cloud-init[140]: ...\n"
        f"notebook-bootstrap: failed at {now}: parameter /hub/alice/_/config not found\n"
    )
    aws = ConsoleAws(output, nitro=False)
    s = console_spawner(aws, asyncio.Event())
    with pytest.raises(StartFailed) as info:
        async with asyncio.timeout(30):
            await s._wait_reachable(None, aws, FakePoller(view("running")))
    assert "parameter /hub/alice/_/config not found" in str(info.value)
    assert "old image" not in str(info.value)
    assert aws.asked[:2] == [True, False]


async def test_an_old_failure_on_the_console_does_not_stop_a_start_that_connects():
    aws = ConsoleAws("notebook-bootstrap: failed at 2020-01-01T00:00:00Z: gone\n")
    connected = asyncio.Event()
    s = console_spawner(aws, connected)
    started = asyncio.ensure_future(s._wait_reachable(None, aws, FakePoller(view("running"))))
    for _ in range(2000):
        if len(aws.asked) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(aws.asked) >= 3 and not started.done()
    connected.set()
    async with asyncio.timeout(30):
        await started
