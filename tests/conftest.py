"""Fixtures shared by the integration and browser tests: the local cloud and a real hub."""

from __future__ import annotations

import pytest

from tests.integration.harness import (
    free_port,
    hub_env,
    hub_test_config,
    start_hub,
    start_localcloud,
)
from tests.smtp_inbox import smtp_inbox

#: Modules that start hubs, clouds and instances: collected first, so that with two workers
#: taking whole modules (``make test``) the long ones start early and the quick unit modules
#: fill the end, instead of one long module running alone at the end.
HEAVY_FIRST = ("tests/integration/", "tests/browser/", "tests/security/", "tests/localcloud/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.nodeid.startswith(HEAVY_FIRST) else 1)  # stable


@pytest.fixture(scope="session")
def hub_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def cloud(tmp_path_factory, hub_url):
    cloud = start_localcloud(tmp_path_factory.mktemp("localcloud"), hub_url)
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    """One hub per test module, on the session's public URL (the registered redirect URI)."""
    state = tmp_path_factory.mktemp("hub")
    env = hub_env(cloud, state, SNH_EXTRA_CONFIG=str(hub_test_config(state)))
    hub = start_hub(env, state / "hub.log")
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def inbox():
    """A real SMTP server on loopback for the module's hub (``SNH_SMTP_PORT=inbox.port``)."""
    with smtp_inbox() as (inbox, port):
        inbox.port = port
        yield inbox


@pytest.fixture(autouse=True)
def _no_faults_left(request):
    """Faults injected into the Synapse stand-in and the AWS front end with the test that
    injected them (a rule with fires left must not answer the next test's calls)."""
    yield
    if "cloud" in request.fixturenames:
        cloud = request.getfixturevalue("cloud")
        cloud.clear_faults()
        cloud.clear_aws_faults()
