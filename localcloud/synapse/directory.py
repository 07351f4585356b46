"""Who exists in the stand-in: users, teams, team memberships and registered OAuth clients.

The directory is the stand-in's only source of identity facts. Claims (``userid``,
``user_name``, ``team`` ...), ``UserProfile`` and ``TeamMembershipStatus`` are computed from it
at the moment they are asked for, as Synapse's claim providers read its database at request
time, so a membership change made here is visible at the next userinfo call.

The demo data (:func:`demo_directory`, :func:`demo_client`) is shared with the rest of the
project (hub configuration, browser tests, ``make demo``): change the ids only together with
them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Synapse's anonymous principal (AuthorizationConstants.BOOTSTRAP_PRINCIPAL.ANONYMOUS_USER).
ANONYMOUS_USER_ID = "273950"

DEMO_ADMIN_TEAM_ID = "3500000"
DEMO_AD_TEAM_ID = "3500001"
DEMO_NF_TEAM_ID = "3500002"
DEMO_UNRELATED_TEAM_ID = "3500099"

DEMO_CLIENT_ID = "notebook-hub-demo"
DEMO_CLIENT_SECRET = "demo-secret"  # a published demo value, not a secret
DEMO_REDIRECT_URI = "http://127.0.0.1:8000/hub/oauth_callback"


@dataclass
class SynapseUser:
    """One Synapse user account, with the fields claims and ``UserProfile`` are built from.

    ``user_id`` is the principal id (a decimal string, as Synapse sends it in the ``userid``
    claim and ``UserProfile.ownerId``). ``validated_at`` is the epoch second at which the
    user's identity was validated, or ``None`` for a user who is not validated; the
    ``validated_*`` claims are only given for validated users.
    """

    user_id: str
    user_name: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    company: str | None = None
    location: str | None = None
    orcid: str | None = None
    is_certified: bool = False
    validated_at: int | None = None
    created_on: str = "2020-01-01T00:00:00.000Z"
    etag: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def is_validated(self) -> bool:
        """True when the user passed Synapse's identity validation."""
        return self.validated_at is not None


@dataclass
class SynapseTeam:
    """A Synapse team. ``can_public_join`` decides ``membershipApprovalRequired``."""

    team_id: str
    name: str
    can_public_join: bool = False


@dataclass
class OAuthClient:
    """A registered OAuth 2.0 client.

    Synapse matches ``redirect_uri`` against ``redirect_uris`` exactly (no prefix or
    normalisation). ``userinfo_signed_response_alg`` set to ``"RS256"`` makes the userinfo
    endpoint answer with a signed JWT instead of JSON, as Synapse does for clients registered
    that way. ``verified`` mirrors Synapse's client verification: an unverified client is
    refused by the authorization and token endpoints.
    """

    client_id: str
    client_secret: str
    name: str
    redirect_uris: list[str]
    userinfo_signed_response_alg: str | None = None
    verified: bool = True


class Directory:
    """Users, teams and memberships, mutable at run time (tests and the control API do)."""

    def __init__(
        self,
        users: Iterable[SynapseUser] = (),
        teams: Iterable[SynapseTeam] = (),
        memberships: dict[str, Iterable[str]] | None = None,
    ) -> None:
        self.users: dict[str, SynapseUser] = {}
        self.teams: dict[str, SynapseTeam] = {}
        # team id -> ids of member users
        self.members: dict[str, set[str]] = {}
        for user in users:
            self.add_user(user)
        for team in teams:
            self.add_team(team)
        for team_id, user_ids in (memberships or {}).items():
            for user_id in user_ids:
                self.add_member(team_id, user_id)

    # -- users ---------------------------------------------------------------------------
    def add_user(self, user: SynapseUser) -> SynapseUser:
        """Add or replace a user; user names are unique, as in Synapse."""
        for other in self.users.values():
            if other.user_id != user.user_id and other.user_name.lower() == user.user_name.lower():
                raise ValueError(f"user name {user.user_name!r} is taken by {other.user_id}")
        self.users[user.user_id] = user
        return user

    def get_user(self, user_id: str) -> SynapseUser | None:
        """The user with this principal id, or ``None``."""
        return self.users.get(str(user_id))

    def find_user(self, name_or_email: str) -> SynapseUser | None:
        """Look a user up by user name or email, case-insensitively, as Synapse's login does."""
        key = name_or_email.strip().lower()
        for user in self.users.values():
            if user.user_name.lower() == key or (user.email and user.email.lower() == key):
                return user
        return None

    # -- teams ---------------------------------------------------------------------------
    def add_team(self, team: SynapseTeam) -> SynapseTeam:
        """Add or replace a team (its members are kept)."""
        self.teams[team.team_id] = team
        self.members.setdefault(team.team_id, set())
        return team

    def get_team(self, team_id: str) -> SynapseTeam | None:
        """The team with this id, or ``None``."""
        return self.teams.get(str(team_id))

    def add_member(self, team_id: str, user_id: str) -> None:
        """Make a user a member of a team; both must exist."""
        team_id, user_id = str(team_id), str(user_id)
        if team_id not in self.teams:
            raise KeyError(f"no team {team_id}")
        if user_id not in self.users:
            raise KeyError(f"no user {user_id}")
        self.members[team_id].add(user_id)

    def remove_member(self, team_id: str, user_id: str) -> bool:
        """Remove a membership; returns whether there was one."""
        members = self.members.get(str(team_id), set())
        if str(user_id) in members:
            members.discard(str(user_id))
            return True
        return False

    def is_member(self, team_id: str, user_id: str) -> bool:
        """Whether the user is currently a member of the team."""
        return str(user_id) in self.members.get(str(team_id), set())

    def teams_of(self, user_id: str) -> list[str]:
        """Ids of all teams the user is in, sorted."""
        return sorted(t for t, members in self.members.items() if str(user_id) in members)

    def filter_user_groups(self, user_id: str, team_ids: Iterable[str]) -> list[str]:
        """The subset of ``team_ids`` the user is a member of.

        This is what Synapse's ``team`` claim returns (TeamClaimProvider ->
        GroupMembersDAO.filterUserGroups): never the user's other teams.
        """
        return sorted({str(t) for t in team_ids if self.is_member(str(t), user_id)})


def demo_directory() -> Directory:
    """The demo users and teams shared by the whole project (see the module docstring)."""
    alice = SynapseUser(
        user_id="3400001",
        user_name="alice",
        first_name="Alice",
        last_name="Analyst",
        email="alice@example.org",
        company="Example Research Institute",
        is_certified=True,
    )
    bob = SynapseUser(
        user_id="3400002",
        user_name="bob",
        first_name="Bob",
        last_name="Biologist",
        email="bob@example.org",
        is_certified=True,
    )
    mallory = SynapseUser(
        user_id="3400003",
        user_name="mallory",
        first_name="Mallory",
        last_name="Outsider",
        email="mallory@example.org",
    )
    teams = [
        SynapseTeam(DEMO_ADMIN_TEAM_ID, "Notebook Hub Admins (demo)"),
        SynapseTeam(DEMO_AD_TEAM_ID, "AD Knowledge Portal (demo)"),
        SynapseTeam(DEMO_NF_TEAM_ID, "NF Open Science (demo)"),
        SynapseTeam(DEMO_UNRELATED_TEAM_ID, "Unrelated Team (demo)"),
    ]
    return Directory(
        users=[alice, bob, mallory],
        teams=teams,
        memberships={
            DEMO_ADMIN_TEAM_ID: [alice.user_id],
            DEMO_AD_TEAM_ID: [alice.user_id, bob.user_id],
            DEMO_NF_TEAM_ID: [bob.user_id],
            DEMO_UNRELATED_TEAM_ID: [mallory.user_id],
        },
    )


def demo_client(redirect_uri: str = DEMO_REDIRECT_URI) -> OAuthClient:
    """The demo hub's OAuth client (client_id ``notebook-hub-demo``, secret ``demo-secret``)."""
    return OAuthClient(
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
        name="Synapse Notebook Hub (demo)",
        redirect_uris=[redirect_uri],
    )
