"""Start server with a real hub and proxy on the local cloud: moto behind the AWS front, the SSM
stand-in, and the instance simulator running real jupyterhub-singleuser processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from hub_config import load_communities
from spawner.launch import ServerIdentity, subnet_order

from .harness import SERVICE_TOKEN, sign_in, wait_until
from .spawn_harness import (
    JUPYTER,
    contents,
    front_control,
    instances_of,
    moto,
    server_model,
    spawn_error,
    start_server,
    stop_server,
    user_data,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def community(cloud):
    return load_communities(cloud.endpoints["aws"]["communities_file"]).by_id("ad-portal")


@pytest.fixture(scope="module")
def users(hub):
    for name in ("alice", "bob"):
        sign_in(hub, name)


def live(instances: list[dict]) -> list[dict]:
    return [i for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")]


def parameters_of(cloud, user: str, server: str = "_") -> dict[str, str]:
    ssm = moto(cloud, "ssm")
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path=f"/synapse-notebook-hub/synapse-notebook-hub/{user}/{server}",
        WithDecryption=True,
        Recursive=True,
    )
    return {p["Name"].rsplit("/", 1)[1]: p["Value"] for page in pages for p in page["Parameters"]}


def test_start_stop_start_resumes_the_same_instance_volume_and_files(hub, cloud, community, users):
    model = start_server(hub, "alice", JUPYTER, name="resume")
    [instance] = live(instances_of(cloud, "alice", "resume"))
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {
        **tags,
        "Name": "notebook-alice-resume",
        "synapse:ownerId": "3400001",
        "synapse:userName": "alice",
        "synapse:email": "alice@example.org",
        "OwnerEmail": "alice@synapse.org",
        "synapse:teamId": "3500001",
        "jupyterhub:hub": "synapse-notebook-hub",
        "jupyterhub:user": "alice",
        "jupyterhub:server": "resume",
        "jupyterhub:image": "jupyter",
    }
    assert instance["InstanceType"] == "t3.xlarge"
    assert instance["IamInstanceProfile"]["Arn"] == community.instance_profile_arn
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    home = next(b for b in instance["BlockDeviceMappings"] if b["DeviceName"] == "/dev/sdf")
    [volume] = moto(cloud, "ec2").describe_volumes(VolumeIds=[home["Ebs"]["VolumeId"]])["Volumes"]
    assert (volume["Size"], volume["Encrypted"]) == (40, True)
    assert {t["Key"]: t["Value"] for t in volume["Tags"]}["jupyterhub:user"] == "alice"
    assert model["state"]["instance_id"] == instance["InstanceId"]
    assert model["state"]["volume_id"] == home["Ebs"]["VolumeId"]
    assert model["state"]["version"] == 1 and model["state"]["tunnel_port"]
    assert set(parameters_of(cloud, "alice", "resume")) == {
        "config",
        "jupyterhub-env",
        "synapse-token",
    }

    # the notebook answers through the proxy and the tunnel; a file goes on the home volume
    assert requests.get(f"{hub.url}/user/alice/resume/api", timeout=30).status_code == 200
    note = {"type": "file", "format": "text", "content": "kept across stop and start"}
    assert contents(
        hub, "alice", "note.txt", method="PUT", body=note, server="resume"
    ).status_code in (200, 201)

    stop_server(hub, "alice", "resume")
    [stopped] = live(instances_of(cloud, "alice", "resume"))
    assert stopped["State"]["Name"] in ("stopping", "stopped")
    assert parameters_of(cloud, "alice", "resume") == {}

    again = start_server(hub, "alice", JUPYTER, name="resume")
    assert again["state"]["instance_id"] == instance["InstanceId"]
    assert again["state"]["volume_id"] == home["Ebs"]["VolumeId"]
    assert again["state"]["tunnel_port"] == model["state"]["tunnel_port"]
    assert contents(hub, "alice", "note.txt", server="resume").json()["content"] == note["content"]
    stop_server(hub, "alice", "resume")


def test_secrets_appear_only_in_their_parameters(hub, cloud, users):
    start_server(hub, "bob", {"community": "nf-osc"})
    [instance] = live(instances_of(cloud, "bob"))
    params = parameters_of(cloud, "bob")
    secrets = {
        "synapse token": params["synapse-token"],
        "hub API token": json.loads(params["jupyterhub-env"])["JUPYTERHUB_API_TOKEN"],
    }
    assert secrets["synapse token"] == hub.auth_state("bob")["access_token"]
    ec2 = moto(cloud, "ec2")
    places = {
        "user data": user_data(cloud, instance["InstanceId"]),
        "instance tags": json.dumps(instance["Tags"]),
        "volume tags": json.dumps(
            ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [instance["InstanceId"]]}]
            )["Volumes"],
            default=str,
        ),
        "hub log": hub.log(),
        "instance log": Path(cloud.endpoints["aws"]["instances_log"]).read_text(),
        "AWS call log": json.dumps(front_control(cloud, "GET", "/calls")),
    }
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                places[f"arguments of {pid}"] = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                )
            except OSError:
                pass
    volumes = Path(cloud.endpoints["aws"]["volumes_dir"])
    for path in volumes.rglob("*"):
        if path.is_file():
            places[f"volume file {path}"] = path.read_bytes().decode(errors="replace")
    for what, secret in secrets.items():
        leaks = [where for where, text in places.items() if secret in text]
        assert not leaks, f"the {what} leaked into {leaks}"
    stop_server(hub, "bob")


def test_capacity_error_in_the_first_subnet_launches_in_the_next(hub, cloud, community, users):
    identity = ServerIdentity(
        hub_id="synapse-notebook-hub",
        user="alice",
        server="capacity",
        synapse_userid="3400001",
        synapse_user_name="alice",
        email="alice@example.org",
    )
    first, second = subnet_order(community, identity)[:2]
    front_control(
        cloud,
        "POST",
        "/faults",
        {
            "service": "ec2",
            "action": "RunInstances",
            "code": "InsufficientInstanceCapacity",
            "params": {"SubnetId": first},
            "count": 1,
        },
    )
    start_server(hub, "alice", JUPYTER, name="capacity")
    [instance] = live(instances_of(cloud, "alice", "capacity"))
    assert instance["SubnetId"] == second
    stop_server(hub, "alice", "capacity")


def test_throttling_is_retried_with_backoff(hub, cloud, users):
    for action in ("RunInstances", "DescribeInstances", "PutParameter"):
        front_control(
            cloud,
            "POST",
            "/faults",
            {
                "service": "*",
                "action": action,
                "code": "RequestLimitExceeded"
                if action != "PutParameter"
                else "ThrottlingException",
                "count": 2,
            },
        )
    start_server(hub, "alice", JUPYTER, name="throttled")
    assert len(live(instances_of(cloud, "alice", "throttled"))) == 1
    stop_server(hub, "alice", "throttled")


def test_a_failed_start_leaves_nothing_running(hub, cloud, users):
    front_control(
        cloud,
        "POST",
        "/faults",
        {
            "service": "ssm",
            "action": "StartSession",
            "code": "AccessDeniedException",
            "count": None,
        },
    )
    message = spawn_error(hub, "alice", JUPYTER, name="doomed")
    assert "Session Manager connection" in message, message
    [instance] = live(instances_of(cloud, "alice", "doomed"))
    assert instance["State"]["Name"] in ("stopping", "stopped")
    assert parameters_of(cloud, "alice", "doomed") == {}


@pytest.mark.parametrize(
    "options, says",
    [
        ({"community": "ad-portal", "instance_type": "m5.huge"}, "instance type"),
        ({"community": "ad-portal", "disk_gb": 100000}, "disk"),
        ({"community": "nf-osc"}, "community"),  # alice is not in nf-osc
        ({"community": "ad-portal", "image": ["jupyter"]}, "image"),
        ({"community": "ad-portal", "image": "x" * 5000}, "image"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_launched(hub, cloud, users, options, says):
    before = len(instances_of(cloud, "alice", "refused"))
    message = spawn_error(hub, "alice", options, name="refused")
    assert says in message.lower(), message
    assert "x" * 200 not in message
    assert len(instances_of(cloud, "alice", "refused")) == before


def test_image_switch_on_a_stopped_server_keeps_the_volume(hub, cloud, users):
    rstudio = {"community": "nf-osc", "image": "rstudio"}
    first = start_server(hub, "bob", {"community": "nf-osc", "image": "jupyter"}, name="switch")
    note = {"type": "file", "format": "text", "content": "from jupyter"}
    contents(hub, "bob", "note.txt", method="PUT", body=note, server="switch")
    stop_server(hub, "bob", "switch")
    second = start_server(hub, "bob", rstudio, name="switch")
    assert second["state"]["instance_id"] == first["state"]["instance_id"]
    [instance] = live(instances_of(cloud, "bob", "switch"))
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}["jupyterhub:image"] == "rstudio"
    assert json.loads(parameters_of(cloud, "bob", "switch")["config"])["image_kind"] == "rstudio"
    page = requests.get(
        f"{hub.url}/user/bob/switch/rstudio",
        timeout=30,
        headers={"Authorization": f"token {SERVICE_TOKEN}"},
    )
    assert page.status_code == 200 and "RStudio" in page.text
    assert contents(hub, "bob", "note.txt", server="switch").json()["content"] == "from jupyter"
    stop_server(hub, "bob", "switch")


@pytest.mark.parametrize(
    "code, user_says, admin_log",
    [
        ("UnauthorizedOperation", "not allowed to start this server", "check the hub's IAM role"),
        ("InvalidAMIID.NotFound", "misconfigured", "check the community's ami"),
    ],
)
def test_aws_refusals_tell_the_user_and_name_the_call_for_the_admin(
    hub, cloud, users, code, user_says, admin_log
):
    front_control(
        cloud,
        "POST",
        "/faults",
        {
            "service": "ec2",
            "action": "RunInstances",
            "code": code,
            "count": None,
        },
    )
    message = spawn_error(hub, "alice", JUPYTER, name=f"refused-{code.split('.')[0].lower()}")
    assert user_says in message, message
    log = hub.log()
    assert f"run_instances failed for community 'ad-portal': {code}" in log
    assert admin_log in log


def test_progress_events_are_json_monotone_and_readable(hub, cloud, users):
    # a slow boot, so the request returns while the spawn is pending (slow_spawn_timeout 10 s)
    front_control(cloud, "PUT", "/simulator", {"bootDelay": 12})
    try:
        r = hub.api("POST", "/users/bob/servers/progress", json={"community": "ad-portal"})
    finally:
        front_control(cloud, "PUT", "/simulator", {"bootDelay": 2})
    assert r.status_code == 202
    events = []
    stream = hub.api("GET", "/users/bob/servers/progress/progress", stream=True)
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            events.append(json.loads(line[5:]))
            if events[-1].get("ready") or events[-1].get("failed"):
                break
    assert events[-1].get("ready"), events
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    messages = [e["message"] for e in events]
    assert any(m.startswith("Requesting a t3.large in us-east-1") for m in messages), messages
    assert any("booting" in m for m in messages), messages
    assert any("Starting Jupyter" in m for m in messages), messages
    stop_server(hub, "bob", "progress")


def test_audit_lines_and_metrics_follow_the_lifecycle(hub, cloud, users):
    """One JSON line per lifecycle event, naming who acted; Prometheus metrics on /metrics."""
    start_server(hub, "bob", {"community": "ad-portal"}, name="audited")
    stop_server(hub, "bob", "audited")
    start_server(hub, "bob", {"community": "ad-portal"}, name="audited")
    stop_server(hub, "bob", "audited")
    lines = [
        json.loads(line) for line in (hub.log_path.parent / "audit.log").read_text().splitlines()
    ]
    mine = [(r["action"], r["actor"]) for r in lines if r.get("server") == "audited"]
    assert [a for a, _ in mine] == ["start", "launch", "stop", "start", "resume", "stop"], mine
    assert {actor for _, actor in mine} == {"service"}  # the test acts with a service token
    metrics = requests.get(
        f"{hub.url}/hub/metrics", headers={"Authorization": f"token {SERVICE_TOKEN}"}, timeout=30
    ).text
    for name in (
        "snh_spawn_duration_seconds_bucket",
        "snh_instances",
        "snh_aws_api_calls_total",
        "snh_tunnel_reconnects_total",
    ):
        assert name in metrics, name


def test_an_instance_still_running_at_a_start_is_restarted_with_its_settings(hub, cloud, users):
    """JupyterHub marks a server stopped even when ``Spawner.stop`` fails (user.py's
    ``finally``), and gives the next start a new API token: the instance, still running, serves
    a notebook holding the old one. The next start restarts the instance (stop, start: the
    bootstrap reads the server's parameters at every boot) instead of adopting it as it is,
    and the notebook then answers through the proxy with this start's token."""
    first = start_server(hub, "bob", {"community": "ad-portal"}, name="stale")
    instance_id = first["state"]["instance_id"]
    booted = {
        i["instanceId"]: i["boots"] for i in front_control(cloud, "GET", "/instances")["instances"]
    }[instance_id]
    front_control(
        cloud,
        "POST",
        "/faults",
        {"service": "ec2", "action": "StopInstances", "code": "UnauthorizedOperation", "count": 1},
    )
    hub.api("DELETE", "/users/bob/servers/stale")
    wait_until(
        lambda: (
            not (server_model(hub, "bob", "stale") or {}).get("ready")
            and not (server_model(hub, "bob", "stale") or {}).get("pending")
        ),
        30,
        "the hub to show the server stopped",
    )
    [instance] = live(instances_of(cloud, "bob", "stale"))
    assert instance["State"]["Name"] == "running"  # the failed stop left it running

    again = start_server(hub, "bob", {"community": "ad-portal"}, name="stale", timeout=180)
    assert again["state"]["instance_id"] == instance_id  # the same instance and home volume
    assert contents(hub, "bob", "", server="stale").status_code == 200
    boots = {
        i["instanceId"]: i["boots"] for i in front_control(cloud, "GET", "/instances")["instances"]
    }[instance_id]
    assert boots == booted + 1
    lines = [
        json.loads(line) for line in (hub.log_path.parent / "audit.log").read_text().splitlines()
    ]
    restarts = [r for r in lines if r.get("server") == "stale" and r["action"] == "stop"]
    assert restarts and restarts[-1]["reason"].startswith("found running at a start")
    stop_server(hub, "bob", "stale")
