"""The home page's "Connect from your computer" panel: the commands that reach the signed-in
user's servers through the relay (`operations.relay`), filled in for them.

The lines are what a user types on their own computer, in order: install the client, log in
to this hub with an API token that has the relay scope, add the ``~/.ssh/config`` block, and
``ssh`` (or ``snh forward`` for an app port). They are built from the same functions the
client uses (`operations.client.ssh_alias`), so the page and ``snh ssh-config`` cannot
disagree. A template variable (``c.JupyterHub.template_vars``), called with the current user
at every render, as `operations.home_page.HomeNotices` is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from .client import DEFAULT_SSH_USER, ssh_alias
from .relay import SCOPE
from .ssh_keys import PAGE as KEYS_PAGE

#: The template variable the home page reads.
TEMPLATE_VAR = "snh_connect"
PACKAGE = "synapse-notebook-hub"


@dataclass(frozen=True)
class ServerLines:
    server: str  # '' for the default server
    alias: str
    ssh: str
    #: an app port of the server on this computer, through SSH's own forwarding (works with
    #: the default relay ports; ``snh forward`` reaches ports a community opens besides SSH)
    app_port: str


@dataclass(frozen=True)
class ConnectLines:
    """What the panel shows one user."""

    install: str
    login: str
    ssh_config: str
    servers: tuple[ServerLines, ...]
    token_scope: str
    keys_page: str


def connect_lines(
    hub_url: str, user: str, servers: list[str], ssh_user: str = DEFAULT_SSH_USER
) -> ConnectLines:
    """The lines for ``user`` with servers named ``servers`` ('' the default one)."""
    ssh_user_option = "" if ssh_user == DEFAULT_SSH_USER else f" --ssh-user {ssh_user}"
    named = sorted(s for s in servers if s)
    ordered = ([""] if "" in servers or not named else []) + named
    lines = []
    for server in ordered:
        alias = ssh_alias(user, server)
        lines.append(
            ServerLines(
                server=server,
                alias=alias,
                ssh=f"ssh {alias}",
                app_port=f"ssh -N -L 8080:127.0.0.1:8080 {alias}",
            )
        )
    config_commands = [
        f"snh ssh-config{(' --server ' + shlex.quote(s)) if s else ''}{ssh_user_option}"
        " >> ~/.ssh/config"
        for s in ordered
    ]
    return ConnectLines(
        install=f"pip install {PACKAGE}",
        login=f"snh login --hub {shlex.quote(hub_url.rstrip('/'))}",
        ssh_config="\n".join(config_commands),
        servers=tuple(lines),
        token_scope=SCOPE,
        keys_page=KEYS_PAGE.lstrip("/"),
    )


class ConnectPanel:
    """The ``c.JupyterHub.template_vars`` value (called with the current user)."""

    def __init__(self, *, hub_url: str, ssh_user: str = DEFAULT_SSH_USER) -> None:
        self.hub_url, self.ssh_user = hub_url, ssh_user

    def __call__(self, user: Any) -> ConnectLines | None:
        if user is None:
            return None
        servers = list(user.orm_user.orm_spawners) or [""]
        return connect_lines(self.hub_url, user.name, servers, self.ssh_user)
