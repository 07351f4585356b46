"""The stand-in's state and operations: instances, sessions, their agents, faults, triggers.

The HTTP layers (``api`` for the SSM JSON API, ``websocket`` for the data channel, ``control``
for ``/_control/``) are thin; everything they do is a method here, so tests and the composed
local cloud can also call it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from .agent import AgentSession, AgentSettings
from .documents import find_document
from .errors import AwsError, validation_error
from .faults import FaultInjector, FaultRule
from .pagination import decode_page_token, encode_page_token
from .registry import (
    DEFAULT_AGENT_VERSION,
    INSTANCE_ID,
    InstanceRegistry,
    ManagedInstance,
    Resolver,
)
from .sessions import SessionRecord, Status, new_session_id
from .sigv4 import CredentialStore, Principal, StaticCredentials, verify

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "123456789012"  # moto's default account
DEFAULT_CALLER = "localcloud"
DEFAULT_REGION = "us-east-1"
AGENT_RESTART_OUTPUT = "The agent on the instance went away; the session is over."


class SsmStandIn:
    """Everything the SSM stand-in knows. ``base_url`` (set by ``serve``) builds StreamUrls.

    Data-channel upgrades must be SigV4-signed for ``region`` by a principal of
    ``credentials`` (default: none known, so every upgrade is refused) unless
    ``require_signature`` is False, the old lenient behaviour (``--allow-unsigned``).
    """

    def __init__(
        self,
        *,
        moto_url: str | None = None,
        agent_version: str = DEFAULT_AGENT_VERSION,
        settings: AgentSettings | None = None,
        token_ttl: float = 60.0,
        caller: str = DEFAULT_CALLER,
        account: str = DEFAULT_ACCOUNT,
        base_url: str = "",
        credentials: CredentialStore | None = None,
        require_signature: bool = True,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.moto_url = moto_url.rstrip("/") if moto_url else None
        self.default_agent_version = agent_version
        self.settings = settings or AgentSettings()
        self.token_ttl = token_ttl
        self.caller = caller
        self.owner = f"arn:aws:iam::{account}:user/{caller}"
        self.base_url = base_url.rstrip("/")
        self.credentials: CredentialStore = credentials or StaticCredentials({})
        self.require_signature = require_signature
        self.region = region
        self.instances = InstanceRegistry()
        self.sessions: dict[str, SessionRecord] = {}
        self.agents: dict[str, AgentSession] = {}
        self.faults = FaultInjector()
        #: when set, any well-formed instance id a client names is registered with this resolver
        self.auto_register: Resolver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- instances ----------------------------------------------------------------------
    def register(
        self,
        instance_id: str,
        resolver: Resolver,
        *,
        agent_version: str | None = None,
        online: bool = True,
        **details: Any,
    ) -> ManagedInstance:
        """Make ``instance_id`` a managed node whose agent dials ``resolver(remote_port)``."""
        return self.instances.register(
            instance_id,
            resolver,
            agent_version=agent_version or self.default_agent_version,
            online=online,
            **details,
        )

    def set_online(self, instance_id: str, online: bool) -> ManagedInstance:
        """Agent online or ``ConnectionLost``; sessions already open are not touched (use
        ``restart_agent`` for that)."""
        return self.instances.set_online(instance_id, online)

    def deregister(self, instance_id: str) -> None:
        """The instance is gone (stopped, terminated): its sessions drop as in an agent restart."""
        self.restart_agent(instance_id)
        self.instances.remove(instance_id)

    def restart_agent(self, instance_id: str) -> list[str]:
        """Drop every session of an instance at once, websockets closed abruptly.

        Returns the session ids that were dropped. Those sessions are over (an agent that
        restarts does not know them any more): ResumeSession gives them no token.
        """
        dropped = [
            record.session_id
            for record in self.sessions.values()
            if record.target == instance_id and record.active
        ]
        for session_id in dropped:
            self._end(session_id, Status.TERMINATED, AGENT_RESTART_OUTPUT, abrupt=True)
        return dropped

    def _instance(self, instance_id: str) -> ManagedInstance | None:
        instance = self.instances.get(instance_id)
        if instance is None and self.auto_register is not None:
            with contextlib.suppress(ValueError):
                instance = self.register(instance_id, self.auto_register)
        return instance

    # -- sessions: the API operations ------------------------------------------------------
    def start_session(self, request: dict[str, Any]) -> dict[str, Any]:
        target = request.get("Target")
        if not isinstance(target, str) or not 1 <= len(target) <= 400:
            raise validation_error(
                "target",
                target,
                "Member must have length between 1 and 400"
                if isinstance(target, str)
                else "Member must not be null",
            )
        document = find_document(request.get("DocumentName"))
        parameters = request.get("Parameters") or {}
        if not isinstance(parameters, dict):
            raise validation_error("parameters", parameters, "Member must be a map")
        reason = request.get("Reason")
        if reason is not None and (not isinstance(reason, str) or not 1 <= len(reason) <= 256):
            raise validation_error("reason", reason, "Member must have length between 1 and 256")
        properties = document.render(parameters)
        instance = self._instance(target)
        if instance is None or not instance.online:
            raise AwsError("TargetNotConnected", f"{target} is not connected.")
        session_id = new_session_id(self.caller)
        record = SessionRecord(
            session_id=session_id,
            target=target,
            document_name=document.name,
            properties=properties,
            owner=self.owner,
            reason=reason,
        )
        self.sessions[session_id] = record
        self.agents[session_id] = AgentSession(
            session_id=session_id,
            instance_id=target,
            agent_version=instance.agent_version,
            properties=properties,
            resolver=instance.resolver,
            settings=replace(self.settings),
            on_end=lambda output, failed: self._agent_ended(session_id, output, failed),
        )
        return {
            "SessionId": session_id,
            "TokenValue": record.token,
            "StreamUrl": self.stream_url(session_id),
        }

    def stream_url(self, session_id: str) -> str:
        ws_base = "ws" + self.base_url[len("http") :] if self.base_url.startswith("http") else ""
        return f"{ws_base}/v1/data-channel/{session_id}?role=publish_subscribe"

    def terminate_session(self, request: dict[str, Any]) -> dict[str, Any]:
        session_id = self._session_id_param(request)
        # The model gives TerminateSession no not-found error: ending what is gone succeeds.
        self._end(session_id, Status.TERMINATED, "")
        return {"SessionId": session_id}

    def resume_session(self, request: dict[str, Any]) -> dict[str, Any]:
        session_id = self._session_id_param(request)
        record = self.sessions.get(session_id)
        if record is None:
            raise AwsError("DoesNotExistException", f"Session with id {session_id} not found.")
        if not record.active:
            # What the official plugin reads as "timed out" (sessionhandler.go): no token.
            return {"SessionId": session_id}
        record.resumes += 1
        return {
            "SessionId": session_id,
            "TokenValue": record.issue_token(),
            "StreamUrl": self.stream_url(session_id),
        }

    def describe_sessions(self, request: dict[str, Any]) -> dict[str, Any]:
        state = request.get("State")
        if state not in ("Active", "History"):
            raise validation_error(
                "state", state, "Member must satisfy enum value set: [Active, History]"
            )
        max_results = _max_results(request, "maxResults", 1, 200, default=200)
        records = [r for r in self.sessions.values() if r.active == (state == "Active")]
        for item in request.get("Filters") or []:
            records = _filter_sessions(records, item)
        records.sort(key=lambda r: r.start_date, reverse=True)
        page, next_token = _page(records, request, max_results, f"sessions:{state}")
        response: dict[str, Any] = {"Sessions": [r.describe() for r in page]}
        if next_token:
            response["NextToken"] = next_token
        return response

    def describe_instance_information(self, request: dict[str, Any]) -> dict[str, Any]:
        legacy = request.get("InstanceInformationFilterList")
        filters = request.get("Filters")
        if legacy and filters:
            raise AwsError(
                "ValidationException",
                "InstanceInformationFilterList and Filters cannot be used together.",
            )
        max_results = _max_results(request, "maxResults", 5, 50, default=10)
        instances = self.instances.all()
        for item in legacy or []:
            instances = _filter_instances(instances, item.get("key"), item.get("valueSet"))
        for item in filters or []:
            instances = _filter_instances(instances, item.get("Key"), item.get("Values"))
        page, next_token = _page(instances, request, max_results, "instances")
        now = time.time()
        response: dict[str, Any] = {"InstanceInformationList": [i.describe(now) for i in page]}
        if next_token:
            response["NextToken"] = next_token
        return response

    @staticmethod
    def _session_id_param(request: dict[str, Any]) -> str:
        session_id = request.get("SessionId")
        if not isinstance(session_id, str) or not 1 <= len(session_id) <= 96:
            raise validation_error(
                "sessionId", session_id, "Member must have length between 1 and 96"
            )
        return session_id

    # -- the data channel -------------------------------------------------------------------
    def verify_upgrade(self, url: str, headers: dict[str, str]) -> Principal | None:
        """The principal that signed a data-channel upgrade (`sigv4.SignatureError` if none
        did); None when signatures are not required and the upgrade carries none."""
        if not self.require_signature and not any(k.lower() == "authorization" for k in headers):
            return None
        return verify("GET", url, headers, store=self.credentials, region=self.region)

    def agent_for_token(self, session_id: str, token: str) -> AgentSession | None:
        """The agent a websocket may talk to, if ``token`` is the session's current token."""
        record = self.sessions.get(session_id)
        agent = self.agents.get(session_id)
        if record is None or agent is None or agent.ended:
            return None
        if not record.token_valid(token, self.token_ttl):
            return None
        return agent

    def websocket_attached(self, session_id: str) -> None:
        record = self.sessions.get(session_id)
        if record is not None and record.active:
            record.status = Status.CONNECTED

    def websocket_detached(self, session_id: str, agent: AgentSession | None) -> None:
        record = self.sessions.get(session_id)
        if record is None or not record.active or agent is None or agent.ended:
            return
        if agent.link is None:
            record.status = Status.DISCONNECTED

    # -- triggers for tests -------------------------------------------------------------------
    def close_session(self, session_id: str, output: str = "") -> None:
        """End a session from the service side: ``channel_closed`` (with ``output``), then a
        websocket close with code 1000."""
        if session_id not in self.sessions:
            raise KeyError(session_id)
        self._end(session_id, Status.TERMINATED, output)

    def expire_idle(self, session_id: str) -> None:
        """End a session as its idle timeout does, now."""
        agent = self.agents.get(session_id)
        if agent is None:
            raise KeyError(session_id)
        agent.expire_idle()

    def drop_connection(self, session_id: str) -> bool:
        """Close the session's websocket abruptly (network failure); the session survives."""
        agent = self.agents.get(session_id)
        if agent is None or agent.link is None:
            return False
        agent.link.abort()
        return True

    def set_idle_timeout(self, seconds: float) -> None:
        """Idle timeout for new sessions and for those running now."""
        self.settings.idle_timeout = seconds
        for agent in self.agents.values():
            agent.set_idle_timeout(seconds)

    def inject_fault(self, kind: str, **options: Any) -> FaultRule:
        """Add a data-channel fault rule (see ``faults``)."""
        return self.faults.add(FaultRule(kind=kind, **options))  # type: ignore[arg-type]

    def clear_faults(self, session_id: str | None = None) -> None:
        self.faults.clear(session_id)

    def active_sessions(self, instance_id: str | None = None) -> list[SessionRecord]:
        return [
            r
            for r in self.sessions.values()
            if r.active and (instance_id is None or r.target == instance_id)
        ]

    def snapshot(self) -> dict[str, Any]:
        """Instances, sessions and faults, for ``GET /_control/state``."""
        now = time.time()
        return {
            "instances": [i.describe(now) for i in self.instances.all()],
            "sessions": [
                {
                    **r.describe(),
                    "Properties": r.properties,
                    "EndOutput": r.end_output,
                    "Resumes": r.resumes,
                    "Agent": self._agent_state(r.session_id),
                }
                for r in self.sessions.values()
            ],
            "faults": [f.to_json() for f in self.faults.rules],
            "idleTimeout": self.settings.idle_timeout,
            "requireSignature": self.require_signature,
        }

    def _agent_state(self, session_id: str) -> dict[str, Any] | None:
        agent = self.agents.get(session_id)
        if agent is None:
            return None
        mode = None if agent.ports is None else type(agent.ports).__name__
        return {
            "agentVersion": agent.agent_version,
            "clientVersion": agent.client_version,
            "mode": {"MuxPorts": "mux", "BasicPort": "basic"}.get(mode or "", None),
            "ready": agent.ready,
            "attached": agent.link is not None,
            **agent.stats,
        }

    # -- ending --------------------------------------------------------------------------------
    def _end(self, session_id: str, status: Status, output: str, *, abrupt: bool = False) -> None:
        record = self.sessions.get(session_id)
        agent = self.agents.pop(session_id, None)
        if record is not None:
            record.end(status, output)
        if agent is not None:
            agent.end(output=output, notify=False, abrupt=abrupt)

    def _agent_ended(self, session_id: str, output: str, failed: bool) -> None:
        record = self.sessions.get(session_id)
        self.agents.pop(session_id, None)
        if record is not None:
            record.end(Status.FAILED if failed else Status.TERMINATED, output)

    def close(self) -> None:
        """End every session abruptly (the stand-in is shutting down)."""
        for session_id in list(self.agents):
            self._end(session_id, Status.TERMINATED, "", abrupt=True)


# -- helpers for the Describe operations -----------------------------------------------------
def _max_results(request: dict[str, Any], field: str, low: int, high: int, *, default: int) -> int:
    value = request.get("MaxResults")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise validation_error(field, value, "Member must be an integer")
    if value < low:
        raise validation_error(
            field, value, f"Member must have value greater than or equal to {low}"
        )
    if value > high:
        raise validation_error(field, value, f"Member must have value less than or equal to {high}")
    return value


def _page(
    items: list[Any], request: dict[str, Any], size: int, scope: str
) -> tuple[list[Any], str]:
    token = request.get("NextToken")
    start = 0
    if token:
        start = decode_page_token(token, scope)
        if start is None or start > len(items):
            raise AwsError("InvalidNextToken", "The specified token isn't valid.")
    end = start + size
    return items[start:end], (encode_page_token(end, scope) if end < len(items) else "")


_SESSION_FILTER_KEYS = (
    "InvokedAfter",
    "InvokedBefore",
    "Target",
    "Owner",
    "Status",
    "SessionId",
    "AccessType",
)


def _filter_sessions(records: list[SessionRecord], item: Any) -> list[SessionRecord]:
    key = item.get("key") if isinstance(item, dict) else None
    value = item.get("value") if isinstance(item, dict) else None
    if key not in _SESSION_FILTER_KEYS:
        raise AwsError("InvalidFilterKey", f"{key} is not a valid filter key.")
    if not isinstance(value, str) or not value:
        raise validation_error("filters.member.value", value, "Member must have length >= 1")
    if key in ("InvokedAfter", "InvokedBefore"):
        when = _parse_time(value)
        if key == "InvokedAfter":
            return [r for r in records if r.start_date >= when]
        return [r for r in records if r.start_date < when]
    if key == "Target":
        return [r for r in records if r.target == value]
    if key == "Owner":
        return [r for r in records if r.owner == value]
    if key == "Status":
        return [r for r in records if r.status.value == value]
    if key == "SessionId":
        return [r for r in records if r.session_id == value]
    return records if value == "Standard" else []


def _parse_time(value: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise AwsError("ValidationException", f"Invalid timestamp: {value}") from exc


_INSTANCE_FILTER_KEYS = (
    "InstanceIds",
    "AgentVersion",
    "PingStatus",
    "PlatformTypes",
    "ActivationIds",
    "IamRole",
    "ResourceType",
    "AssociationStatus",
    "SourceIds",
    "SourceTypes",
)


def _filter_instances(
    instances: list[ManagedInstance], key: Any, values: Any
) -> list[ManagedInstance]:
    if not isinstance(key, str) or not (key in _INSTANCE_FILTER_KEYS or key.startswith("tag")):
        raise AwsError("InvalidFilterKey", f"{key} is not a valid filter key.")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise AwsError(
            "InvalidInstanceInformationFilterValue", f"The filter values of {key} are not valid."
        )
    wanted = set(values)
    if key == "InstanceIds":
        bad = [v for v in values if not INSTANCE_ID.match(v)]
        if bad:
            raise AwsError("InvalidInstanceId", f"Instance ids {bad} are not valid.")
        return [i for i in instances if i.instance_id in wanted]
    if key == "PingStatus":
        unknown = wanted - {"Online", "ConnectionLost", "Inactive"}
        if unknown:
            raise AwsError(
                "InvalidInstanceInformationFilterValue",
                f"PingStatus values must be Online, ConnectionLost or Inactive: {sorted(unknown)}",
            )
        return [i for i in instances if i.ping_status in wanted]
    if key == "AgentVersion":
        return [i for i in instances if i.agent_version in wanted]
    if key == "PlatformTypes":
        return [i for i in instances if "Linux" in wanted]
    if key == "ResourceType":
        return [i for i in instances if "EC2Instance" in wanted]
    if key == "SourceIds":
        return [i for i in instances if i.instance_id in wanted]
    if key == "SourceTypes":
        return [i for i in instances if "AWS::EC2::Instance" in wanted]
    if key == "tag-key":
        return [i for i in instances if wanted & set(i.tags)]
    if key.startswith("tag:"):
        name = key[4:]
        return [i for i in instances if i.tags.get(name) in wanted]
    return []  # ActivationIds, IamRole, AssociationStatus: EC2 nodes here have none
