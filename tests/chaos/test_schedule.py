"""The chaos run's fault schedule: replayable from its seed, every fault the issue names,
hub kills far enough apart for each restart, and the last quarter left for recovery."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.schedule import COUNTS, HUB_KILL_GAP, schedule


def test_a_seed_replays_the_same_schedule():
    assert schedule(7, 600, outage=120) == schedule(7, 600, outage=120)
    assert schedule(7, 600, outage=120) != schedule(8, 600, outage=120)


@given(seed=st.integers(0, 10**6), duration=st.floats(120, 1200))
def test_every_fault_once_per_count_in_the_window_hub_kills_apart(seed, duration):
    faults = schedule(seed, duration, outage=min(120, duration / 4))
    kinds = [f.kind for f in faults]
    assert {k: kinds.count(k) for k in COUNTS} == COUNTS
    assert all(0.1 * duration <= f.at <= 0.75 * duration for f in faults)
    kills = [f.at for f in faults if f.kind == "hub_kill"]
    assert all(b - a >= HUB_KILL_GAP - 0.1 for a, b in itertools.pairwise(kills))
    [outage] = [f for f in faults if f.kind == "synapse_outage"]
    assert outage.at + outage.seconds <= 0.75 * duration + 0.1
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_a_run_too_short_for_its_hub_kills_is_refused():
    with pytest.raises(ValueError, match="at least 100 s"):
        schedule(1, 60, outage=10)
