"""``/hub/audit``: the newest lines of the hub's audit log, for admins and operators (the
``admin-ui`` scope, as the servers overview and the reports), filtered by user, server,
community and action, as a page or, with ``?format=jsonl``, the same lines as JSON lines.

Operators must be able to answer "who stopped this server, and why?" without a shell on the
hub host, where the file lives. The log holds no secret by construction (`operations.audit`),
so showing it takes nothing from anyone's credentials. Only the file's last
`TAIL_BYTES` are read (in a thread: the file grows for the hub's life); older lines stay in
the file and in whatever the operators ship the ``snh.audit`` logger to.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from .audit import ACTIONS, get_audit_log

#: How much of the end of the file a request reads: about 10,000 lines.
TAIL_BYTES = 4 * 1024 * 1024
DEFAULT_LIMIT = 200
MAX_LIMIT = 2000
#: The columns of the page; every other field of a line is shown under "details".
COLUMNS = ("time", "action", "actor", "actor_name", "user", "server", "community", "outcome")


@dataclass(frozen=True)
class AuditQuery:
    """What a request asks for; empty strings match anything."""

    user: str = ""
    server: str = ""
    community: str = ""
    action: str = ""
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, get: Any) -> AuditQuery:
        """From the request's arguments (``get(name, default)``); a clear 400 for a value
        that can never match, so a typo does not look like an empty log."""
        action = get("action", "")
        if action and action not in ACTIONS:
            raise web.HTTPError(
                400, f"Unknown action {action!r}; one of: {', '.join(sorted(ACTIONS))}."
            )
        raw_limit = get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise web.HTTPError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}.")
        return cls(
            user=get("user", "").strip(),
            server=get("server", "").strip(),
            community=get("community", "").strip(),
            action=action,
            limit=limit,
        )

    def matches(self, record: dict[str, Any]) -> bool:
        wanted = {
            "user": self.user,
            "server": self.server,
            "community": self.community,
            "action": self.action,
        }
        return all(not value or record.get(key) == value for key, value in wanted.items())


def tail_records(path: str | os.PathLike[str] | None, max_bytes: int = TAIL_BYTES) -> list[dict]:
    """The records in the last ``max_bytes`` of the file, oldest first. A line cut by the
    window's start, a partial last line and lines that are not JSON objects are skipped
    (as `operations.audit.read_records` does)."""
    if path is None:
        return []
    try:
        with Path(path).open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(size - start)
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the window began inside this one
    records = []
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def newest(records: Iterable[dict[str, Any]], query: AuditQuery) -> list[dict[str, Any]]:
    """The newest ``query.limit`` matching records, newest first."""
    chosen = [record for record in records if query.matches(record)]
    return chosen[::-1][: query.limit]


def details(record: dict[str, Any]) -> str:
    """The fields of a line that have no column, as ``key=value`` pairs."""
    return ", ".join(f"{key}={value}" for key, value in record.items() if key not in COLUMNS)


class AuditPageHandler(BaseHandler):
    """The page and its JSON lines; ``admin-ui`` as the servers overview."""

    def initialize(self, path: str) -> None:
        self.path = path

    @web.authenticated
    @needs_scope("admin-ui")
    async def get(self) -> None:
        query = AuditQuery.parse(self.get_argument)
        await get_audit_log().aflush(2.0)  # what the hub just did is on the page
        records = await asyncio.to_thread(tail_records, self.path)
        chosen = newest(records, query)
        if self.get_argument("format", "") == "jsonl":
            self.set_header("Content-Type", "application/x-ndjson; charset=utf-8")
            self.finish("".join(json.dumps(record) + "\n" for record in chosen))
            return
        html = await self.render_template(
            "audit.html",
            query=query,
            records=chosen,
            columns=COLUMNS,
            details=details,
            actions=sorted(ACTIONS),
            limit_max=MAX_LIMIT,
        )
        self.finish(html)


def audit_page_handler(path: str | os.PathLike[str]) -> tuple[str, type, dict[str, Any]]:
    """The ``c.JupyterHub.extra_handlers`` entry of the page for the audit file ``path``
    (a path: JupyterHub deep-copies its configuration, and the log object holds a thread)."""
    return (r"/audit", AuditPageHandler, {"path": str(path)})
