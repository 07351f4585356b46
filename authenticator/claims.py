"""What the hub asks Synapse for, and how it reads the answer.

Pure functions, so the rules of the team gate, the admin mapping and the username can be
tested without a hub or a network.

Synapse's OIDC server returns only the claims a client names in the ``claims`` request
parameter (OIDC Core 5.5); for the ``team`` claim the request carries ``values``, and Synapse
answers with the subset of those teams the user belongs to. Asking for every configured team
id, and nothing else, is both the gate and the privacy rule: the hub never learns about the
user's other teams.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The identity claims the hub stores; ``team`` is added with its values.
IDENTITY_CLAIMS = ("userid", "user_name", "email", "email_verified", "given_name", "family_name")

#: Synapse user names are ASCII letters, digits, '.', '_' and '-' (at least 3 characters);
#: anything else in a ``user_name`` claim means the answer is not from Synapse.
SYNAPSE_USER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
TEAM_ID = re.compile(r"^[0-9]{1,20}$")


def _numeric(team_id: str) -> tuple[int, str]:
    """Numeric order for digit strings, without failing on anything else."""
    return (len(team_id), team_id)


def claims_request(team_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``claims`` parameter: the same claims in the id token and from userinfo.

    Both are requested because the id token is what Synapse signs at login, while userinfo is
    recomputed at every call: the refresh path reads team membership from userinfo.
    """
    teams = sorted({str(t) for t in team_ids}, key=_numeric)
    wanted: dict[str, Any] = {name: None for name in IDENTITY_CLAIMS}
    wanted["team"] = {"values": teams}
    return {"id_token": dict(wanted), "userinfo": dict(wanted)}


def claims_parameter(team_ids: Iterable[str]) -> str:
    """The ``claims`` request parameter as sent on the authorize URL (compact JSON)."""
    return json.dumps(claims_request(team_ids), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class SynapseIdentity:
    """Who Synapse says the user is, validated.

    ``userid`` is Synapse's immutable principal id; ``user_name`` can be changed by the user
    in Synapse and is only a display name for the hub's purposes.
    """

    userid: str
    user_name: str
    email: str
    given_name: str
    family_name: str
    teams: tuple[str, ...]


class ClaimsError(ValueError):
    """Synapse's answer lacks a claim the hub relies on, or carries a malformed one."""


def identity_from_userinfo(userinfo: Mapping[str, Any]) -> SynapseIdentity:
    """Validate the userinfo answer; raise :class:`ClaimsError` naming the bad claim."""
    if not isinstance(userinfo, Mapping):
        raise ClaimsError(f"userinfo is not a JSON object: {type(userinfo).__name__}")
    # Not ``sub``: Synapse's ``sub`` is a per-client pseudonym (an encrypted user id).
    userid = str(userinfo.get("userid") or "")
    if not TEAM_ID.match(userid):
        raise ClaimsError(f"claim 'userid' is missing or not a Synapse id: {userid!r}")
    user_name = userinfo.get("user_name")
    if not isinstance(user_name, str) or not SYNAPSE_USER_NAME.match(user_name):
        raise ClaimsError(f"claim 'user_name' is missing or malformed: {user_name!r}")
    raw_teams = userinfo.get("team") or []
    if not isinstance(raw_teams, list) or not all(TEAM_ID.match(str(t)) for t in raw_teams):
        raise ClaimsError(f"claim 'team' is not a list of team ids: {raw_teams!r}")
    email = userinfo.get("email") or ""
    return SynapseIdentity(
        userid=userid,
        user_name=user_name,
        email=email if isinstance(email, str) else "",
        given_name=str(userinfo.get("given_name") or ""),
        family_name=str(userinfo.get("family_name") or ""),
        teams=tuple(sorted({str(t) for t in raw_teams}, key=_numeric)),
    )


def normalize_username(user_name: str) -> str:
    """The JupyterHub name for a Synapse user name.

    Synapse treats user names case-insensitively, JupyterHub lowercases names by default, and
    the allowed characters are already URL- and DNS-label-friendly, so lowercasing is all that
    is needed and two Synapse accounts can never map to one hub name by normalisation alone.
    """
    return user_name.strip().lower()


def allowed_teams_of(teams: Iterable[str], allowed: Iterable[str]) -> set[str]:
    """The user's teams that open the hub."""
    return set(teams) & set(allowed)


def groups_for_teams(teams: Iterable[str], team_groups: Mapping[str, str]) -> list[str]:
    """JupyterHub group names for the user's configured teams (unknown teams are dropped)."""
    return sorted({team_groups[t] for t in teams if t in team_groups})


def team_link(team_id: str) -> str:
    """Synapse's page for a team, where a user can ask to join."""
    return f"https://www.synapse.org/#!Team:{team_id}"
