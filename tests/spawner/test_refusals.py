"""Refusals are not errors (JupyterHub 6's convention, kept on 5.2), and new server names
follow JupyterHub 6's rule on every JupyterHub."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado import web

from operations import metrics
from spawner.ec2spawner import NoCapacity, StartFailed, StartRefused
from spawner.naming import SERVER_NAME_MAX, is_valid_server_name

try:
    from jupyterhub.slugs import is_valid_safe_slug
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.2 has neither
    is_valid_safe_slug = SpawnException = None


def test_server_names_at_and_over_the_limits():
    assert is_valid_server_name("")  # the default server
    assert is_valid_server_name("a" * SERVER_NAME_MAX)
    assert not is_valid_server_name("a" * (SERVER_NAME_MAX + 1))
    for good in ("analysis", "gpu-2", "r4", "a-b-c"):
        assert is_valid_server_name(good), good
    for bad in ("2nd", "-x", "x-", "a--b", "My server", "UPPER", "é", "a_b", "a.b", " a"):
        assert not is_valid_server_name(bad), bad


@pytest.mark.skipif(is_valid_safe_slug is None, reason="JupyterHub 5.2 has no slugs module")
@given(st.text(alphabet="abcxyz019-_A .é", max_size=40))
def test_the_rule_is_jupyterhub_6s_own(name):
    """Written from JupyterHub 6's rule; checked against its own function."""
    if name:
        assert is_valid_server_name(name) == is_valid_safe_slug(name)


def test_a_refusal_is_a_4xx_with_a_reason_and_counted_as_refused():
    refusal = StartRefused("Your budget is spent.", 403, reason="budget")
    assert isinstance(refusal, StartFailed) and isinstance(refusal, web.HTTPError)
    assert refusal.status_code == 403 and refusal.reason == "budget"
    assert str(refusal) == "Your budget is spent."
    if SpawnException is not None:  # JupyterHub 6 counts it as a failure, not an error
        assert isinstance(refusal, SpawnException)
    assert metrics.spawn_outcome(refusal) == "refused"
    capacity = NoCapacity("No t3.large in us-east-1a; try m5.large.")
    assert capacity.status_code == 503 and capacity.reason == "capacity"
    assert metrics.spawn_outcome(capacity) == "refused"  # 503, but AWS's answer, not a fault


def test_an_error_stays_an_error():
    error = StartFailed("AWS failed while launching (InternalError). Please try again.")
    assert error.status_code == 500 and not getattr(error, "refused", False)
    if SpawnException is not None:
        assert not isinstance(error, SpawnException)
    assert metrics.spawn_outcome(error) == "failure"
