"""Processes for tunnel tests and benchmarks: a notebook-like server (the instance's port
8888) and the SSM stand-in (service + agent), each in its own process as on AWS, where the
agent runs on the instance and the hub's side of the tunnel is the only part in the hub."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import requests

from .harness import REPO, stop_group

INSTANCE_ID = "i-0123456789abcdef0"
#: the key pair the stand-in knows and the tests sign with (AWS_ACCESS_KEY_ID / ..._SECRET...)
ACCESS_KEY_ID, SECRET_ACCESS_KEY = "testing", "testing"


@dataclass
class Process:
    proc: subprocess.Popen
    address: str

    def stop(self) -> None:
        stop_group(self.proc)


def start_notebook_like() -> Process:
    """``localcloud.instances.notebook_like`` on a free port; returns when it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcloud.instances.notebook_like", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the notebook-like server did not start")
    return Process(proc, json.loads(line)["listening"])


def start_ssm_standin(forward_to: str, *extra: str) -> Process:
    """``python -m localcloud.ssm`` forwarding every session of INSTANCE_ID to ``forward_to``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud.ssm",
            "--port",
            "0",
            "--forward-to",
            forward_to,
            "--instance",
            INSTANCE_ID,
            "--access-key",
            f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError("the SSM stand-in did not start")
    return Process(proc, url)


def ssm_control(standin: Process, method: str, path: str, body: dict | None = None) -> dict:
    r = requests.request(method, f"{standin.address}/_control{path}", json=body, timeout=10)
    r.raise_for_status()
    return r.json() if r.content else {}
