"""The relay's laptop side (``operations.client``) without a hub: where the login is kept
and with what mode, what ``snh ssh-config`` prints, and the relay's URL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hub_config.settings import OperatorSettings
from operations.cli import main
from operations.client import Login, RelayError, load_login, relay_url, save_login, ssh_config


def settings(tmp_path: Path, **env: str) -> OperatorSettings:
    return OperatorSettings.from_environ({"XDG_CONFIG_HOME": str(tmp_path / "config"), **env})


def test_the_login_is_readable_by_its_owner_alone(tmp_path):
    config = settings(tmp_path)
    path = save_login(config, Login("https://hub.example.org", "secret-token", "alice"))
    assert path == tmp_path / "config" / "snh" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_login(config) == Login("https://hub.example.org", "secret-token", "alice")


def test_without_a_login_the_command_says_how_to_log_in(tmp_path, capsys):
    with pytest.raises(RelayError, match="snh login --hub"):
        load_login(settings(tmp_path))
    assert main(["ssh-config"], settings=settings(tmp_path)) == 1
    assert "not logged in: run `snh login" in capsys.readouterr().err


def test_ssh_config_names_the_server_and_uses_the_proxy_command(tmp_path, capsys):
    config = settings(tmp_path)
    save_login(config, Login("https://hub.example.org", "t", "alice"))
    assert main(["ssh-config", "--server", "gpu"], settings=config) == 0
    block = capsys.readouterr().out
    assert block.splitlines()[0] == "Host snh-alice-gpu"
    assert "    ProxyCommand snh ssh-proxy --server gpu --port 22" in block
    assert "secret" not in block and "t\n" not in block  # never the token
    assert ssh_config(Login("h", "t", "bob"), "bob", "").startswith("Host snh-bob\n")


def test_the_relay_url_is_the_hubs_api_over_websocket():
    login = Login("https://hub.example.org", "t", "alice")
    assert relay_url(login, "alice", "", 22) == (
        "wss://hub.example.org/hub/api/users/alice/relay/22"
    )
    assert relay_url(Login("http://127.0.0.1:8000", "t"), "a b", "gpu", 8080) == (
        "ws://127.0.0.1:8000/hub/api/users/a%20b/servers/gpu/relay/8080"
    )
