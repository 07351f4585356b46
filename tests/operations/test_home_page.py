"""The home page's "Stopped since …, will be removed on …" line (operations.home_page).

The dates follow the reaper's own rules (operations/reaper.py): EC2's time of the stop
(``StateTransitionReason``, "User initiated (YYYY-MM-DD hh:mm:ss GMT)", EC2 API reference,
InstanceStateChange / Instance.StateTransitionReason) plus the community's ``dormancy_days``;
the audit log's last stop when EC2 gives no time. Template variables: JupyterHub's
``JupyterHub.template_vars`` calls a callable value with the current user at every render
(JupyterHub docs, "Working with templates and UI"); Jinja's async mode, which JupyterHub
uses for page templates, awaits what a template's call returns (Jinja docs, "Async Support").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import boto3
import jinja2
import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from operations import home_page
from operations.home_page import HomeNotices, stopped_line
from spawner.aws import Aws, AwsError, ErrorKind
from spawner.poller import UNKNOWN, InstancePoller, InstanceView
from spawner.region import Regions

DEMO = load_communities(DEFAULT_COMMUNITIES_PATH)
AD, NF = DEMO.communities  # dormancy 30 / 60 days
STOP = dt.datetime(2025, 3, 3, 14, 5, 9, tzinfo=dt.UTC)
NOW = STOP + dt.timedelta(days=2)
STATE = {"instance_id": "i-0abc", "region": "us-east-1", "options": {"community": "ad-portal"}}
HUB = "hub-test"


def view(state: str = "stopped", since: dt.datetime | None = STOP, community: str = "ad-portal"):
    tags = {"jupyterhub:hub": HUB, "jupyterhub:community": community}
    return InstanceView("i-0abc", state, "t3.large", tags, state_since=since)


# ------------------------------------------------------------------------------------------
# The line (pure)
# ------------------------------------------------------------------------------------------


def test_a_stopped_server_shows_ec2s_stop_time_and_the_removal_date():
    line = stopped_line(STATE, view(), AD, None, NOW)
    assert line == "Stopped since 3 March 2025, 14:05 UTC, will be removed on 2 April 2025."


def test_the_removal_date_follows_the_communitys_dormancy():
    line = stopped_line(STATE, view(community="nf-osc"), NF, None, NOW)
    assert line.endswith("will be removed on 2 May 2025.")  # 60 days


def test_nothing_for_a_server_never_started_deleted_running_or_gone():
    assert stopped_line({}, view(), AD, None, NOW) is None  # never started
    assert stopped_line({"instance_id": None}, view(), AD, None, NOW) is None  # deleted
    assert stopped_line(STATE, view(), AD, None, NOW, active=True) is None  # the hub: running
    for state in ("pending", "running", "stopping", "shutting-down", "terminated"):
        assert stopped_line(STATE, view(state), AD, None, NOW) is None, state
    assert stopped_line(STATE, None, AD, None, NOW) is None  # EC2 lists it no more (reaped)


def test_without_ec2s_time_the_audit_log_then_the_saved_stop_time_date_it():
    audit_stop = STOP + dt.timedelta(hours=1)
    line = stopped_line(STATE, view(since=None), AD, audit_stop, NOW)
    assert line.startswith("Stopped since 3 March 2025, 15:05 UTC,")
    saved = {**STATE, "stopped_at": "2025-03-04T08:00:00.000Z"}
    line = stopped_line(saved, view(since=None), AD, None, NOW)
    assert line == "Stopped since 4 March 2025, 08:00 UTC, will be removed on 3 April 2025."
    # EC2's time wins over both, as in the reaper
    assert stopped_line(saved, view(), AD, audit_stop, NOW).startswith("Stopped since 3 March")


def test_when_ec2_cannot_be_asked_the_hubs_stopped_server_is_dated_from_the_audit_log():
    line = stopped_line(STATE, UNKNOWN, AD, STOP, NOW)
    assert line == "Stopped since 3 March 2025, 14:05 UTC, will be removed on 2 April 2025."


def test_an_undatable_stop_is_said_to_be_kept():
    line = stopped_line(STATE, view(since=None), AD, None, NOW)
    assert line == "Stopped. The time of the stop is unknown, so it is not scheduled for removal."


def test_a_server_past_its_date_is_removed_at_the_next_clean_up():
    line = stopped_line(STATE, view(), AD, None, STOP + dt.timedelta(days=31))
    assert line == (
        "Stopped since 3 March 2025, 14:05 UTC, will be removed at the next clean-up "
        "(due on 2 April 2025)."
    )


def test_a_community_gone_from_the_file_gets_the_reapers_default():
    assert stopped_line(STATE, view(), None, None, NOW).endswith("on 2 April 2025.")


# ------------------------------------------------------------------------------------------
# The template variable: the user's servers, EC2 asked once per page
# ------------------------------------------------------------------------------------------


def orm_spawner(name: str, state: dict[str, Any] | None, running: bool = False):
    """What ``user.all_spawners()`` yields for a stopped named server: an orm.Spawner."""
    return SimpleNamespace(name=name, state=state, server=object() if running else None)


def spawner_object(name: str, state: dict[str, Any] | None, active: bool = False):
    """A Spawner object (the default server, and any server running)."""
    return SimpleNamespace(name=name, orm_spawner=orm_spawner(name, state), active=active)


def user_with(*spawners: Any):
    orm = {s.name: getattr(s, "orm_spawner", s) for s in spawners}
    return SimpleNamespace(name="alice", orm_user=SimpleNamespace(orm_spawners=orm))


@pytest.fixture
def notices(tmp_path):
    return HomeNotices(
        regions=Regions(),
        hub_id=HUB,
        communities=load_communities(DEFAULT_COMMUNITIES_PATH),
        audit_log=tmp_path / "audit.log",
        clock=lambda: NOW,
    )


async def test_lines_come_from_the_shared_pollers_view_without_an_aws_call(notices):
    aws = notices.regions["us-east-1"].aws
    poller = notices.regions["us-east-1"].add_poller(InstancePoller(aws, HUB))
    poller.instances = {"i-0abc": view()}
    poller.last_success = asyncio.get_running_loop().time()
    default = spawner_object("", STATE)
    gone = orm_spawner("gone", {**STATE, "instance_id": "i-0def"})  # not listed: terminated
    never = orm_spawner("never", {})
    user = user_with(default, gone, never)
    line = notices(user)
    assert (await line(default)).startswith("Stopped since 3 March 2025, 14:05 UTC")
    assert await line(gone) == ""
    assert await line(never) == ""
    assert await line(spawner_object("", STATE, active=True)) == ""
    assert sum(aws.calls.values()) == 0


async def test_without_a_fresh_poller_the_users_instances_are_described_once(moto_aws, notices):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ids = []
    for server in ("_", "two"):
        answer = ec2.run_instances(
            ImageId="ami-03cf127a",
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.large",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "jupyterhub:hub", "Value": HUB},
                        {"Key": "jupyterhub:server", "Value": server},
                        {"Key": "jupyterhub:community", "Value": "nf-osc"},
                    ],
                }
            ],
        )
        ids.append(answer["Instances"][0]["InstanceId"])
    ec2.stop_instances(InstanceIds=ids)
    default = spawner_object("", {**STATE, "instance_id": ids[0]})
    two = orm_spawner("two", {**STATE, "instance_id": ids[1]})
    line = notices(user_with(default, two))
    for spawner in (default, two):
        # moto stops at the real time, "User initiated (… UTC)"; the community comes from
        # the instance's tag (nf-osc: 60 days), not from the saved options (ad-portal)
        raw = ec2.describe_instances(InstanceIds=[ids[1] if spawner.name else ids[0]])
        since = InstanceView.from_api(raw["Reservations"][0]["Instances"][0]).state_since
        assert since is not None
        assert await line(spawner) == (
            f"Stopped since {home_page.format_moment(since)}, will be removed on "
            f"{home_page.format_day(since + dt.timedelta(days=60))}."
        )
    assert notices.regions["us-east-1"].aws.calls[("ec2", "describe_instances")] == 1


async def test_a_poller_view_from_before_the_stop_is_checked_with_ec2(moto_aws, notices):
    """The hub shows the server stopped, the poller (every 30 s) still says running: EC2
    is asked. Stopped there: the line; still running (behind the hub's back): nothing."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    answer = ec2.run_instances(ImageId="ami-03cf127a", MinCount=2, MaxCount=2)
    stopped, running = (i["InstanceId"] for i in answer["Instances"])
    aws = notices.regions["us-east-1"].aws
    poller = notices.regions["us-east-1"].add_poller(InstancePoller(aws, HUB))
    poller.instances = {
        i: InstanceView(i, "running", "t3.large", {"jupyterhub:hub": HUB})
        for i in (stopped, running)
    }
    poller.last_success = asyncio.get_running_loop().time()
    ec2.create_tags(Resources=[stopped, running], Tags=[{"Key": "jupyterhub:hub", "Value": HUB}])
    ec2.stop_instances(InstanceIds=[stopped])
    default = spawner_object("", {**STATE, "instance_id": stopped})
    other = orm_spawner("other", {**STATE, "instance_id": running})
    line = notices(user_with(default, other))
    assert (await line(default)).startswith("Stopped since ")
    assert await line(other) == ""
    assert aws.calls[("ec2", "describe_instances")] == 1  # once for the page


async def test_when_ec2_fails_the_audit_log_dates_the_stop(notices, monkeypatch):
    async def refuse(self, service: str, operation: str, **kwargs: Any) -> Any:
        raise AwsError(
            "DescribeInstances", "RequestLimitExceeded", "slow down", ErrorKind.THROTTLED
        )

    monkeypatch.setattr(Aws, "paginate", refuse)
    notices.audit_log.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"time": "2025-03-01T09:00:00.000Z", "action": "launch", "instance_id": "i-0abc"},
                {"time": "2025-03-03T14:05:00.000Z", "action": "stop", "instance_id": "i-0abc"},
            )
        )
        + "\n"
    )
    line = await notices(user_with(spawner_object("", STATE)))(spawner_object("", STATE))
    assert line == "Stopped since 3 March 2025, 14:05 UTC, will be removed on 2 April 2025."


async def test_no_user_no_line_and_a_failure_never_breaks_the_page(notices):
    assert await notices(None)(object()) == ""
    broken = SimpleNamespace(name="", orm_spawner=None, state=None, server=None)
    assert await notices(user_with(broken))(SimpleNamespace(name="x")) == ""


# ------------------------------------------------------------------------------------------
# The template: JupyterHub's own home page, extended
# ------------------------------------------------------------------------------------------


async def test_the_template_extends_jupyterhubs_home_page_and_shows_each_line():
    """Rendered as JupyterHub renders it: the stock templates under the ``templates/``
    prefix, ours first on the search path, Jinja's async mode."""
    from jupyterhub._data import DATA_FILES_PATH

    stock = f"{DATA_FILES_PATH}/templates"
    loader = jinja2.ChoiceLoader(
        [
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader([stock])}, "/"),
            jinja2.FileSystemLoader([home_page.TEMPLATE_DIR, stock]),
        ]
    )
    env = jinja2.Environment(loader=loader, autoescape=True, enable_async=True)

    async def line(spawner: Any) -> str:
        return {"": "Stopped since A, will be removed on B.", "gpu": "Line <gpu>"}.get(
            spawner.name, ""
        )

    default = SimpleNamespace(
        name="", active=False, ready=False, last_activity=None, options_form=None
    )
    gpu = SimpleNamespace(name="gpu", active=False, ready=False, last_activity=None)
    user = SimpleNamespace(
        name="alice",
        admin=False,
        all_spawners=lambda include_default=True: [default, gpu] if include_default else [gpu],
        server_url=lambda name: f"/user/alice/{name}/",
        spawner=default,
    )
    html = await env.get_template("home.html").render_async(
        user=user,
        default_server=default,
        url="/hub/spawn/alice",
        allow_named_servers=True,
        named_server_limit_per_user=0,
        base_url="/hub/",
        prefix="/",
        static_url=lambda path, **kw: f"/hub/static/{path}",
        parsed_scopes={},
        services=[],
        xsrf="x",
        snh_stopped_line=line,
    )
    assert 'id="start"' in html and "Named Servers" in html  # the stock page is all there
    assert 'data-server-name=""' in html and "Stopped since A, will be removed on B." in html
    assert 'data-server-name="gpu"' in html and "Line &lt;gpu&gt;" in html  # escaped
