"""Starting and stopping servers through the hub's REST API, and looking at the local cloud
behind the hub's back (moto directly, so these looks are not counted as the hub's calls)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from datetime import datetime
from typing import Any

import boto3
import requests
import websocket

from hub_config.settings import HubSettings

from .harness import SERVICE_TOKEN, Hub, LocalCloud

#: A Jupyter server in the ad-portal community, as the spawn form sends it.
JUPYTER = {
    "community": "ad-portal",
    "image": "jupyter",
    "instance_type": "t3.xlarge",
    "disk_gb": 40,
}

AUTH = {"Authorization": f"token {SERVICE_TOKEN}"}

#: The hub id of hubs started without SNH_HUB_ID (the shared `hub` fixture's).
DEFAULT_HUB_ID = HubSettings.hub_id


def moto(cloud: LocalCloud, service: str) -> Any:
    """A client of moto itself: looks behind the hub's back, not counted as its calls."""
    return _client(cloud, service, "moto_url")


def front(cloud: LocalCloud, service: str) -> Any:
    """A client of the local cloud's AWS front, where the hub's calls go (what the front
    adds to moto, such as GetConsoleOutput and telling the simulator of a reboot)."""
    return _client(cloud, service, "endpoint_url")


def _client(cloud: LocalCloud, service: str, endpoint: str) -> Any:
    aws = cloud.endpoints["aws"]
    return boto3.client(
        service,
        endpoint_url=aws[endpoint],
        region_name=aws["region"],
        aws_access_key_id=aws["access_key_id"],
        aws_secret_access_key=aws["secret_access_key"],
    )


def front_control(cloud: LocalCloud, method: str, path: str, body: Any = None) -> Any:
    r = requests.request(
        method, f"{cloud.endpoints['aws']['control_url']}{path}", json=body, timeout=10
    )
    r.raise_for_status()
    return r.json() if r.content else None


def server_model(hub: Hub, user: str, name: str = "") -> dict[str, Any] | None:
    model = hub.user(user)
    return (model or {}).get("servers", {}).get(name)


def start_server(
    hub: Hub, user: str, options: dict[str, Any] | None = None, name: str = "", timeout: float = 120
) -> dict[str, Any]:
    """POST the server with ``user_options`` and wait until ready; AssertionError with the
    hub's progress message if it failed."""
    path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
    r = hub.api("POST", path, json=options or {})
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = server_model(hub, user, name)
        if model and model.get("ready"):
            return model
        if not model or not model.get("pending"):
            raise AssertionError(f"spawn failed: {last_progress(hub, user, name)}")
        time.sleep(0.5)
    raise AssertionError(f"spawn did not finish in {timeout}s: {last_progress(hub, user, name)}")


def spawn_error(hub: Hub, user: str, options: dict[str, Any], name: str = "") -> str:
    """Start a server that must fail; the message the user is shown."""
    path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
    r = hub.api("POST", path, json=options)
    if r.status_code >= 400:
        return r.json().get("message", r.text)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = server_model(hub, user, name)
        if not model or not model.get("pending"):
            return last_progress(hub, user, name)
        time.sleep(0.5)
    raise AssertionError("spawn neither failed nor succeeded")


def last_progress(hub: Hub, user: str, name: str = "") -> str:
    path = f"/users/{user}/servers/{name}/progress" if name else f"/users/{user}/server/progress"
    r = hub.api("GET", path, stream=True)
    message = ""
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            message = line[5:].strip()
    return message


def stop_server(hub: Hub, user: str, name: str = "", timeout: float = 60) -> None:
    path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
    r = hub.api("DELETE", path)
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = server_model(hub, user, name)
        if not model or not (model.get("ready") or model.get("pending")):
            return
        time.sleep(0.5)
    raise AssertionError("stop did not finish")


def contents(
    hub, user: str, path: str, *, method: str = "GET", body: dict | None = None, server: str = ""
):
    """A user's server's contents API, through the proxy, with the tests' service token."""
    prefix = f"/user/{user}/{server + '/' if server else ''}"
    return requests.request(
        method,
        f"{hub.url}{prefix}api/contents/{path}",
        json=body,
        timeout=30,
        headers={"Authorization": f"token {SERVICE_TOKEN}"},
    )


def simulated(cloud: LocalCloud, instance_id: str) -> dict[str, Any]:
    """The simulator's record of an instance (``GET /_control/instances`` of the front)."""
    listed = front_control(cloud, "GET", "/instances")
    return next(i for i in listed["instances"] if i["instanceId"] == instance_id)


def instances_of(
    cloud: LocalCloud, user: str, server: str = "_", hub_id: str = DEFAULT_HUB_ID
) -> list[dict[str, Any]]:
    """The user's server's instances launched by the hub ``hub_id`` (modules with a hub of
    their own id share the local cloud, and their users' names)."""
    answer = moto(cloud, "ec2").describe_instances(
        Filters=[
            {"Name": "tag:jupyterhub:hub", "Values": [hub_id]},
            {"Name": "tag:jupyterhub:user", "Values": [user]},
            {"Name": "tag:jupyterhub:server", "Values": [server]},
        ]
    )
    return [i for r in answer["Reservations"] for i in r["Instances"]]


def user_data(cloud: LocalCloud, instance_id: str) -> str:
    answer = moto(cloud, "ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData"
    )
    return base64.b64decode(answer["UserData"]["Value"]).decode()


class Kernel:
    """A kernel on a server, driven as JupyterLab does: REST to start it, its websocket
    (through the proxy) to run code."""

    def __init__(self, hub: Hub, user: str) -> None:
        base = f"{hub.url}/user/{user}/api/kernels"
        r = requests.post(base, json={"name": "python3"}, headers=AUTH, timeout=60)
        assert r.status_code == 201, r.text
        self.url = f"{base}/{r.json()['id']}"
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            self.url.replace("http", "ws", 1) + "/channels",
            header=[f"Authorization: token {SERVICE_TOKEN}"],
            timeout=30,
        )

    def run(self, code: str, *, timeout: float = 30) -> str:
        """Run ``code`` and wait for its end (``timeout``: for each message); what it printed
        (stdout and stderr)."""
        self.ws.settimeout(timeout)
        msg_id = self.submit(code)
        printed: list[str] = []
        while True:
            reply = json.loads(self.ws.recv())
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            if reply.get("msg_type") == "stream":
                printed.append(reply["content"]["text"])
            elif reply.get("msg_type") == "execute_reply":
                assert reply["content"]["status"] == "ok", (reply["content"], printed)
                return "".join(printed)

    def submit(self, code: str) -> str:
        """Send ``code`` to run, as a notebook cell; its message id (nothing awaited)."""
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": self.session,
                "username": "test",
                "version": "5.3",
                "date": datetime.now().astimezone().isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": code, "silent": False, "store_history": False},
            "channel": "shell",
            "buffers": [],
        }
        self.ws.send(json.dumps(message))
        return msg_id

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
