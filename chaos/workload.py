"""One simulated analyst of a chaos run: works in their notebook server through the Jupyter
REST API, the way JupyterLab does, and notes what the hub promised and when they were
without their server.

Each step is one of: save a file (``PUT /api/contents``, random text, its SHA-256 kept only
once the server said it was saved), run code in their kernel (an ``execute_request`` on the
kernel's websocket, the answer checked), or run a command in their terminal (its websocket,
the output checked). A kernel and a terminal are kept between steps, as an analyst keeps
them open, and made again when lost. When a step fails the analyst looks at their server
(the hub's REST API, with their own token) and starts it if it is neither running nor
starting, as they would from the home page. "Without their server" runs from the first
failed step to the next step that works.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

#: What a saved file holds: enough to notice a torn or stale write.
FILE_BYTES = 2048


@dataclass
class Record:
    """What one analyst saw."""

    user: str
    #: path -> SHA-256 of the content the server acknowledged
    files: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    failures: int = 0
    starts: int = 0
    down_since: float | None = None
    longest_down: float = 0.0
    #: the error that began the longest time without the server
    longest_cause: str = ""
    last_error: str = ""
    _cause: str = ""

    def worked(self, now: float) -> None:
        self.steps += 1
        if self.down_since is not None:
            if now - self.down_since > self.longest_down:
                self.longest_down, self.longest_cause = now - self.down_since, self._cause
            self.down_since = None

    def failed(self, now: float, error: str) -> None:
        self.failures += 1
        self.last_error = error[:300]
        if self.down_since is None:
            self.down_since, self._cause = now, self.last_error


class Analyst(threading.Thread):
    def __init__(self, hub_url: str, user: str, token: str, *, seed: int, stop: threading.Event):
        super().__init__(name=f"analyst-{user}", daemon=True)
        self.hub_url = hub_url.rstrip("/")
        self.user = user
        self.token = token
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.record = Record(user)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        self._kernel: str | None = None
        self._terminal: str | None = None
        self._last_start = 0.0
        self._n = 0
        self._folder_made = False

    @property
    def base(self) -> str:
        return f"{self.hub_url}/user/{self.user}"

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.step()
            self.stop_event.wait(self.rng.uniform(1.5, 3.5))

    def step(self) -> bool:
        """One unit of work; True if it worked."""
        kind = self.rng.choices(("file", "kernel", "terminal"), weights=(6, 2, 2))[0]
        try:
            {"file": self.save_file, "kernel": self.run_code, "terminal": self.run_command}[kind]()
        except Exception as e:  # any failure is the server being out of reach, for the user
            self.record.failed(time.monotonic(), f"{kind}: {e!r}")
            self._kernel = self._terminal = None
            self.recover()
            return False
        self.record.worked(time.monotonic())
        return True

    # -- the three kinds of work -----------------------------------------------------------

    def save_file(self) -> None:
        self._n += 1
        path = f"chaos/{self.user}-{self._n:05d}.txt"
        text = "".join(self.rng.choices("abcdefghij0123456789\n", k=FILE_BYTES))
        if not self._folder_made:
            made = self.http.put(
                f"{self.base}/api/contents/chaos", json={"type": "directory"}, timeout=20
            )
            self._ok(made)
            self._folder_made = True
        answer = self.http.put(
            f"{self.base}/api/contents/{path}",
            json={"type": "file", "format": "text", "content": text},
            timeout=20,
        )
        self._ok(answer)
        self.record.files[path] = hashlib.sha256(text.encode()).hexdigest()

    def run_code(self) -> None:
        if self._kernel is None:
            answer = self.http.post(
                f"{self.base}/api/kernels", json={"name": "python3"}, timeout=30
            )
            self._ok(answer)
            self._kernel = answer.json()["id"]
        a, b = self.rng.randrange(1000), self.rng.randrange(1000)
        ws = self._websocket(f"/api/kernels/{self._kernel}/channels")
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps(_execute_request(msg_id, f"print({a} * {b})", self.user)))
            output, status = "", None
            deadline = time.monotonic() + 30
            while status is None or str(a * b) not in output:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kernel answered {output!r}, status {status}")
                message = json.loads(ws.recv())
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if message["msg_type"] == "stream":
                    output += message["content"].get("text", "")
                elif message["msg_type"] == "execute_reply":
                    status = message["content"]["status"]
                    if status != "ok":
                        raise RuntimeError(f"execute_reply {status}")
        finally:
            ws.close()

    def run_command(self) -> None:
        if self._terminal is None:
            answer = self.http.post(f"{self.base}/api/terminals", timeout=30)
            self._ok(answer)
            self._terminal = answer.json()["name"]
        marker = f"chaos{self.rng.randrange(10**9)}"
        ws = self._websocket(f"/terminals/websocket/{self._terminal}")
        try:
            ws.send(json.dumps(["stdin", f"echo {marker[:5]}''{marker[5:]}\r"]))
            output = ""
            deadline = time.monotonic() + 30
            while marker not in output:  # the echo of the command line never holds it whole
                if time.monotonic() > deadline:
                    raise TimeoutError(f"terminal printed {output[-200:]!r}")
                message = json.loads(ws.recv())
                if message[0] == "stdout":
                    output += message[1]
        finally:
            ws.close()

    # -- when the server is out of reach -----------------------------------------------------

    def recover(self) -> None:
        """Start the server if it is neither running nor starting (at most every 10 s)."""
        try:
            model = self.http.get(f"{self.hub_url}/hub/api/users/{self.user}", timeout=10)
            if model.status_code != 200:
                return  # the hub itself is down (restarting): nothing to do but wait
            server = model.json().get("servers", {}).get("")
            if server and (server.get("ready") or server.get("pending")):
                return
            if time.monotonic() - self._last_start < 10:
                return
            self._last_start = time.monotonic()
            started = self.http.post(
                f"{self.hub_url}/hub/api/users/{self.user}/server", json={}, timeout=30
            )
            if started.status_code in (201, 202):
                self.record.starts += 1
        except Exception:  # the hub half up (a restart): the next failed step looks again
            pass

    def reachable(self) -> bool:
        """Whether the server answers a listing of the analyst's files now."""
        try:
            return self.http.get(f"{self.base}/api/contents/chaos", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    def read_back(self, path: str) -> str | None:
        """The SHA-256 of the file as the server has it now (None: missing or unreadable)."""
        answer = self.http.get(
            f"{self.base}/api/contents/{path}", params={"content": 1}, timeout=30
        )
        if answer.status_code != 200:
            return None
        return hashlib.sha256(answer.json()["content"].encode()).hexdigest()

    def _websocket(self, path: str) -> websocket.WebSocket:
        url = self.base.replace("http://", "ws://", 1) + path
        return websocket.create_connection(
            url, header=[f"Authorization: token {self.token}"], timeout=30
        )

    @staticmethod
    def _ok(answer: requests.Response) -> None:
        if answer.status_code >= 300:
            raise RuntimeError(f"{answer.request.method} {answer.url}: {answer.status_code}")


def _execute_request(msg_id: str, code: str, user: str) -> dict[str, Any]:
    """A Jupyter messaging protocol 5.3 ``execute_request`` on the shell channel."""
    return {
        "header": {
            "msg_id": msg_id,
            "username": user,
            "session": msg_id,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }
