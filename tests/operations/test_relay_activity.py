"""When relay traffic keeps a server from being culled (``operations.relay.ActivityMeter``):
the rule the relay applies to each connection, checked on the traffic shapes it is for."""

from __future__ import annotations

from operations.relay import ActivityMeter


def marks(meter: ActivityMeter, events: list[tuple[float, int, int]]) -> list[float]:
    """The times at which ``events`` (time, bytes sent, bytes received) mark activity."""
    return [t for t, sent, received in events if meter.feed(t, sent=sent, received=received)]


def test_an_idle_ssh_session_with_keepalives_is_not_activity():
    """ServerAliveInterval 30: about 100 bytes each way every 30 s, for a day."""
    events = [(t * 30.0, 100, 100) for t in range(2 * 60 * 24)]
    assert marks(ActivityMeter(), events) == []


def test_typing_is_activity_once_a_minute():
    """Someone typing: a packet of 48 bytes every half second, echoed back."""
    events = [(t * 0.5, 48, 48) for t in range(240)]  # two minutes
    assert marks(ActivityMeter(), events) == [10.5, 70.5]


def test_a_download_is_activity_an_upload_too():
    download = [(float(t), 40, 32 * 1024) for t in range(10)]
    assert marks(ActivityMeter(), download) == [1.0]
    upload = [(float(t), 32 * 1024, 40) for t in range(10)]
    assert marks(ActivityMeter(), upload) == [0.0]


def test_a_quiet_terminal_below_the_thresholds_is_not_activity():
    """``tail -f`` of a log that grows a line a minute; nothing typed."""
    events = [(t * 60.0 + 1, 0, 120) for t in range(120)]
    assert marks(ActivityMeter(), events) == []
