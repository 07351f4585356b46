"""The test/control API under ``/_control/``: not part of Synapse.

Tests and the demo use it to change the world behind the stand-in's back (a user joins or
leaves a team), to age tokens without waiting, to make Synapse misbehave, and to see what was
issued. It answers only to loopback clients (403 otherwise), is never subject to injected
faults, and speaks plain JSON.

======  ==========================================  ===============================================
method  path                                        body / answer
======  ==========================================  ===============================================
GET     /_control/state                             clock, codes, tokens, faults, users, teams
GET     /_control/tokens                            ``{"access_tokens": [...], "refresh_tokens"}``
GET     /_control/codes                             ``{"codes": [...]}`` (not yet redeemed)
POST    /_control/users                             ``{"userId", "userName", "firstName",
                                                    "lastName", "email", "teams": [...]}`` -> 201
POST    /_control/teams                             ``{"teamId", "name", "canPublicJoin"}`` -> 201
PUT     /_control/teams/{team}/members/{user}       add a membership -> 204
DELETE  /_control/teams/{team}/members/{user}       remove a membership -> 204 (404 if none)
GET     /_control/clock                             ``{"now": epoch seconds, "offset": s}``
POST    /_control/clock/advance                     ``{"seconds": N}`` -> ``{"now", "offset"}``
GET     /_control/faults                            ``{"faults": [...]}``
POST    /_control/faults                            ``{"path", "method", "count", "status",
                                                    "body", "contentType", "delay",
                                                    "headers"}`` -> 201
DELETE  /_control/faults                            remove all faults -> 204
======  ==========================================  ===============================================
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..control_api import ControlError, ControlHandler
from .directory import SynapseTeam, SynapseUser

if TYPE_CHECKING:
    from .app import SynapseStandIn


def _user_json(user: SynapseUser) -> dict[str, Any]:
    return asdict(user)


class StateHandler(ControlHandler):
    """GET /_control/state: everything, for debugging and assertions."""

    def get(self) -> None:
        directory = self.standin.directory
        state = self.standin.tokens.snapshot()
        state["clockOffset"] = self.standin.clock.offset
        state["faults"] = [f.to_json() for f in self.standin.faults.faults]
        state["users"] = [_user_json(u) for u in directory.users.values()]
        state["teams"] = [
            {**asdict(t), "members": sorted(directory.members.get(t.team_id, set()))}
            for t in directory.teams.values()
        ]
        self.reply(state)


class TokensHandler(ControlHandler):
    """GET /_control/tokens: issued access and refresh tokens (metadata, not secrets)."""

    def get(self) -> None:
        snap = self.standin.tokens.snapshot()
        self.reply(
            {"access_tokens": snap["access_tokens"], "refresh_tokens": snap["refresh_tokens"]}
        )


class CodesHandler(ControlHandler):
    """GET /_control/codes: authorization codes not yet redeemed."""

    def get(self) -> None:
        self.reply({"codes": self.standin.tokens.snapshot()["codes"]})


class UsersHandler(ControlHandler):
    """POST /_control/users: add a user (optionally with team memberships)."""

    def post(self) -> None:
        body = self.body_json()
        try:
            user = SynapseUser(
                user_id=str(body["userId"]),
                user_name=str(body["userName"]),
                first_name=body.get("firstName", ""),
                last_name=body.get("lastName", ""),
                email=body.get("email", ""),
                company=body.get("company"),
                location=body.get("location"),
                orcid=body.get("orcid"),
                is_certified=bool(body.get("isCertified", False)),
                validated_at=body.get("validatedAt"),
            )
            self.standin.add_user(user, teams=[str(t) for t in body.get("teams", [])])
        except KeyError as exc:
            raise ControlError(400, f"missing or unknown: {exc}") from exc
        except ValueError as exc:
            raise ControlError(409, str(exc)) from exc
        self.reply(_user_json(user), 201)


class TeamsHandler(ControlHandler):
    """POST /_control/teams: add a team."""

    def post(self) -> None:
        body = self.body_json()
        try:
            team = SynapseTeam(
                team_id=str(body["teamId"]),
                name=str(body["name"]),
                can_public_join=bool(body.get("canPublicJoin", False)),
            )
        except KeyError as exc:
            raise ControlError(400, f"missing: {exc}") from exc
        self.standin.directory.add_team(team)
        self.reply(asdict(team), 201)


class MembershipHandler(ControlHandler):
    """PUT / DELETE /_control/teams/{team}/members/{user}."""

    def put(self, team_id: str, user_id: str) -> None:
        try:
            self.standin.add_team_member(team_id, user_id)
        except KeyError as exc:
            raise ControlError(404, str(exc.args[0])) from exc
        self.set_status(204)
        self.finish()

    def delete(self, team_id: str, user_id: str) -> None:
        if not self.standin.remove_team_member(team_id, user_id):
            raise ControlError(404, f"user {user_id} is not a member of team {team_id}")
        self.set_status(204)
        self.finish()


class ClockHandler(ControlHandler):
    """GET /_control/clock."""

    def get(self) -> None:
        clock = self.standin.clock
        self.reply({"now": clock.now(), "offset": clock.offset})


class ClockAdvanceHandler(ControlHandler):
    """POST /_control/clock/advance {"seconds": N}."""

    def post(self) -> None:
        body = self.body_json()
        try:
            seconds = float(body["seconds"])
            self.standin.advance_clock(seconds)
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(400, f"need a non-negative 'seconds': {exc}") from exc
        clock = self.standin.clock
        self.reply({"now": clock.now(), "offset": clock.offset})


class FaultsHandler(ControlHandler):
    """GET, POST, DELETE /_control/faults."""

    def get(self) -> None:
        self.reply({"faults": [f.to_json() for f in self.standin.faults.faults]})

    def post(self) -> None:
        body = self.body_json()
        try:
            fault = self.standin.inject_fault(
                str(body["path"]),
                count=int(body.get("count", 1)),
                status=None if body.get("status") is None else int(body["status"]),
                body=body.get("body", ""),
                content_type=body.get("contentType", "application/json"),
                delay=float(body.get("delay", 0.0)),
                method=body.get("method"),
                headers=body.get("headers"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(400, f"bad fault: {exc}") from exc
        self.reply(fault.to_json(), 201)

    def delete(self) -> None:
        self.standin.faults.clear()
        self.set_status(204)
        self.finish()


def control_routes(standin: SynapseStandIn) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL routes of the control API."""
    args = {"standin": standin}
    return [
        (r"/_control/state", StateHandler, args),
        (r"/_control/tokens", TokensHandler, args),
        (r"/_control/codes", CodesHandler, args),
        (r"/_control/users", UsersHandler, args),
        (r"/_control/teams", TeamsHandler, args),
        (r"/_control/teams/([^/]+)/members/([^/]+)", MembershipHandler, args),
        (r"/_control/clock", ClockHandler, args),
        (r"/_control/clock/advance", ClockAdvanceHandler, args),
        (r"/_control/faults", FaultsHandler, args),
    ]
