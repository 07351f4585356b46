"""The audit trail: one JSON line per lifecycle event of a server's instance.

Who started, stopped, terminated or snapshotted which instance, when and why. Each event is
one line of JSON appended to a file (``<state dir>/audit.log`` once `configure` has been
called, as ``jupyterhub_config.py`` does) and emitted on the logger ``snh.audit`` (INFO), so
operators can ship it with the rest of their logs::

    {"time": "2025-03-01T12:00:00.000Z", "actor": "culler", "actor_name": "idle-culler",
     "action": "stop", "instance_id": "i-0abc…", "user": "alice", "server": "",
     "community": "ad-portal", "reason": "idle"}

**No secret, by construction.** Only the keys of `FIELDS` are written, each a plain scalar
(strings are cut to 500 characters); anything else a caller passes is dropped, and the names
(never the values) of dropped keys are logged at DEBUG. Strings that look like a JWT (Synapse
access and id tokens are JWTs) are replaced by ``[redacted]`` as a last line of defence.

**Never blocks the event loop.** `AuditLog.record` only puts the line on a queue; one
daemon thread appends it (``O_APPEND``, one ``write`` per line, so lines from the hub and
from a concurrent ``snh reap`` never interleave) and logs it. `flush` waits for
the queue (tests, the CLI, and ``atexit``). A failure to write is logged, never raised: an
audit problem must not stop a user's server from stopping.

**Who acted.** JupyterHub gives the spawner the request handler during ``start``
(``spawner.handler``) and nothing during ``stop`` or ``delete_forever``. `actor_for` decides:
an explicit `Actor` wins; else the handler of the start, else the request handler found on the
call stack (`current_handler`: JupyterHub awaits ``spawner.stop()`` inside the task of the
API request that asked for it, so the handler is a caller's ``self``); else ``hub``. From a
handler: its user is the server's owner → ``user``; another user with ``admin`` → ``admin``;
a service whose name matches ``*idle-culler*`` → ``culler``; another service → ``service``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import fnmatch
import json
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spawner.naming import (
    DEFAULT_SERVER_TAG,
    TAG_COMMUNITY,
    TAG_HUB,
    TAG_IMAGE,
    TAG_SERVER,
    TAG_USER,
)

log = logging.getLogger(__name__)
#: The logger every audit line is emitted on (INFO), besides the file.
audit_logger = logging.getLogger("snh.audit")

#: Who can act on a server.
ACTORS = frozenset(
    {
        "user",  # the server's owner
        "admin",  # another user, with admin rights
        "culler",  # the idle-culler service
        "service",  # another hub service
        "backstop",  # the instance stopped itself (its idle backstop), seen by the hub
        "reaper",  # snh reap (dormancy)
        "reconciliation",  # the hub putting its view and EC2 in agreement (e.g. at start-up)
        "hub",  # the hub itself, with no request behind it
    }
)

#: What can happen to a server's instance or volume.
ACTIONS = frozenset(
    {
        "start",  # a start of the server was asked for (before any AWS call)
        "start_refused",  # a start refused before any AWS call (a budget, a server limit)
        "launch",  # RunInstances: a new instance
        "resume",  # StartInstances: the server's stopped instance
        "adopt",  # the server's instance was found running and taken over
        "start_failed",  # the start failed (error says why); cleanup follows
        "stop",  # StopInstances
        "stopped",  # the instance was found stopped without the hub stopping it
        "terminate",  # TerminateInstances
        "snapshot",  # CreateSnapshot of the home volume
        "delete_volume",  # DeleteVolume of a home volume kept until its snapshot completed
        "delete_snapshot",  # DeleteSnapshot of a zone move's snapshot, once it was used
        "keep_volume",  # a home volume deliberately left behind (says why)
        "skip",  # the reaper left an instance alone (says why)
        "access_ended",  # a user lost every allowed team: servers, tokens, admin taken away
        "break_glass",  # a break-glass name signed in with full JupyterHub admin
        "relay",  # one connection from the owner's computer to a port of their server
        "relay_refused",  # a relay connection refused (reason says why)
        "ssh_key_added",  # a user added an SSH public key (in effect from the next start)
        "ssh_key_removed",  # a user removed one
        "keep_running",  # a user kept an idle server from the culler (or was refused: outcome)
        "stop_warning",  # the owner was told a stop is coming (kind, stop_at; e-mailed or not)
        "budget_stop",  # a server stopped because its community's budget is spent
    }
)

#: The keys an audit line may have, and what each holds. Nothing else is ever written.
FIELDS: Mapping[str, str] = {
    "time": "ISO-8601 UTC time of the event, milliseconds, 'Z'",
    "actor": "one of ACTORS",
    "actor_name": "the hub user or service that acted, if any",
    "action": "one of ACTIONS",
    "outcome": "'ok', 'failed', 'dry_run', 'deferred', …",
    "hub_id": "the hub's id",
    "instance_id": "EC2 instance id",
    "region": "AWS region",
    "user": "the server's owner (hub user name)",
    "server": "the server's name ('' for the default server)",
    "community": "community id",
    "instance_type": "EC2 instance type",
    "image": "image id of the spawn form",
    "state": "EC2 state after the action, or as found",
    "previous_state": "EC2 state before the action",
    "reason": "why, in words",
    "error": "what failed (AWS error code and message)",
    "snapshot_id": "EBS snapshot id",
    "snapshot_state": "pending / completed / error",
    "volume_id": "EBS volume id of the home volume",
    "volume_fate": "what happens to the home volume",
    "stopped_since": "ISO-8601 time the instance stopped",
    "removal_date": "ISO-8601 time the reaper may terminate it",
    "launch_time": "ISO-8601 EC2 LaunchTime (start of the current run)",
    "duration_s": "seconds the action took",
    "port": "the server's port a relay connection reached",
    "bytes_in": "bytes from the user's computer to the server (a relay connection)",
    "bytes_out": "bytes from the server to the user's computer (a relay connection)",
    "fingerprint": "SHA256 fingerprint of an SSH public key, as ssh-keygen -l prints it",
    "dry_run": "true when nothing was changed",
    "via": "where a user asked (home page, JupyterLab)",
    "kind": "what a stop warning is for: idle or budget",
    "stop_at": "ISO-8601 time a warned server will be stopped",
    "emailed": "whether the warning was also sent by e-mail",
}

MAX_STRING = 500
MAX_LINE = 8192
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_REDACTED = "[redacted]"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def isoformat(value: dt.datetime) -> str:
    """``2025-03-01T12:00:00.000Z`` (naive datetimes are taken as UTC, as JupyterHub's are)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """The inverse of `isoformat` (any ISO-8601 with an offset or 'Z')."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _clean_value(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dt.datetime):
        return isoformat(value)
    text = str(value)
    text = _JWT.sub(_REDACTED, text)
    return text[:MAX_STRING]


def clean_record(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The allowed fields of ``fields`` (in `FIELDS` order, None values left out), and the
    names of the keys that were dropped."""
    record = {
        key: _clean_value(fields[key])
        for key in FIELDS
        if key in fields and fields[key] is not None
    }
    dropped = sorted(k for k in fields if k not in FIELDS)
    return record, dropped


# ------------------------------------------------------------------------------------------
# Who acted
# ------------------------------------------------------------------------------------------

#: Service names taken for the idle culler (fnmatch, case-insensitive).
CULLER_PATTERNS: tuple[str, ...] = ("*idle-culler*",)


@dataclass(frozen=True)
class Actor:
    """Who acted: ``kind`` (one of `ACTORS`) and the hub user's or service's name."""

    kind: str
    name: str | None = None

    def fields(self) -> dict[str, str | None]:
        return {"actor": self.kind, "actor_name": self.name}


HUB = Actor("hub")
REAPER = Actor("reaper")
BACKSTOP = Actor("backstop")
RECONCILIATION = Actor("reconciliation")


def actor_from_handler(
    handler: Any, owner: str | None, *, culler_patterns: Iterable[str] = CULLER_PATTERNS
) -> Actor:
    """Who made the request ``handler`` serves, relative to the server's ``owner``.

    ``handler`` is a JupyterHub ``BaseHandler`` (or None). Its ``current_user`` is a hub
    ``User`` (``kind == "user"``, ``admin``) or an ``orm.Service`` (``kind == "service"``).
    """
    if handler is None:
        return HUB
    try:
        who = handler.current_user
    except Exception:  # tornado: get_current_user not awaited yet; or a broken handler
        who = getattr(handler, "_jupyterhub_user", None)
    if who is None:
        return HUB
    name = getattr(who, "name", None)
    kind = getattr(who, "kind", "user")
    if kind == "service":
        folded = (name or "").casefold()
        if any(fnmatch.fnmatchcase(folded, p.casefold()) for p in culler_patterns):
            return Actor("culler", name)
        return Actor("service", name)
    if owner is not None and name == owner:
        return Actor("user", name)
    if getattr(who, "admin", False):
        return Actor("admin", name)
    # another user with access to this server (e.g. a shared server): a user, not the owner
    return Actor("user", name)


def current_handler(max_depth: int = 200) -> Any:
    """The tornado ``RequestHandler`` on whose behalf this code runs, or None.

    Walks the Python call stack for a frame whose ``self`` is a RequestHandler. It works for
    JupyterHub's stop and delete paths because ``spawner.stop()`` is awaited by
    ``User.stop``, awaited by the handler's ``stop()`` closure (a task the handler created),
    and a running coroutine's frame links back to the coroutine that awaits it.
    """
    try:
        from tornado.web import RequestHandler
    except ImportError:  # pragma: no cover - tornado comes with JupyterHub
        return None
    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < max_depth:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, RequestHandler):
            return candidate
        frame = frame.f_back
        depth += 1
    return None


def actor_for(
    spawner: Any = None,
    explicit: Actor | str | None = None,
    *,
    culler_patterns: Iterable[str] = CULLER_PATTERNS,
) -> Actor:
    """Who is acting on ``spawner`` now: ``explicit`` if given (an `Actor` or a kind), else
    the start's handler (``spawner.handler``), else the request handler on the call stack,
    else `HUB`."""
    if isinstance(explicit, Actor):
        return explicit
    if isinstance(explicit, str):
        return Actor(explicit)
    owner = getattr(getattr(spawner, "user", None), "name", None)
    handler = getattr(spawner, "handler", None) or current_handler()
    return actor_from_handler(handler, owner, culler_patterns=culler_patterns)


def server_fields(spawner: Any) -> dict[str, Any]:
    """``user``, ``server`` (and ``instance_id``, ``region`` if the spawner keeps them)."""
    fields: dict[str, Any] = {
        "user": getattr(getattr(spawner, "user", None), "name", None),
        "server": getattr(spawner, "name", None),
    }
    for key in ("instance_id", "region"):
        value = getattr(spawner, key, None)
        if value:
            fields[key] = value
    return fields


def view_fields(view: Any) -> dict[str, Any]:
    """The audit fields of a `spawner.poller.InstanceView` (from its id, type and tags)."""
    tags = getattr(view, "tags", {}) or {}
    server = tags.get(TAG_SERVER)
    return {
        "instance_id": view.instance_id,
        "instance_type": getattr(view, "instance_type", None) or None,
        "user": tags.get(TAG_USER),
        "server": "" if server == DEFAULT_SERVER_TAG else server,
        "community": tags.get(TAG_COMMUNITY),
        "image": tags.get(TAG_IMAGE),
        "hub_id": tags.get(TAG_HUB),
        "state": getattr(view, "state", None),
    }


# ------------------------------------------------------------------------------------------
# The log
# ------------------------------------------------------------------------------------------

_STOP = object()


class AuditLog:
    """Appends audit lines to ``path`` (if any) and emits them on ``snh.audit``, from a
    background thread; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        logger: logging.Logger | None = audit_logger,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.logger = logger
        self.clock = clock
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.write_errors = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    # -- recording (any thread, never blocks, never raises) ---------------------------------

    def record(self, action: str, actor: Actor | str = HUB, **fields: Any) -> dict[str, Any] | None:
        """Queue one event; returns the line's fields as written (None if it could not be
        built). ``actor`` is an `Actor` or a kind; ``fields`` keys outside `FIELDS` are
        dropped."""
        try:
            who = actor if isinstance(actor, Actor) else Actor(str(actor))
            merged = {**fields, "action": action, **who.fields()}
            merged.setdefault("time", self.clock())
            merged["time"] = merged["time"] or self.clock()
            record, dropped = clean_record(merged)
            if dropped:
                log.debug(
                    "audit %s: dropped fields not allowed in the audit log: %s", action, dropped
                )
            for value, allowed, what in (
                (who.kind, ACTORS, "actor"),
                (action, ACTIONS, "action"),
            ):
                if value not in allowed and value not in self._warned:
                    self._warned.add(value)
                    log.warning("audit: unknown %s %r (recorded anyway)", what, value)
            line = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
            if len(line.encode()) > MAX_LINE:
                record.pop("reason", None)
                record.pop("error", None)
                record["outcome"] = record.get("outcome", "") + " (truncated)"
                line = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
        except Exception:
            log.exception("audit: could not build the record of %r", action)
            return None
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.exception("audit: listener %r failed", listener)
        self._ensure_thread()
        self._queue.put(line)
        return record

    # -- writing (the background thread) ----------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="snh-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            try:
                if line is _STOP:
                    return
                self._write(line)
            finally:
                self._queue.task_done()

    def _write(self, line: str) -> None:
        if self.logger is not None:
            try:
                self.logger.info(line)
            except Exception:  # a broken handler must not stop the file
                pass
        if self.path is None:
            return
        data = (line + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)  # one write per line: appends do not interleave
            finally:
                os.close(fd)
        except OSError as e:
            self.write_errors += 1
            log.error("audit: could not append to %s: %s; the line was: %s", self.path, e, line)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued line is written; False if ``timeout`` passed first."""
        if self._thread is None:
            return True
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    async def aflush(self, timeout: float | None = 10.0) -> bool:
        """`flush` from a coroutine, without blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._thread = None

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> list[dict[str, Any]]:
        """Every record of the file (after `flush`); see `read_records`."""
        return list(read_records(self.path)) if self.path is not None else []


def read_records(path: str | os.PathLike[str] | None) -> Iterator[dict[str, Any]]:
    """The records of an audit file, oldest first; unreadable lines are skipped (a partial
    last line of a crashed writer, a line an operator edited)."""
    if path is None:
        return
    try:
        handle = Path(path).open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


# ------------------------------------------------------------------------------------------
# The process's log (configured once by jupyterhub_config.py or the CLI)
# ------------------------------------------------------------------------------------------

_default = AuditLog(None)
#: Called with every record of the process's log (e.g. `operations.metrics` counts culls).
LISTENERS: list[Callable[[dict[str, Any]], None]] = _default.listeners


def default_path(state_dir: str | os.PathLike[str] = ".") -> Path:
    """``<state dir>/audit.log`` (the hub's state dir: ``HubSettings.state_dir``)."""
    return Path(state_dir).expanduser() / "audit.log"


def configure(
    path: str | os.PathLike[str] | None = None, *, state_dir: str | os.PathLike[str] = "."
) -> AuditLog:
    """Point the process's audit log at ``path`` (default `default_path`). Until this is
    called, lines go to the ``snh.audit`` logger only (so unit tests write no file)."""
    _default.flush()
    _default.path = Path(path) if path is not None else default_path(state_dir)
    return _default


def get_audit_log() -> AuditLog:
    return _default


def record(action: str, actor: Actor | str = HUB, **fields: Any) -> dict[str, Any] | None:
    """`AuditLog.record` on the process's log."""
    return _default.record(action, actor, **fields)


atexit.register(_default.flush, 5.0)
