"""Prometheus metrics on the default registry (the one JupyterHub serves at /hub/metrics)."""

from __future__ import annotations

import asyncio

import pytest
from moto import mock_aws
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tornado.web import HTTPError

from operations import audit, metrics
from operations.audit import Actor
from spawner.aws import Aws, AwsError
from spawner.poller import InstanceView
from spawner.region import Regions
from spawner.ssm.metrics import TunnelMetrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def view(instance_id, state="running", community="ad-portal", instance_type="t3.large"):
    return InstanceView(
        instance_id=instance_id,
        state=state,
        instance_type=instance_type,
        tags={"jupyterhub:hub": "h", "jupyterhub:community": community},
    )


def test_every_metric_is_exported_with_the_snh_prefix():
    text = generate_latest(REGISTRY).decode()
    names = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("snh_")}
    assert {
        "snh_spawn_duration_seconds",
        "snh_instances",
        "snh_culls",
        "snh_lifecycle_events",
        "snh_tunnel_reconnects",
        "snh_tunnels_open",
        "snh_aws_api_calls",
        "snh_aws_api_errors",
    } <= names


def test_spawn_duration_by_community_and_outcome():
    before = value("snh_spawn_duration_seconds_count", community="c-spawn", outcome="success")
    metrics.observe_spawn("c-spawn", "success", 42.0)
    metrics.observe_spawn("c-spawn", "failure", 3.0)
    assert (
        value("snh_spawn_duration_seconds_count", community="c-spawn", outcome="success")
        == before + 1
    )
    assert (
        value(
            "snh_spawn_duration_seconds_bucket", community="c-spawn", outcome="success", le="45.0"
        )
        >= 1
    )
    assert value("snh_spawn_duration_seconds_sum", community="c-spawn", outcome="failure") >= 3


@pytest.mark.parametrize(
    "error, outcome",
    [
        (None, "success"),
        (HTTPError(400, "bad options"), "refused"),
        (HTTPError(500, "AWS failed"), "failure"),
        (asyncio.CancelledError(), "cancelled"),
        (RuntimeError("boom"), "failure"),
    ],
)
def test_spawn_outcome(error, outcome):
    assert metrics.spawn_outcome(error) == outcome


def test_instances_follow_the_pollers_last_view():
    metrics.update_from_poller(
        [view("i-1"), view("i-2"), view("i-3", "stopped"), view("i-4", community="nf-osc",
                                                                 instance_type="m5.large")],
        region="test-region-1",
    )  # fmt: skip
    assert value("snh_instances", community="ad-portal", instance_type="t3.large",
                 state="running") == 2  # fmt: skip
    assert value("snh_instances", community="nf-osc", instance_type="m5.large",
                 state="running") == 1  # fmt: skip
    # the next describe replaces the view (no accumulation); another region adds to it
    metrics.update_from_poller([view("i-1")], region="test-region-1")
    metrics.update_from_poller([view("i-9")], region="test-region-2")
    assert value("snh_instances", community="ad-portal", instance_type="t3.large",
                 state="running") == 2  # fmt: skip
    assert value("snh_instances", community="ad-portal", instance_type="t3.large",
                 state="stopped") == 0  # fmt: skip
    assert value("snh_instances_updated_timestamp_seconds", region="test-region-2") > 0
    metrics.update_from_poller([], region="test-region-1")
    metrics.update_from_poller([], region="test-region-2")


def test_culls_and_lifecycle_events_are_counted_from_audit_lines():
    log = audit.AuditLog(None, logger=None)
    log.listeners.append(metrics._count_audit_record)
    culls = value("snh_culls_total", community="c-cull")
    stops_by_users = value("snh_lifecycle_events_total", action="stop", actor="user")
    log.record("stop", Actor("culler", "idle-culler"), community="c-cull")
    log.record("stop", Actor("user", "alice"), community="c-cull")
    log.record("stop", Actor("culler", "idle-culler"), community="c-cull", outcome="failed")
    assert value("snh_culls_total", community="c-cull") == culls + 1
    assert value("snh_lifecycle_events_total", action="stop", actor="user") == stops_by_users + 1


def test_the_process_audit_log_feeds_the_metrics():
    assert metrics._count_audit_record in audit.LISTENERS
    before = value("snh_culls_total", community="c-process")
    audit.record("stop", Actor("culler", "idle-culler"), community="c-process")
    assert value("snh_culls_total", community="c-process") == before + 1


def test_tunnel_counters_survive_closed_tunnels_and_never_go_down():
    base = value("snh_tunnel_reconnects_total")
    open_before = value("snh_tunnels_open")
    a, b = TunnelMetrics(reconnects=2, streams_open=3), TunnelMetrics(reconnects=1)
    metrics.track_tunnel(a)
    metrics.track_tunnel(b)
    assert value("snh_tunnel_reconnects_total") == base + 3
    assert value("snh_tunnels_open") == open_before + 2
    assert value("snh_tunnel_streams_open") >= 3
    a.reconnects += 1  # counted live: no call needed on the data path
    assert value("snh_tunnel_reconnects_total") == base + 4
    metrics.untrack_tunnel(a)
    metrics.untrack_tunnel(a)  # idempotent
    assert value("snh_tunnel_reconnects_total") == base + 4
    assert value("snh_tunnels_open") == open_before + 1
    metrics.untrack_tunnel(b)


@pytest.fixture
def moto_aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


async def test_aws_calls_and_errors_are_read_from_the_clients_at_scrape_time(moto_aws):
    aws = Aws("ap-southeast-2")
    labels = {"region": "ap-southeast-2", "service": "ec2", "operation": "describe_instances"}
    calls = value("snh_aws_api_calls_total", **labels)
    errors = value("snh_aws_api_errors_total", code="InvalidInstanceID.NotFound", **labels)
    metrics.track_aws(aws)
    await aws.call("ec2", "describe_instances")
    await aws.call("ec2", "describe_instances")
    with pytest.raises(AwsError):
        await aws.call("ec2", "describe_instances", InstanceIds=["i-0123456789abcdef0"])
    assert value("snh_aws_api_calls_total", **labels) == calls + 3
    assert value("snh_aws_api_calls_total", **labels) == calls + 3  # scraped again: still 3
    assert (
        value("snh_aws_api_errors_total", code="InvalidInstanceID.NotFound", **labels) == errors + 1
    )


def test_the_hubs_region_clients_are_exported_as_they_are_made():
    regions = Regions("http://127.0.0.1:9")
    aws = regions["eu-test-9"].aws
    aws.calls[("ssm", "get_parameter")] += 5
    assert (
        value(
            "snh_aws_api_calls_total",
            region="eu-test-9",
            service="ssm",
            operation="get_parameter",
        )
        == 5
    )
