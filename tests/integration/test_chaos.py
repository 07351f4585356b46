"""The two-minute chaos run of ``make test`` (``make chaos`` is the ten-minute one with 30
analysts): 4 analysts work through every kind of fault — the hub SIGKILLed three times, AWS
throttling bursts, no capacity in one subnet, Session Manager websockets cut, an agent
restart, a Synapse outage, an instance rebooted and one stopped behind the hub's back — and
afterwards no acknowledged file is lost, no instance is orphaned, no server is stuck pending
and every analyst has their server. The seed is fixed so that a failure replays
(``python -m chaos --users 4 --minutes 2 --outage 30 --seed 20261207``)."""

from __future__ import annotations

import pytest

from chaos.run import NOT_APPLIED, report, run

pytestmark = pytest.mark.integration

SEED = 20261207


def test_nothing_is_lost_through_two_minutes_of_faults(tmp_path):
    outcome = run(users=4, duration=120, seed=SEED, outage=30, workdir=tmp_path)
    assert report(outcome), "the chaos run broke a promise: see its report above"
    assert outcome.files_written > 0
    assert all(a.record.steps > 0 for a in outcome.analysts)
    skipped = [line for line in outcome.fault_log if NOT_APPLIED in line]
    assert not skipped and len(outcome.fault_log) == len(outcome.faults), outcome.fault_log
