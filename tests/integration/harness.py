"""Running the real system for tests: the local cloud and a real JupyterHub with
configurable-http-proxy, as separate processes talking over loopback HTTP.

The hub is started exactly as an operator starts it (``jupyterhub -f jupyterhub_config.py``
with the deployment's environment variables); the only test additions come through
``SNH_EXTRA_CONFIG``: private ports, an API token with admin scopes for assertions, and a
short ``auth_refresh_age`` so refreshes happen within a test.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import psutil
import requests

from localcloud.ports import free_port
from tests.integration.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "integration-tests-token-0123456789abcdef"


#: where `hub_test_config` keeps the ports it chose, beside the configuration that reads them
PORTS_FILE = "hub_test_ports.json"
#: generous: a hub starts in about 5 s, 15 s with the two cores busy with the other worker
HUB_START_DEADLINE = 120.0
#: generous: the local cloud starts in about 2 s, 6 s with the two cores busy
CLOUD_START_DEADLINE = 120.0


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the leader, then SIGKILL the whole group and every process it started: no
    process is left behind.

    The group alone is not enough: JupyterHub starts configurable-http-proxy and its managed
    services (the idle culler) in sessions of their own. A hub that outlives the SIGTERM wait
    (a loaded machine, a service slow to stop) is killed before it stops its proxy, and that
    orphaned proxy keeps the session's public port: every later hub's proxy then fails to
    bind and the tests wait for a hub that can never answer."""
    started: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        started = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for child in started:
        # psutil refuses a pid that now belongs to another process (it compares start times)
        with contextlib.suppress(psutil.Error):
            child.kill()


def port_holders(port: int) -> list[tuple[int | None, str]]:
    """Who listens on a loopback port: pids and command lines, for a message that says which
    process to look at."""
    holders = []
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(conn.pid) if conn.pid else None
                holders.append((conn.pid, " ".join(proc.cmdline()) if proc else "?"))
    return holders


def wait_for_free_port(port: int, timeout: float = 30, *, unless_held_by: str = "") -> None:
    if unless_held_by and any(str(pid) == unless_held_by for pid, _ in port_holders(port)):
        return

    def free() -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    try:
        wait_until(free, timeout, f"port {port} to be free", interval=0.2)
    except TimeoutError:
        holders = [f"pid {pid}: {cmdline}" for pid, cmdline in port_holders(port)]
        raise RuntimeError(
            f"port {port} is still held by {holders or 'an unknown process'}: "
            "a process an earlier test started outlived it"
        ) from None


@dataclass
class LocalCloud:
    state_dir: Path
    proc: subprocess.Popen
    endpoints: dict[str, Any]
    #: the PostgreSQL server the session's hubs keep their databases in (None: SQLite)
    postgres: PostgresServer | None = None

    def stop(self) -> None:
        stop_group(self.proc)
        if self.postgres is not None:
            self.postgres.stop()

    @property
    def synapse(self) -> dict[str, str]:
        return self.endpoints["synapse"]

    def control(self, method: str, path: str, body: Any = None) -> requests.Response:
        r = requests.request(method, f"{self.synapse['control_url']}{path}", json=body, timeout=10)
        r.raise_for_status()
        return r

    def remove_member(self, team: str, userid: str) -> None:
        self.control("DELETE", f"/teams/{team}/members/{userid}")

    def add_member(self, team: str, userid: str) -> None:
        self.control("PUT", f"/teams/{team}/members/{userid}")

    def advance_clock(self, seconds: float) -> None:
        self.control("POST", "/clock/advance", {"seconds": seconds})

    def inject_fault(self, **fault: Any) -> None:
        self.control("POST", "/faults", fault)

    def clear_faults(self) -> None:
        """The Synapse stand-in's faults."""
        self.control("DELETE", "/faults")

    def clear_aws_faults(self) -> None:
        """The AWS front's fault rules."""
        url = f"{self.endpoints['aws']['control_url']}/faults"
        requests.request("DELETE", url, timeout=10).raise_for_status()


def test_database() -> str:
    """Where the hubs of the tests and benchmarks keep their database: ``postgresql`` (the
    default, as production) or ``sqlite`` (the demo's), from ``SNH_TEST_DATABASE``."""
    kind = os.environ.get("SNH_TEST_DATABASE", "postgresql")
    if kind not in ("postgresql", "sqlite"):
        raise ValueError(f"SNH_TEST_DATABASE={kind!r}: postgresql or sqlite")
    return kind


def start_localcloud(state_dir: Path, hub_url: str, *extra_args: str) -> LocalCloud:
    """The local cloud, and (unless ``SNH_TEST_DATABASE=sqlite``) a PostgreSQL server for
    the hubs that use it (`hub_env`); `LocalCloud.stop` ends both."""
    postgres = PostgresServer.start() if test_database() == "postgresql" else None
    try:
        return _start_localcloud(state_dir, hub_url, postgres, *extra_args)
    except BaseException:
        if postgres is not None:
            postgres.stop()
        raise


def _start_localcloud(
    state_dir: Path, hub_url: str, postgres: PostgresServer | None, *extra_args: str
) -> LocalCloud:
    state_dir.mkdir(parents=True, exist_ok=True)
    endpoints_file = state_dir / "endpoints.json"
    endpoints_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            "--state-dir",
            str(state_dir),
            "--hub-url",
            hub_url,
            "--synapse-port",
            "0",
            *extra_args,
            "serve",
        ],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: endpoints_file.exists() or proc.poll() is not None,
            CLOUD_START_DEADLINE,
            "the local cloud",
        )
    except TimeoutError:
        stop_group(proc)  # nothing of it outlives the test that gave up on it
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"python -m localcloud serve exited with {proc.returncode}")
    return LocalCloud(state_dir, proc, json.loads(endpoints_file.read_text()), postgres)


@dataclass
class Hub:
    url: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)
    #: where JupyterHub records its proxy's pid (the state directory's)
    proxy_pid_file: Path | None = None
    #: where this launch's lines begin in the log (a restarted hub appends to its state's)
    log_from: int = 0

    def stop(self) -> None:
        """Stop the hub and everything it started, its proxy included even when the hub
        was killed outright earlier (a restart test's): an orphaned proxy would keep the
        session's public port from every later hub."""
        stop_group(self.proc)
        if self.proxy_pid_file is None or not self.proxy_pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            proxy = psutil.Process(int(self.proxy_pid_file.read_text().strip()))
            if "configurable-http-proxy" in " ".join(proxy.cmdline()):
                proxy.kill()

    def crash(self) -> None:
        """SIGKILL the hub as a crash would, and the services it started with it (under
        systemd they share its cgroup; a restarted hub starts its own and never finds these
        again, so they would run on for the rest of the session). Its proxy stays: a
        restarted hub takes it over, which is what restart tests test."""
        services: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "configurable-http-proxy" not in " ".join(child.cmdline()):
                        services.append(child)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for service in services:
            with contextlib.suppress(psutil.Error):
                service.kill()

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {SERVICE_TOKEN}", **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs
        )

    def user(self, name: str) -> dict[str, Any] | None:
        r = self.api("GET", f"/users/{name}")
        return r.json() if r.status_code == 200 else None

    def auth_state(self, name: str) -> dict[str, Any]:
        user = self.user(name)
        assert user is not None, f"no hub user {name}"
        return user["auth_state"]

    def log(self, *, since_launch: bool = False) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.log_from if since_launch else 0)
            return log.read().decode(errors="replace")

    def audit_lines(self, action: str | None = None) -> list[dict[str, Any]]:
        """The hub's audit log (its state directory's ``audit.log``), of ``action`` only
        when given; [] before the first line."""
        path = self.log_path.parent / "audit.log"
        lines = path.read_text().splitlines() if path.exists() else []
        records = [json.loads(line) for line in lines]
        return [r for r in records if action is None or r["action"] == action]


def hub_env(cloud: LocalCloud, state_dir: Path, **overrides: str) -> dict[str, str]:
    from localcloud.launcher import hub_environment

    env = hub_environment(cloud.endpoints, cloud.state_dir)
    env["SNH_STATE_DIR"] = str(state_dir)
    if cloud.postgres is not None:  # a database per state directory, as RDS in production
        env["SNH_DB_URL"] = cloud.postgres.database_for(state_dir)
    env.update(overrides)
    return env


def hub_test_config(
    state_dir: Path, refresh_age: int = 1, extra: str = "", *, hub_api: bool = True
) -> Path:
    """The tests' additions to the hub's configuration. ``hub_api=False``: the hub's API
    where the environment says (a real-boot local cloud chose it for its machines' links)."""
    path = state_dir / "hub_test_config.py"
    ports = path.with_name(PORTS_FILE)
    ports.write_text(
        json.dumps({"hub_api": free_port() if hub_api else None, "proxy_api": free_port()})
    )
    path.write_text(
        f"""
import json as _json, pathlib as _pathlib
_ports = _json.loads(_pathlib.Path({str(ports)!r}).read_text())
if _ports["hub_api"]:
    c.JupyterHub.hub_bind_url = c.JupyterHub.hub_connect_url = (
        f"http://127.0.0.1:{{_ports['hub_api']}}"
    )
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{_ports['proxy_api']}}"
c.JupyterHub.services.append({{"name": "integration-tests", "api_token": "{SERVICE_TOKEN}"}})
c.JupyterHub.load_roles.append({{
    "name": "integration-tests",
    "scopes": ["admin:users", "admin:auth_state", "admin:groups", "admin:servers",
               "admin:server_state", "servers", "access:servers", "list:users", "read:users",
               "read:groups", "read:metrics", "read:tokens"],
    "services": ["integration-tests"],
}})
c.Authenticator.auth_refresh_age = {refresh_age}
c.SynapseOAuthenticator.min_rotation_interval = 1
c.SynapseOAuthenticator.http_request_kwargs = {{"connect_timeout": 2.0, "request_timeout": 3.0}}
c.JupyterHub.log_level = "DEBUG"
"""
        + extra
    )
    return path


def proxy_api_url(config: Path) -> str:
    """The proxy API's URL of a hub started with ``config`` (a `hub_test_config`)."""
    ports = json.loads(config.with_name(PORTS_FILE).read_text())
    return f"http://127.0.0.1:{ports['proxy_api']}"


def communities_changed(only: str | None = None, **changes: Any) -> str:
    """Hub configuration (for ``SNH_EXTRA_CONFIG``) that gives the spawner the hub's own
    communities file with ``changes`` applied to every community, or to the one with id
    ``only``: settings a test needs that the shipped file does not have. Blocks add up:
    each changes what the blocks before it gave the spawner."""
    return f"""
import dataclasses, os
from hub_config import load_communities
_loaded = (
    c.EC2Spawner.communities
    if "communities" in c.EC2Spawner
    else load_communities(os.environ["SNH_COMMUNITIES_FILE"])
)
c.EC2Spawner.communities = dataclasses.replace(
    _loaded,
    communities=tuple(
        dataclasses.replace(x, **{changes!r}) if {only!r} in (None, x.id) else x
        for x in _loaded.communities
    ),
)
"""


def start_hub(env: dict[str, str], log_path: Path, *, wait: bool = True) -> Hub:
    """Start the hub as an operator does; with ``wait``, until it answers through its proxy.

    The test configuration's private ports (`hub_test_config`) were free when chosen, not
    when the hub binds them seconds later: the other worker's tunnels and the local cloud
    bind ephemeral ports all the time. A hub that cannot bind one of them is stopped and
    started again on a fresh one; any other exit is an error with the hub's log."""
    pid_file = Path(env.get("SNH_STATE_DIR", ".")) / "jupyterhub-proxy.pid"
    config = env.get("SNH_EXTRA_CONFIG")
    ports_file = Path(config).with_name(PORTS_FILE) if config else None
    for _attempt in range(5):
        # the proxy of the hub before this one has let go of the public port (or we say who
        # has), unless it is this state directory's own proxy, left by a hub killed outright:
        # the new hub finds it by its pid file and replaces it, as under systemd (what
        # restart tests test)
        own_proxy = pid_file.read_text().strip() if pid_file.exists() else ""
        wait_for_free_port(urlparse(env["SNH_PUBLIC_URL"]).port or 80, unless_held_by=own_proxy)
        hub = _launch_hub(env, log_path, pid_file)
        if not wait:
            return hub
        has_ports = ports_file is not None and ports_file.exists()
        ports = json.loads(ports_file.read_text()) if has_ports else {}
        try:
            wait_until(
                functools.partial(_hub_up, hub, ports),
                HUB_START_DEADLINE,
                "the hub to answer through the proxy",
                interval=0.2,
            )
            return hub
        except _PortTaken as taken:
            if pid_file.exists() and pid_file.read_text().strip() != own_proxy:
                hub.stop()  # and the proxy this launch started, which holds the public port
            else:
                stop_group(hub.proc)  # not the proxy a restarted hub was to take over
            assert ports_file is not None  # only its ports are found taken
            ports_file.write_text(json.dumps({**ports, taken.key: free_port()}))
        except BaseException:
            hub.stop()  # nothing of a hub that never answered may outlive the test
            raise
    raise RuntimeError(f"the hub found its private ports taken five times:\n{hub.log()[-3000:]}")


class _PortTaken(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _launch_hub(env: dict[str, str], log_path: Path, pid_file: Path) -> Hub:
    log_from = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "jupyterhub_config.py")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Hub(env["SNH_PUBLIC_URL"], proc, log_path, proxy_pid_file=pid_file, log_from=log_from)


def _hub_up(hub: Hub, ports: dict[str, int | None]) -> bool:
    """Whether the hub answers through its proxy; `_PortTaken` if it never will because one
    of ``ports`` (the test configuration's, empty without one) was taken: JupyterHub exits
    with "Failed to bind hub to" when its API port is, but configurable-http-proxy only logs
    ``EADDRINUSE`` for its API port and serves on, and the hub would then wait on whatever
    holds that port."""
    exited = hub.proc.poll() is not None
    if ports:
        log = hub.log(since_launch=True)
        if ports["hub_api"] and "Failed to bind hub to" in log:
            raise _PortTaken("hub_api")
        if f"EADDRINUSE: address already in use 127.0.0.1:{ports['proxy_api']}" in log:
            raise _PortTaken("proxy_api")
    if exited:
        raise RuntimeError(f"the hub exited with {hub.proc.returncode}:\n{hub.log()[-3000:]}")
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{hub.url}/hub/health", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def own_hub(cloud: LocalCloud, state: Path, hub_id: str, *, extra: str = "", **env_vars: str):
    """A hub of its own id (its instances are its own: other modules' servers in the shared
    local cloud are not listed, reaped or culled by it), polling every 2 s; stopped after.
    ``env_vars``: more of the hub's environment."""
    config = hub_test_config(state, extra="c.Spawner.poll_interval = 2\n" + extra)
    env = hub_env(cloud, state, SNH_HUB_ID=hub_id, SNH_EXTRA_CONFIG=str(config), **env_vars)
    hub = start_hub(env, state / "hub.log")
    try:
        yield hub
    finally:
        hub.stop()


class FormParser(HTMLParser):
    """The first form of a page: its action and its fields (hidden ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self._in_form = a.get("action") or "", True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def sign_in(
    hub: Hub, username: str, consent: str = "allow", session: requests.Session | None = None
) -> tuple[requests.Session, requests.Response]:
    """The browser's path through the OAuth code flow, with the stand-in's sign-in form."""
    s = session or requests.Session()
    page = s.get(f"{hub.url}/hub/oauth_login", timeout=30)
    assert page.status_code == 200 and 'name="username"' in page.text, page.text[:500]
    form = FormParser()
    form.feed(page.text)
    fields = {**form.fields, "username": username, "consent": consent}
    final = s.post(urljoin(page.url, form.action or ""), data=fields, timeout=30)
    return s, final


def token_for(hub, user: str, scopes: list[str] | None) -> str:
    """A token made as on the hub's token page, with ``scopes`` (None: all the user's)."""
    session, page = sign_in(hub, user)
    assert page.url == f"{hub.url}/hub/home"
    session.get(f"{hub.url}/hub/token", timeout=30)
    body: dict = {"note": "laptop"}
    if scopes is not None:
        body["scopes"] = scopes
    made = session.post(
        f"{hub.url}/hub/api/users/{user}/tokens",
        json=body,
        headers={"X-XSRFToken": session.cookies.get("_xsrf", "")},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return made.json()["token"]
