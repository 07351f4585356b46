"""The instance's idle backstop, as the simulator runs it for each simulated instance.

On AWS, ``notebook-bootstrap backstop`` (``spawner/bootstrap/``, run by a systemd timer every
5 minutes) stops an instance whose notebook has been idle for much longer than the hub's idle
culler allows: the hub's culler is the rule, this is the backstop for a hub that is gone,
broken or has lost track of the server. The simulator follows the same rules, with a check
interval and a limit short enough for tests:

- the limit: ``server.conf``'s ``BACKSTOP_IDLE_SECONDS`` (the spawner's
  ``BootstrapConfig.backstop_idle_seconds``, fixed at launch), else 24 hours;
- activity: the notebook server's own ``last_activity`` (``GET <prefix>api/status`` on the
  instance's 8888, with the server's own hub API token, which ``jupyterhub-singleuser``
  checks with the hub; the script does it inside the container with ``docker exec``), never
  earlier than the boot: a never-used instance counts from its boot. When the notebook does not
  answer (not started, crashed, or the hub cannot be reached to check the token), the last
  activity seen is kept: without the hub nobody can use the server anyway;
- when ``now - last activity`` reaches the limit: one log line saying why, then the guest's
  ``shutdown -h now``, which EC2 turns into a stop (InstanceInitiatedShutdownBehavior=stop):
  the simulator stops the instance in moto with the state reason
  ``Client.InstanceInitiatedShutdown`` and kills the notebook.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

#: Without a limit in the user data or the config parameter (the script's default too).
DEFAULT_IDLE_SECONDS = 24 * 3600
#: The key in server.conf.
CONF_KEY = "BACKSTOP_IDLE_SECONDS"


def idle_limit(conf: Mapping[str, str]) -> int:
    """The backstop's limit in seconds: server.conf's, else 24 h. A value that is not a
    positive whole number is ignored, as the script ignores it."""
    value = conf.get(CONF_KEY, "")
    if re.fullmatch(r"[1-9][0-9]{0,9}", value):
        return int(value)
    return DEFAULT_IDLE_SECONDS


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class BackstopClock:
    """What one boot of an instance knows about its notebook's activity."""

    booted_at: float
    limit: float = DEFAULT_IDLE_SECONDS
    last_activity: float = field(init=False)
    last_answer: float | None = None
    last_error: str = "not started yet"

    def __post_init__(self) -> None:
        self.last_activity = self.booted_at

    def observe(self, activity: float, now: float) -> None:
        """The notebook answered: its last activity (never in the future, never before boot)."""
        self.last_activity = max(self.last_activity, min(activity, now))
        self.last_answer = now
        self.last_error = ""

    def failed(self, error: str) -> None:
        self.last_error = error

    def idle(self, now: float) -> float:
        return max(0.0, now - self.last_activity)

    def expired(self, now: float) -> bool:
        return self.idle(now) >= self.limit

    def reason(self, now: float) -> str:
        """The log line: the same words as ``notebook-bootstrap backstop``."""
        if self.last_answer is None:
            heard = f"the notebook has not answered since the boot ({self.last_error})"
        elif self.last_error:
            heard = (
                f"the notebook last answered at {iso(self.last_answer)}, not since "
                f"({self.last_error})"
            )
        else:
            heard = f"the notebook answered at {iso(self.last_answer)}"
        since = "the boot" if self.last_activity <= self.booted_at else "its last activity"
        return (
            f"stopping this instance: no notebook activity for {int(self.idle(now))} s, since "
            f"{since} at {iso(self.last_activity)} (limit {int(self.limit)} s); {heard}"
        )

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "limit": self.limit,
            "idle": round(self.idle(now), 1),
            "lastActivity": iso(self.last_activity),
            "lastAnswer": iso(self.last_answer) if self.last_answer else None,
            "lastError": self.last_error,
        }


async def ask_notebook(port: int, env: Mapping[str, str], timeout: float = 10.0) -> float:
    """The notebook's ``last_activity`` (epoch seconds) from its ``/api/status``, asked with
    the server's own hub API token; raises with a short reason when it does not say."""
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or "/"
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    try:
        answer = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{prefix}api/status",
            headers={"Authorization": f"token {token}"},
            request_timeout=timeout,
            follow_redirects=False,
        )
    except HTTPClientError as exc:
        raise RuntimeError(f"HTTP {exc.code} from /api/status") from None
    except OSError as exc:
        raise RuntimeError(f"no answer from /api/status: {exc.strerror or exc}") from None
    try:
        stamp = json.loads(answer.body)["last_activity"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"/api/status said no last_activity ({exc})") from None
