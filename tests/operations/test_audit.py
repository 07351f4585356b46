"""The audit log: one JSON line per event, allowed fields only, written off the event loop,
and who acted, from what JupyterHub gives the spawner."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import uuid
from types import SimpleNamespace
from unittest import mock

import pytest
from tornado.web import Application, RequestHandler

from operations import audit
from operations.audit import (
    Actor,
    AuditLog,
    actor_for,
    actor_from_handler,
    current_handler,
    isoformat,
)

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIzNDEyMzQ1In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_json_line_per_event_with_allowed_fields_only(tmp_path):
    log = AuditLog(tmp_path / "audit.log", clock=lambda: T0)
    log.record(
        "stop",
        Actor("culler", "idle-culler"),
        instance_id="i-0123",
        user="alice",
        server="",
        community="ad-portal",
        reason=f"idle for 61 minutes {JWT}",
        access_token="secret-token",  # not an audit field: dropped
        env={"JUPYTERHUB_API_TOKEN": "t"},
    )
    assert log.flush()
    [line] = lines(tmp_path / "audit.log")
    assert line == {
        "time": "2025-03-01T12:00:00.123Z",
        "actor": "culler",
        "actor_name": "idle-culler",
        "action": "stop",
        "instance_id": "i-0123",
        "user": "alice",
        "server": "",
        "community": "ad-portal",
        "reason": "idle for 61 minutes [redacted]",
    }
    text = (tmp_path / "audit.log").read_text()
    assert "secret-token" not in text and "JUPYTERHUB_API_TOKEN" not in text and JWT not in text
    assert set(line) <= set(audit.FIELDS)


def test_values_are_scalars_and_strings_are_bounded(tmp_path):
    log = AuditLog(tmp_path / "a.log", clock=lambda: T0)
    record = log.record(
        "terminate",
        "reaper",
        reason="x" * 5000,
        duration_s=1.5,
        dry_run=False,
        stopped_since=dt.datetime(2025, 1, 1),
        volume_id=None,
    )
    assert len(record["reason"]) == audit.MAX_STRING
    assert record["stopped_since"] == "2025-01-01T00:00:00.000Z"
    assert record["dry_run"] is False and "volume_id" not in record


def test_lines_go_to_the_snh_audit_logger_too(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="snh.audit")
    log = AuditLog(None, clock=lambda: T0)  # no file: the logger only
    server = f"logger-{uuid.uuid4().hex}"
    log.record("start", Actor("user", "alice"), user="alice", server=server)
    log.flush()
    # only this log's line: other tests' logs write from their own threads and may reach
    # the logger late, with the same clock
    messages = [r.getMessage() for r in caplog.records if r.name == "snh.audit"]
    [mine] = [m for m in messages if json.loads(m).get("server") == server]
    assert json.loads(mine)["action"] == "start"
    assert json.loads(mine)["time"] == isoformat(T0)


async def test_recording_does_not_wait_for_the_disk(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    release = threading.Event()
    real_write = log._write

    def slow_write(line):
        release.wait(5)
        real_write(line)

    log._write = slow_write
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(100):
        log.record("stop", "user", instance_id=f"i-{i}")
    assert loop.time() - started < 0.5  # the writer is stuck; record() is not
    assert not (tmp_path / "audit.log").exists()
    release.set()
    assert await log.aflush()
    assert len(lines(tmp_path / "audit.log")) == 100


def test_concurrent_writers_never_interleave_lines(tmp_path):
    """The hub and a reaper run append to one file: every line stays whole."""
    path = tmp_path / "audit.log"
    logs = [AuditLog(path), AuditLog(path)]
    reason = "r" * 400

    def write(log, n):
        for i in range(n):
            log.record("snapshot", "reaper", instance_id=f"i-{n}-{i}", reason=reason)

    threads = [threading.Thread(target=write, args=(logs[k % 2], 150 + k)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.flush()
    records = lines(path)
    assert len(records) == sum(150 + k for k in range(6))
    assert all(r["reason"] == reason for r in records)


def test_a_write_failure_is_logged_not_raised(tmp_path, caplog):
    (tmp_path / "dir").mkdir()
    log = AuditLog(tmp_path / "dir")  # a directory: cannot be appended to
    assert log.record("stop", "admin", instance_id="i-1") is not None
    log.flush()
    assert log.write_errors == 1
    assert "could not append" in caplog.text


def test_unknown_actor_or_action_is_recorded_with_a_warning(tmp_path, caplog):
    log = AuditLog(tmp_path / "audit.log")
    log.record("explode", "martian")
    log.flush()
    assert lines(tmp_path / "audit.log")[0]["actor"] == "martian"
    assert "unknown actor 'martian'" in caplog.text and "unknown action 'explode'" in caplog.text


def test_reading_skips_broken_lines(tmp_path):
    path = tmp_path / "audit.log"
    path.write_text('{"action": "stop"}\nnot json\n\n["a list"]\n{"action": "sto')
    assert list(audit.read_records(path)) == [{"action": "stop"}]
    assert list(audit.read_records(tmp_path / "missing.log")) == []


def test_configure_points_the_process_log_at_the_state_dir(tmp_path):
    assert audit.default_path(tmp_path) == tmp_path / "audit.log"
    default = audit.get_audit_log()
    old = default.path
    try:
        audit.configure(state_dir=tmp_path)
        audit.record("stop", audit.HUB, instance_id="i-9")
        default.flush()
        assert lines(tmp_path / "audit.log")[0]["instance_id"] == "i-9"
    finally:
        default.path = old


# ------------------------------------------------------------------------------------------
# Who acted
# ------------------------------------------------------------------------------------------


def user(name, admin=False):
    return SimpleNamespace(kind="user", name=name, admin=admin)


def service(name):
    return SimpleNamespace(kind="service", name=name)


@pytest.mark.parametrize(
    "who, expected",
    [
        (user("alice"), Actor("user", "alice")),
        (user("carol", admin=True), Actor("admin", "carol")),
        (user("alice", admin=True), Actor("user", "alice")),  # an admin's own server
        (user("dave"), Actor("user", "dave")),  # a server shared with dave
        (service("idle-culler"), Actor("culler", "idle-culler")),
        (service("idle-culler-ad-portal"), Actor("culler", "idle-culler-ad-portal")),  # ours
        (
            service("jupyterhub-idle-culler-service"),
            Actor("culler", "jupyterhub-idle-culler-service"),
        ),
        (service("Idle-Culler"), Actor("culler", "Idle-Culler")),
        (service("announcements"), Actor("service", "announcements")),
        (None, audit.HUB),
    ],
)
def test_actor_from_the_request(who, expected):
    handler = SimpleNamespace(current_user=who)
    assert actor_from_handler(handler, "alice") == expected


def test_no_handler_is_the_hub():
    assert actor_from_handler(None, "alice") == audit.HUB


def test_a_handler_whose_user_is_not_loaded_yet():
    class Early:
        _jupyterhub_user = user("carol", admin=True)

        @property
        def current_user(self):
            raise RuntimeError("Must call async get_current_user first!")

    assert actor_from_handler(Early(), "alice") == Actor("admin", "carol")


class FakeHubHandler(RequestHandler):
    """Stands in for JupyterHub's BaseHandler: ``current_user`` and ``stop_single_user``'s
    shape (the stop runs in a task the handler creates, awaiting ``user.stop``)."""

    def initialize(self, who):
        self.who = who

    @property
    def current_user(self):
        return self.who

    async def stop_single_user(self, spawner):
        async def stop():
            # like JupyterHub's: the closure uses the handler (self.proxy, self.log, …)
            self.log_stop = f"stopping {spawner.user.name}"
            await asyncio.sleep(0)
            await user_stop(spawner)

        future = asyncio.ensure_future(stop())
        await asyncio.wait_for(asyncio.shield(future), 5)
        return future


async def user_stop(spawner):  # jupyterhub.user.User.stop
    await asyncio.sleep(0)
    return await spawner.stop()


class Spawner:
    handler = None  # JupyterHub clears it after start

    def __init__(self, owner):
        self.user = SimpleNamespace(name=owner)
        self.name = ""
        self.seen = None

    async def stop(self):
        await asyncio.sleep(0)
        self.seen = actor_for(self)


def make_handler(who):
    app = Application()
    request = mock.Mock(connection=mock.Mock(), method="DELETE", uri="/hub/api/x")
    return FakeHubHandler(app, request, who=who)


@pytest.mark.parametrize(
    "who, expected",
    [
        (service("idle-culler"), Actor("culler", "idle-culler")),
        (user("carol", admin=True), Actor("admin", "carol")),
        (user("alice"), Actor("user", "alice")),
    ],
)
async def test_stop_finds_the_request_handler_on_the_call_stack(who, expected):
    spawner = Spawner("alice")
    await make_handler(who).stop_single_user(spawner)
    assert spawner.seen == expected


async def test_stop_without_a_request_is_the_hub():
    spawner = Spawner("alice")
    await spawner.stop()
    assert spawner.seen == audit.HUB
    assert current_handler() is None


def test_explicit_actor_and_start_handler():
    spawner = Spawner("alice")
    assert actor_for(spawner, audit.BACKSTOP) == Actor("backstop")
    assert actor_for(spawner, "reconciliation") == Actor("reconciliation")
    spawner.handler = SimpleNamespace(current_user=user("carol", admin=True))
    assert actor_for(spawner) == Actor("admin", "carol")


def test_server_and_view_fields():
    spawner = SimpleNamespace(
        user=SimpleNamespace(name="alice"), name="gpu", instance_id="i-1", region="us-east-1"
    )
    assert audit.server_fields(spawner) == {
        "user": "alice",
        "server": "gpu",
        "instance_id": "i-1",
        "region": "us-east-1",
    }
    view = SimpleNamespace(
        instance_id="i-2",
        instance_type="t3.large",
        state="stopped",
        tags={"jupyterhub:user": "bob", "jupyterhub:server": "_", "jupyterhub:community": "c"},
    )
    fields = audit.view_fields(view)
    assert fields["server"] == "" and fields["user"] == "bob" and fields["community"] == "c"


# ------------------------------------------------------------------------------------------
# With a real JupyterHub: the REST API's stop reaches spawner.stop() with the handler above it
# ------------------------------------------------------------------------------------------

CULLER_TOKEN = "culler-token-0123456789abcdef0123456789"


@pytest.mark.parametrize(
    "caller, owner, expected",
    [
        ("idle-culler", "bob", Actor("culler", "idle-culler")),
        ("alice", "bob", Actor("admin", "alice")),  # alice is an admin
        ("bob", "bob", Actor("user", "bob")),
    ],
)
async def test_who_stopped_a_server_through_jupyterhubs_api(caller, owner, expected):
    from jupyterhub import orm
    from tornado.httpclient import AsyncHTTPClient
    from traitlets.config import Config

    from tests.operations.test_admin_page import RunningSpawner, inprocess_hub

    config = Config()
    config.JupyterHub.services = [{"name": "idle-culler", "api_token": CULLER_TOKEN}]
    config.JupyterHub.load_roles = [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    ]
    RunningSpawner.stops = []
    async with inprocess_hub(config) as hub:
        app = hub.app
        orm_user = orm.User.find(app.db, owner)
        app.users[orm_user].spawners[""].orm_spawner.server = orm.Server()
        app.db.commit()
        if caller == "idle-culler":
            token = CULLER_TOKEN
        else:
            token = app.users[orm.User.find(app.db, caller)].new_api_token()
        answer = await AsyncHTTPClient().fetch(
            f"{hub.url}/hub/api/users/{owner}/server",
            method="DELETE",
            headers={"Authorization": f"token {token}"},
            raise_error=False,
        )
        assert answer.code in (202, 204), answer.body
        for _ in range(100):
            if RunningSpawner.stops:
                break
            await asyncio.sleep(0.05)
    assert RunningSpawner.stops == [expected]
