"""Prometheus metrics of the hub's servers, on prometheus_client's default registry.

JupyterHub serves that registry at ``/hub/metrics`` (behind ``read:metrics`` unless
``JupyterHub.authenticate_prometheus`` is False), so importing this module is all it takes to
publish these next to JupyterHub's own ``jupyterhub_*`` metrics. Every name starts with
``snh_``:

- ``snh_spawn_duration_seconds`` (histogram; community, outcome): `observe_spawn`;
- ``snh_instances`` (gauge; community, instance_type, state) and
  ``snh_instances_updated_timestamp_seconds`` (gauge; region): `update_from_poller`;
- ``snh_culls_total`` (community) and ``snh_lifecycle_events_total`` (action, actor): counted
  from the audit lines;
- ``snh_tunnel_*_total`` (counters), ``snh_tunnels_open``, ``snh_tunnel_streams_open``
  (gauges): `track_tunnel` / `untrack_tunnel`;
- ``snh_aws_api_calls_total`` (region, service, operation) and ``snh_aws_api_errors_total``
  (region, service, operation, code): ``Aws.calls`` / ``Aws.errors``.

Three are read at scrape time by custom collectors, so nothing is counted twice and nothing
has to be copied on the hot path: the AWS counters come straight from every `Aws` object's
``calls``/``errors`` (each passed to `track_aws`, as `spawner.region.Regions` does); tunnel
figures are the sum of the live tunnels' `TunnelMetrics` plus what closed tunnels had
counted (so the ``_total`` counters never go down when a server stops); the instance gauge is
the last view each region's poller handed to `update_from_poller` (replaced whole, so a
scrape never sees a half-updated set).

Culls are counted from the audit trail: every ``stop`` line whose actor is ``culler`` (see
`operations.audit`), and every audit line counts in ``snh_lifecycle_events_total``: the spawner
does not need a second call for its metrics.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spawner.aws import Aws
from spawner.naming import TAG_COMMUNITY
from spawner.ssm.metrics import TunnelMetrics

from . import audit

#: EC2 starts take from ~30 s (resume) to many minutes (cold launch, image pull).
SPAWN_BUCKETS = (10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, float("inf"))

#: Values of the ``outcome`` label of `SPAWN_DURATION`.
OUTCOMES = ("success", "failure", "refused", "cancelled")

SPAWN_DURATION = Histogram(
    "snh_spawn_duration_seconds",
    "Time EC2Spawner.start took, by community and outcome (success; failure; refused: bad "
    "options or a limit, before any AWS call; cancelled)",
    ["community", "outcome"],
    buckets=SPAWN_BUCKETS,
)

CULLS = PromCounter(
    "snh_culls",
    "Servers stopped by the idle culler, by community",
    ["community"],
)

LIFECYCLE_EVENTS = PromCounter(
    "snh_lifecycle_events",
    "Audit-log events (start, launch, resume, stop, terminate, snapshot, …) by actor",
    ["action", "actor"],
)


def observe_spawn(community: str | None, outcome: str, seconds: float) -> None:
    """One finished ``start()``: how long it took and how it ended (one of `OUTCOMES`)."""
    SPAWN_DURATION.labels(community=community or "unknown", outcome=outcome).observe(
        max(0.0, seconds)
    )


def spawn_outcome(error: BaseException | None) -> str:
    """The `OUTCOMES` value for a ``start()`` that raised ``error`` (None: success).

    A refusal (``spawner.ec2spawner.StartRefused``: bad options, a limit, a budget, no
    capacity) and any other 4xx HTTP error are ``refused``; cancellation is ``cancelled``;
    anything else is ``failure``.
    """
    if error is None:
        return "success"
    if getattr(error, "refused", False):
        return "refused"
    import asyncio

    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return "refused"
    return "failure"


def _count_audit_record(record: dict[str, Any]) -> None:
    action = str(record.get("action", ""))
    actor = str(record.get("actor", ""))
    LIFECYCLE_EVENTS.labels(action=action, actor=actor).inc()
    if action == "stop" and actor == "culler" and record.get("outcome", "ok") != "failed":
        CULLS.labels(community=str(record.get("community") or "unknown")).inc()


# ------------------------------------------------------------------------------------------
# Collectors read at scrape time
# ------------------------------------------------------------------------------------------


def _items(counter: Counter[Any]) -> list[tuple[Any, int]]:
    """A copy of a Counter another thread may be adding to."""
    for _ in range(5):
        try:
            return list(counter.items())
        except RuntimeError:  # changed size during iteration
            continue
    return []


class AwsCollector(Collector):
    """``snh_aws_api_calls_total`` and ``snh_aws_api_errors_total`` from `Aws` objects."""

    def __init__(self) -> None:
        self._tracked: weakref.WeakSet[Aws] = weakref.WeakSet()

    def track(self, aws: Aws) -> None:
        self._tracked.add(aws)

    def _clients(self) -> list[Aws]:
        return list(self._tracked)

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "snh_aws_api_calls",
            "AWS API calls made by the hub (each call once, however many retries botocore made)",
            labels=["region", "service", "operation"],
        )
        errors = CounterMetricFamily(
            "snh_aws_api_errors",
            "AWS API calls that failed after botocore's retries, by AWS error code",
            labels=["region", "service", "operation", "code"],
        )
        call_sums: Counter[tuple[str, ...]] = Counter()
        error_sums: Counter[tuple[str, ...]] = Counter()
        for aws in self._clients():
            for (service, operation), n in _items(aws.calls):
                call_sums[(aws.region, service, operation)] += n
            for (service, operation, code), n in _items(aws.errors):
                error_sums[(aws.region, service, operation, code)] += n
        for labels, n in sorted(call_sums.items()):
            calls.add_metric(list(labels), n)
        for labels, n in sorted(error_sums.items()):
            errors.add_metric(list(labels), n)
        yield calls
        yield errors


#: TunnelMetrics fields exported as counters (``snh_tunnel_<field>_total``).
_TUNNEL_COUNTERS = {
    "sessions_opened": "Session Manager sessions opened (handshake completed) by the hub's tunnels",
    "reconnects": "Sessions reopened by the tunnels' supervisors after one ended",
    "resumes": "Lost websockets whose session was resumed (ResumeSession), connections kept",
    "resume_failures": "Resumes refused or timed out (the session was replaced by a new one)",
    "resume_seconds_total": "Seconds spent resuming sessions, summed over the resumes",
    "session_failures": "Failed attempts to open a session (StartSession, websocket, handshake)",
    "bytes_to_remote": "Payload bytes sent through the tunnels towards the instances",
    "bytes_from_remote": "Payload bytes received through the tunnels from the instances",
    "connections_accepted": "Local connections accepted by the tunnels",
    "connections_reset": "Local connections reset by the tunnels",
}


class TunnelCollector(Collector):
    """Sums of the open tunnels' `TunnelMetrics`, plus what closed tunnels had counted."""

    def __init__(self) -> None:
        self._live: dict[int, TunnelMetrics] = {}
        self._retired: Counter[str] = Counter()

    def track(self, metrics: TunnelMetrics) -> None:
        self._live[id(metrics)] = metrics

    def retire(self, metrics: TunnelMetrics) -> None:
        """The tunnel closed: keep its counts in the totals. Idempotent."""
        if self._live.pop(id(metrics), None) is not None:
            for field in _TUNNEL_COUNTERS:
                self._retired[field] += getattr(metrics, field)

    def collect(self) -> Iterator[Metric]:
        live = list(self._live.values())
        for field, help_text in _TUNNEL_COUNTERS.items():
            family = CounterMetricFamily(f"snh_tunnel_{field}", help_text)
            family.add_metric([], self._retired[field] + sum(getattr(m, field) for m in live))
            yield family
        yield GaugeMetricFamily("snh_tunnels_open", "Tunnels currently open", value=len(live))
        yield GaugeMetricFamily(
            "snh_tunnel_streams_open",
            "Connections currently open through the tunnels",
            value=sum(m.streams_open for m in live),
        )
        yield GaugeMetricFamily(
            "snh_tunnel_sessions_open",
            "Session Manager sessions currently up under the tunnels",
            value=sum(m.sessions_open for m in live),
        )


class InstanceCollector(Collector):
    """``snh_instances`` from the last view of each region's poller."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[tuple[str, str, str]]] = {}
        self._updated: dict[str, float] = {}

    def update(self, views: Iterable[Any], region: str) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        for view in views:
            community = view.tags.get(TAG_COMMUNITY) or "unknown"
            counts[(community, view.instance_type or "unknown", view.state)] += 1
        self._counts[region] = counts  # replaced whole: a scrape sees the old or the new
        self._updated[region] = time.time()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "snh_instances",
            "The hub's EC2 instances by community, instance type and state, as the shared "
            'poller last saw them (state="running" for running instances)',
            labels=["community", "instance_type", "state"],
        )
        total: Counter[tuple[str, str, str]] = Counter()
        for counts in list(self._counts.values()):
            total.update(counts)
        for labels, n in sorted(total.items()):
            family.add_metric(list(labels), n)
        yield family
        updated = GaugeMetricFamily(
            "snh_instances_updated_timestamp_seconds",
            "When the poller of each region last described the instances (Unix time)",
            labels=["region"],
        )
        for region, when in sorted(self._updated.items()):
            updated.add_metric([region], when)
        yield updated


AWS_COLLECTOR = AwsCollector()
TUNNEL_COLLECTOR = TunnelCollector()
INSTANCE_COLLECTOR = InstanceCollector()


def register(registry: CollectorRegistry = REGISTRY) -> None:
    """Register the scrape-time collectors and count audit lines (done once at import)."""
    for collector in (AWS_COLLECTOR, TUNNEL_COLLECTOR, INSTANCE_COLLECTOR):
        try:
            registry.register(collector)
        except ValueError:  # already registered (e.g. a module reload)
            pass
    if _count_audit_record not in audit.LISTENERS:
        audit.LISTENERS.append(_count_audit_record)


def update_from_poller(views: Iterable[Any], *, region: str = "") -> None:
    """The poller's latest view of ``region`` (every `InstanceView` a describe returned, any
    state): call after each successful ``InstancePoller.refresh``."""
    INSTANCE_COLLECTOR.update(views, region)


def track_tunnel(metrics: TunnelMetrics) -> None:
    """A tunnel opened: its `TunnelMetrics` count in the ``snh_tunnel_*`` figures."""
    TUNNEL_COLLECTOR.track(metrics)


def untrack_tunnel(metrics: TunnelMetrics) -> None:
    """A tunnel closed: its counts stay in the totals; it leaves the gauges."""
    TUNNEL_COLLECTOR.retire(metrics)


def track_aws(aws: Aws) -> None:
    """Export an `Aws` object's call counts (`spawner.region.Regions` does it for each
    client it makes; held weakly, so a discarded client leaves the totals)."""
    AWS_COLLECTOR.track(aws)


register()
