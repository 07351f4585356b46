"""The Synapse token inside a running server outlives one access token (24 h): the hub
refreshes it and rewrites the server's parameter, which synapseclient reads at login."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .harness import hub_env, hub_test_config, sign_in, start_hub
from .spawn_harness import moto, start_server, stop_server

pytestmark = pytest.mark.integration

LOGIN = """
import synapseclient
syn = synapseclient.Synapse(configPath=CONFIG, skip_checks=True)
syn.login(silent=True)
print(syn.credentials.username)
"""


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    """A hub whose servers' tokens are always "near expiry", polled every second."""
    state = tmp_path_factory.mktemp("hub-refresh")
    extra = "c.EC2Spawner.token_refresh_margin = 25 * 3600\nc.Spawner.poll_interval = 1\n"
    env = hub_env(cloud, state, SNH_EXTRA_CONFIG=str(hub_test_config(state, extra=extra)))
    hub = start_hub(env, state / "hub.log")
    yield hub
    hub.stop()


def token_parameter(cloud, user: str) -> str:
    name = f"/synapse-notebook-hub/synapse-notebook-hub/{user}/_/synapse-token"
    return moto(cloud, "ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def synapse_login_as_the_notebook_does(cloud, model: dict, config: Path) -> str:
    """synapseclient in a fresh process with the container's environment: the parameter's
    name, the AWS endpoint and credentials (the instance role's, on AWS), no token."""
    aws = cloud.endpoints["aws"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(config.parent),
        "SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME": (
            "/synapse-notebook-hub/synapse-notebook-hub/alice/_/synapse-token"
        ),
        "AWS_ENDPOINT_URL": aws["endpoint_url"],
        "AWS_ACCESS_KEY_ID": aws["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": aws["secret_access_key"],
        "AWS_DEFAULT_REGION": aws["region"],
    }
    answer = subprocess.run(
        [sys.executable, "-c", LOGIN.replace("CONFIG", repr(str(config)))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    return answer.stdout.strip().splitlines()[-1]


def test_token_parameter_is_rewritten_past_the_life_of_one_token(hub, cloud):
    sign_in(hub, "alice")
    model = start_server(hub, "alice")
    first = token_parameter(cloud, "alice")
    volume = Path(cloud.endpoints["aws"]["volumes_dir"]) / model["state"]["volume_id"]
    config = volume / ".synapseConfig"
    assert synapse_login_as_the_notebook_does(cloud, model, config) == "alice"

    # Synapse's clock jumps 25 h: every token issued so far has expired there. The hub keeps
    # rotating meanwhile (its margin makes every token "near expiry"), so a rotation can be
    # in flight across the jump, and its token, valid when userinfo accepted it, expires
    # right after. The hub repairs that at its next poll (a 401 rotates at once); the test
    # waits for the repair instead of racing the jump.
    cloud.advance_clock(25 * 3600)
    deadline = time.monotonic() + 90
    while True:
        rewritten = token_parameter(cloud, "alice")
        if rewritten != first and synapse_accepts(cloud, rewritten):
            break
        assert time.monotonic() < deadline, "the parameter never got a token Synapse accepts"
        time.sleep(0.5)
    assert synapse_login_as_the_notebook_does(cloud, model, config) == "alice"
    stop_server(hub, "alice")


def synapse_accepts(cloud, token: str) -> bool:
    """Whether Synapse (the stand-in) takes the token now (userinfo answers 200)."""
    answer = requests.get(
        f"{cloud.synapse['issuer']}/oauth2/userinfo",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return answer.status_code == 200
