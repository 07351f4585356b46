"""The warning's timing and Keep running's bound (`operations.keep_running`), on their own;
the whole path (home page, button, culler) is ``tests/integration/test_keep_running.py``."""

from __future__ import annotations

import datetime as dt

import pytest
from tornado import web

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.culling import CullRule
from operations.keep_running import KeepRunning, notice

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
HOUR = CullRule(community="ad-portal", timeout_seconds=3600, max_age_seconds=None)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("idle_minutes", "warn_minutes", "warned"),
    [
        (49, 10, False),
        (50, 10, True),
        (59, 10, True),
        (50, 0, False),
        (29, 45, False),
        (30, 45, True),
    ],
)
def test_the_warning_comes_in_the_last_minutes_at_most_half_the_timeout(
    idle_minutes, warn_minutes, warned
) -> None:
    found = notice(T0, HOUR, warn_minutes, at(idle_minutes))
    assert (found is not None) == warned
    if found:
        assert (
            found.stop_at == at(60)
            and "will be stopped at 7 December 2026, 13:00 UTC" in found.text
        )


def keeper(clock: list[dt.datetime]) -> KeepRunning:
    communities = load_communities(DEFAULT_COMMUNITIES_PATH)
    return KeepRunning(communities, [HOUR], clock=lambda: clock[0])


def test_grants_are_bounded_from_the_last_real_use_and_use_starts_the_bound_again() -> None:
    clock = [at(55)]
    keep = keeper(clock)
    _, first = keep.grant("alice", "", T0, limit_hours=2)  # last use at T0
    clock[0] = at(115)
    _, second = keep.grant("alice", "", first, limit_hours=2)  # idle since T0: 1 h 55 min
    clock[0] = at(125)
    with pytest.raises(web.HTTPError) as refused:
        keep.grant("alice", "", second, limit_hours=2)  # 2 h 5 min since the last use
    assert refused.value.status_code == 409 and "12:00 UTC" in refused.value.log_message
    # alice works again at 14:10: the bound runs from there
    clock[0] = at(180)
    keep.grant("alice", "", at(130), limit_hours=2)
    # another server of hers has its own bound; a community with 0 hours has none
    keep.grant("alice", "gpu", at(170), limit_hours=2)
    with pytest.raises(web.HTTPError, match="does not let"):
        keep.grant("bob", "", at(179), limit_hours=0)
