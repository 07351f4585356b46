"""The test/control API under ``/_control/``: not part of AWS.

Tests and the composed local cloud use it to change the world behind the stand-in's back
(register instances, take agents offline, restart them), to end sessions the way the service
does, and to make the data channel misbehave. It answers only to loopback clients (403
otherwise), is never subject to injected faults, and speaks plain JSON.

======  =======================================  =================================================
method  path                                     body / answer
======  =======================================  =================================================
GET     /_control/state                          instances, sessions (with agent state), faults
POST    /_control/instances                      ``{"instanceId", "forwardTo": "host:port",
                                                 "agentVersion", "online"}`` -> 201
PUT     /_control/instances/{id}/online          ``{"online": bool}`` -> 200 instance
DELETE  /_control/instances/{id}                 deregister (its sessions drop) -> 204
POST    /_control/instances/{id}/restart         agent restart: its sessions drop abruptly
                                                 -> ``{"dropped": [session ids]}``
POST    /_control/sessions/{id}/close            ``{"output": "..."}``: channel_closed + close
POST    /_control/sessions/{id}/idle             end it as the idle timeout does, now
POST    /_control/sessions/{id}/drop             websocket closed abruptly; session survives
PUT     /_control/settings                       ``{"idleTimeout": s, "readyDelay": s,
                                                 "maxInFlight": n, "messageRate": n|null,
                                                 "reconnectTimeout": s, "replayOnResume":
                                                 bool, "requireSignature": bool}`` -> current
                                                 settings (rate, reconnect, replay: new
                                                 sessions only)
GET     /_control/faults                         ``{"faults": [...]}``
POST    /_control/faults                         ``{"kind", "direction", "sessionId",
                                                 "messageTypes", "probability", "count",
                                                 "after", "delay", "hold", "seed"}`` -> 201
DELETE  /_control/faults                         remove all (``?sessionId=`` those of one) -> 204
DELETE  /_control/faults/{id}                    remove one -> 204 (404 if none)
======  =======================================  =================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..control_api import ControlError, ControlHandler
from .registry import fixed_resolver

if TYPE_CHECKING:
    from .service import SsmStandIn


def _host_port(value: Any) -> tuple[str, int]:
    """``"HOST:PORT"`` from a request body, or a 400 naming what is wrong."""
    host, sep, port = str(value or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ControlError(400, f"forwardTo must be HOST:PORT, got {value!r}")
    return host, int(port)


class StateHandler(ControlHandler):
    def get(self) -> None:
        self.reply(self.standin.snapshot())


class InstancesHandler(ControlHandler):
    def post(self) -> None:
        body = self.body_json()
        host, port = _host_port(body.get("forwardTo"))
        try:
            instance = self.standin.register(
                str(body["instanceId"]),
                fixed_resolver(host, port),
                agent_version=body.get("agentVersion"),
                online=bool(body.get("online", True)),
            )
        except KeyError as exc:
            raise ControlError(400, f"missing: {exc}") from exc
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        self.reply(instance.describe(instance.registered_at), 201)


class InstanceOnlineHandler(ControlHandler):
    def put(self, instance_id: str) -> None:
        body = self.body_json()
        if not isinstance(body.get("online"), bool):
            raise ControlError(400, "need {'online': true|false}")
        try:
            instance = self.standin.set_online(instance_id, body["online"])
        except KeyError as exc:
            raise ControlError(404, f"no instance {instance_id}") from exc
        self.reply(instance.describe(instance.last_ping))


class InstanceHandler(ControlHandler):
    def delete(self, instance_id: str) -> None:
        if self.standin.instances.get(instance_id) is None:
            raise ControlError(404, f"no instance {instance_id}")
        self.standin.deregister(instance_id)
        self.reply(None, 204)


class InstanceRestartHandler(ControlHandler):
    def post(self, instance_id: str) -> None:
        if self.standin.instances.get(instance_id) is None:
            raise ControlError(404, f"no instance {instance_id}")
        self.reply({"dropped": self.standin.restart_agent(instance_id)})


class SessionActionHandler(ControlHandler):
    def post(self, session_id: str, action: str) -> None:
        if session_id not in self.standin.sessions:
            raise ControlError(404, f"no session {session_id}")
        if action == "close":
            self.standin.close_session(session_id, str(self.body_json().get("output", "")))
        elif action == "idle":
            try:
                self.standin.expire_idle(session_id)
            except KeyError as exc:
                raise ControlError(409, f"session {session_id} has ended") from exc
        elif action == "drop":
            if not self.standin.drop_connection(session_id):
                raise ControlError(409, f"session {session_id} has no websocket")
        else:
            raise ControlError(404, f"unknown action {action}")
        self.reply({"sessionId": session_id, "action": action})


class SettingsHandler(ControlHandler):
    def put(self) -> None:
        body = self.body_json()
        settings = self.standin.settings
        try:
            if "idleTimeout" in body:
                self.standin.set_idle_timeout(float(body["idleTimeout"]))
            if "readyDelay" in body:
                settings.ready_delay = float(body["readyDelay"])
            if "maxInFlight" in body:
                settings.max_in_flight = int(body["maxInFlight"])
            if "messageRate" in body:
                rate = body["messageRate"]
                settings.message_rate = None if rate is None else float(rate)
            if "reconnectTimeout" in body:
                settings.reconnect_timeout = float(body["reconnectTimeout"])
            if "replayOnResume" in body:
                settings.replay_on_resume = bool(body["replayOnResume"])
            if "requireSignature" in body:
                self.standin.require_signature = bool(body["requireSignature"])
        except (TypeError, ValueError) as exc:
            raise ControlError(400, f"bad setting: {exc}") from exc
        self.reply(
            {
                "idleTimeout": settings.idle_timeout,
                "readyDelay": settings.ready_delay,
                "maxInFlight": settings.max_in_flight,
                "messageRate": settings.message_rate,
                "reconnectTimeout": settings.reconnect_timeout,
                "replayOnResume": settings.replay_on_resume,
                "requireSignature": self.standin.require_signature,
            }
        )


_FAULT_FIELDS = {
    "direction": ("direction", str),
    "sessionId": ("session_id", str),
    "probability": ("probability", float),
    "count": ("count", int),
    "after": ("after", int),
    "delay": ("delay", float),
    "hold": ("hold", float),
    "seed": ("seed", int),
}


class FaultsHandler(ControlHandler):
    def get(self) -> None:
        self.reply({"faults": [f.to_json() for f in self.standin.faults.rules]})

    def post(self) -> None:
        body = self.body_json()
        options: dict[str, Any] = {}
        try:
            kind = str(body["kind"])
            for key, (name, cast) in _FAULT_FIELDS.items():
                if key in body:
                    options[name] = None if body[key] is None else cast(body[key])
            if body.get("messageTypes") is not None:
                options["message_types"] = frozenset(str(t) for t in body["messageTypes"])
            rule = self.standin.inject_fault(kind, **options)
        except KeyError as exc:
            raise ControlError(400, f"missing: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ControlError(400, f"bad fault: {exc}") from exc
        self.reply(rule.to_json(), 201)

    def delete(self) -> None:
        self.standin.clear_faults(self.get_query_argument("sessionId", None))
        self.reply(None, 204)


class FaultHandler(ControlHandler):
    def delete(self, rule_id: str) -> None:
        if not self.standin.faults.remove(int(rule_id)):
            raise ControlError(404, f"no fault {rule_id}")
        self.reply(None, 204)


def control_routes(standin: SsmStandIn) -> list[tuple[str, type, dict[str, Any]]]:
    """The URL routes of the control API."""
    args = {"standin": standin}
    return [
        (r"/_control/state", StateHandler, args),
        (r"/_control/instances", InstancesHandler, args),
        (r"/_control/instances/([^/]+)", InstanceHandler, args),
        (r"/_control/instances/([^/]+)/online", InstanceOnlineHandler, args),
        (r"/_control/instances/([^/]+)/restart", InstanceRestartHandler, args),
        (r"/_control/sessions/([^/]+)/(close|idle|drop)", SessionActionHandler, args),
        (r"/_control/settings", SettingsHandler, args),
        (r"/_control/faults", FaultsHandler, args),
        (r"/_control/faults/(\d+)", FaultHandler, args),
    ]
