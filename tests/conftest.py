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

#: The longest modules, longest first (module times of one ``make test`` run on 2 cores): with
#: two workers taking whole modules, a long module that starts last runs alone at the end.
#: Starting the longest first (and pytest-xdist's reordering by test count off:
#: ``--no-loadscope-reorder`` in ``addopts``, since a one-test module of three minutes would
#: otherwise come last) lets the short modules fill in around them.
LONGEST_FIRST = (
    "tests/localcloud/test_machines.py",  # about 230 s with the machines' cache cold
    "tests/integration/test_chaos.py",  # 190 s
    "tests/integration/test_restart.py",  # 160 s
    "tests/integration/test_culling.py",  # 155 s
    "tests/integration/test_spawner.py",  # 150 s
    "tests/integration/test_real_boot.py",  # 110 s
    "tests/integration/test_keep_running.py",  # 100 s
    "tests/integration/test_budget.py",  # 80 s
)
#: Then the other modules that start hubs, clouds and instances, then the quick unit modules.
HEAVY = ("tests/integration/", "tests/browser/", "tests/security/", "tests/localcloud/")


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    if path in LONGEST_FIRST:
        return LONGEST_FIRST.index(path)
    return len(LONGEST_FIRST) + (0 if path.startswith(HEAVY) else 1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: a module's tests keep their order


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
