"""The stand-in itself: its state (:class:`SynapseStandIn`), its routes, and a server on a port.

Typical use from a test or the demo launcher::

    standin, server, base_url = await serve()          # port 0: a free port on 127.0.0.1
    ...                                                 # point the hub / synapseclient at base_url
    server.stop()
    await server.close_all_connections()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .clock import Clock
from .directory import Directory, OAuthClient, SynapseUser, demo_client, demo_directory
from .faults import Fault, FaultInjector
from .keys import SigningKey
from .tokens import TokenService, is_valid_url


class SynapseStandIn:
    """Everything the stand-in knows: directory, clients, signing key, clock, codes and tokens.

    ``base_url`` (``http://127.0.0.1:<port>``, set by :func:`serve`) is used for the
    authorization endpoint advertised in the discovery document; the issuer is derived from each
    request's host, as Synapse derives it.
    """

    def __init__(
        self,
        *,
        clients: Iterable[OAuthClient] | None = None,
        directory: Directory | None = None,
        clock: Clock | None = None,
        signing_key: SigningKey | None = None,
        base_url: str = "",
    ) -> None:
        self.directory = directory if directory is not None else demo_directory()
        self.clients: dict[str, OAuthClient] = {}
        for client in clients if clients is not None else [demo_client()]:
            self.register_client(client)
        self.clock = clock or Clock()
        self.signing_key = signing_key or SigningKey()
        self.tokens = TokenService(self.directory, self.clients, self.signing_key, self.clock)
        self.faults = FaultInjector()
        self.base_url = base_url.rstrip("/")

    # -- addresses -------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The issuer as seen by a client that uses ``base_url``."""
        return self.base_url + "/auth/v1"

    @property
    def authorization_endpoint(self) -> str:
        """Where browsers are sent to sign in (stands in for https://signin.synapse.org)."""
        return self.base_url + "/signin"

    # -- world changes (also reachable through /_control/) ---------------------------------
    def register_client(self, client: OAuthClient) -> None:
        """Register (or replace) an OAuth client.

        Like Synapse's client registration (OAuthClientManagerImpl.
        validateOAuthClientForCreateOrUpdate), every redirect URI must be a valid URL; Synapse's
        validator refuses local host names such as ``localhost`` (use ``127.0.0.1``).
        """
        if not client.redirect_uris:
            raise ValueError("OAuth client must register at least one redirect URI.")
        for uri in client.redirect_uris:
            if not is_valid_url(uri):
                raise ValueError(f"Redirect URI is not a valid url: {uri}")
        self.clients[client.client_id] = client

    def add_user(self, user: SynapseUser, teams: Iterable[str] = ()) -> SynapseUser:
        """Add a user, optionally as a member of existing teams."""
        for team_id in teams:
            if self.directory.get_team(team_id) is None:
                raise KeyError(f"no team {team_id}")
        self.directory.add_user(user)
        for team_id in teams:
            self.directory.add_member(team_id, user.user_id)
        return user

    def add_team_member(self, team_id: str, user_id: str) -> None:
        """A user joins a team; seen by the next userinfo call or token grant."""
        self.directory.add_member(team_id, user_id)

    def remove_team_member(self, team_id: str, user_id: str) -> bool:
        """A user leaves a team; returns whether they were a member."""
        return self.directory.remove_member(team_id, user_id)

    def issued(self) -> dict[str, Any]:
        """Outstanding codes and issued tokens (metadata), as ``GET /_control/state`` lists them."""
        return self.tokens.snapshot()

    def advance_clock(self, seconds: float) -> float:
        """Age every code and token by ``seconds``; returns the new stand-in time."""
        return self.clock.advance(seconds)

    def inject_fault(self, path: str, **options: Any) -> Fault:
        """Make the next matching requests fail and/or stall (see `FaultInjector.add`)."""
        return self.faults.add(path, **options)
