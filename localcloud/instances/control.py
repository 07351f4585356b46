"""The instance simulator's control routes, served by the AWS front under ``/_control/``.

======  ======================================  ===============================================
method  path                                    body / answer
======  ======================================  ===============================================
GET     /_control/instances                     ``{"instances": [...], "bootDelay": s}``: id,
                                                state, phase, port, pid, volume directory, ...
                                                (real boot: ``machine``, its directory and
                                                PID 1 on the host)
PUT     /_control/simulator                     ``{"bootDelay": s, "backstopIdleSeconds": s |
                                                null, "backstopCheckSeconds": s,
                                                "lightInstances": bool}`` (any of them) ->
                                                current settings; null: each instance's own
                                                backstop limit; light: from the next boot
POST    /_control/instances/{id}/fail-boot      ``{"fail": true|false}``: its boots fail (no
                                                notebook, agent offline) -> the instance
POST    /_control/boot-failures                 ``{"count": n}``: the next n boots fail
POST    /_control/instances/{id}/kill-notebook  SIGKILL its notebook (a crash; the restart
                                                policy starts it again) -> ``{"pid": n}``
======  ======================================  ===============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..control_api import ControlError, ControlHandler

if TYPE_CHECKING:
    from .simulator import InstanceSimulator


def _settings(simulator: InstanceSimulator) -> dict[str, Any]:
    return {
        "bootDelay": simulator.boot_delay,
        "pollInterval": simulator.poll_interval,
        "backstopIdleSeconds": simulator.backstop_idle_seconds,
        "backstopCheckSeconds": simulator.backstop_check_seconds,
        "lightInstances": simulator.light_instances,
    }


def _seconds(body: dict[str, Any], key: str, *, positive: bool = False) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{key} must be a number of seconds")
    if value < 0 or (positive and value == 0):
        raise ControlError(400, f"{key} must be {'positive' if positive else 'at least 0'}")
    return float(value)


class InstancesHandler(ControlHandler):
    standin: InstanceSimulator

    def get(self) -> None:
        self.reply({"instances": self.standin.instances(), **_settings(self.standin)})


class SettingsHandler(ControlHandler):
    standin: InstanceSimulator

    def put(self) -> None:
        body = self.body_json()
        if "bootDelay" in body:
            try:
                delay = float(body["bootDelay"])
            except (TypeError, ValueError) as exc:
                raise ControlError(400, "bootDelay must be a number of seconds") from exc
            if delay < 0:
                raise ControlError(400, "bootDelay cannot be negative")
            self.standin.boot_delay = delay
        if "backstopIdleSeconds" in body:
            self.standin.backstop_idle_seconds = (
                None
                if body["backstopIdleSeconds"] is None
                else _seconds(body, "backstopIdleSeconds", positive=True)
            )
        if "backstopCheckSeconds" in body:
            self.standin.backstop_check_seconds = _seconds(
                body, "backstopCheckSeconds", positive=True
            )
        if "lightInstances" in body:
            if not isinstance(body["lightInstances"], bool):
                raise ControlError(400, "lightInstances must be true or false")
            self.standin.light_instances = body["lightInstances"]
        self.reply(_settings(self.standin))


class FailBootHandler(ControlHandler):
    standin: InstanceSimulator

    def post(self, instance_id: str) -> None:
        fail = self.body_json().get("fail", True)
        if not isinstance(fail, bool):
            raise ControlError(400, "fail must be true or false")
        self.standin.fail_boot(instance_id, fail)
        sim = self.standin.get(instance_id)
        self.reply(sim.to_json() if sim else {"instanceId": instance_id, "failBoot": fail})


class BootFailuresHandler(ControlHandler):
    standin: InstanceSimulator

    def post(self) -> None:
        count = self.body_json().get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ControlError(400, "count must be a non-negative integer")
        self.standin.fail_next_boots(count)
        self.reply({"count": count})


class KillNotebookHandler(ControlHandler):
    standin: InstanceSimulator

    def post(self, instance_id: str) -> None:
        pid = self.standin.kill_notebook(instance_id)
        if pid is None:
            raise ControlError(409, f"{instance_id} has no running notebook")
        self.reply({"instanceId": instance_id, "pid": pid})


def control_routes(simulator: InstanceSimulator) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"standin": simulator}
    return [
        (r"/_control/instances", InstancesHandler, args),
        (r"/_control/simulator", SettingsHandler, args),
        (r"/_control/instances/([^/]+)/fail-boot", FailBootHandler, args),
        (r"/_control/boot-failures", BootFailuresHandler, args),
        (r"/_control/instances/([^/]+)/kill-notebook", KillNotebookHandler, args),
    ]
