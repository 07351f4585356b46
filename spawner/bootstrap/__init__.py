"""The user data of a server's instance: what makes a plain AMI run the notebook at every boot.

``render_user_data`` writes a ``#cloud-config`` document that installs five files and enables
two units: the bootstrap unit, which runs ``notebook-bootstrap`` at every boot (cloud-init's own
modules run once per instance, but a stopped server's instance must come back by itself when
the hub starts it again). The document holds no secret, and the renderer takes none: the
instance reads the server's parameters with its own role, so user data (readable by anyone
allowed ``DescribeInstanceAttribute``, and kept for the instance's lifetime) never needs one.
The other is the idle backstop's timer (``notebook-backstop.timer``, every 5 minutes, running
``notebook-bootstrap backstop``): it shuts the instance down (``shutdown -h now``; the hub
launches with InstanceInitiatedShutdownBehavior=stop, so it stops) once its notebook has been
idle for ``BootstrapConfig.backstop_idle_seconds`` (24 h unless set), for when the hub's idle
culler cannot stop it.

The script and the unit are real files next to this module, so that shellcheck and
``systemd-analyze verify`` check exactly what is shipped.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

#: Where the user data puts things on the instance (the script and unit refer to these).
SERVER_CONF_PATH = "/etc/notebook-hub/server.conf"
SCRIPT_PATH = "/usr/local/sbin/notebook-bootstrap"
UNIT_NAME = "notebook-bootstrap.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
BACKSTOP_SERVICE_NAME = "notebook-backstop.service"
BACKSTOP_TIMER_NAME = "notebook-backstop.timer"
BACKSTOP_SERVICE_PATH = f"/etc/systemd/system/{BACKSTOP_SERVICE_NAME}"
BACKSTOP_TIMER_PATH = f"/etc/systemd/system/{BACKSTOP_TIMER_NAME}"
#: EC2's limit on user data (before the base64 encoding boto3 adds).
MAX_USER_DATA_BYTES = 16 * 1024

#: The keys of ``server.conf``, in the order they are written.
SERVER_CONF_KEYS = ("NOTEBOOK_PARAMETER_PATH", "AWS_REGION", "NOTEBOOK_PORT", "HOME_DEVICE")
#: Written after those only when set (the backstop's own default applies otherwise).
BACKSTOP_KEY = "BACKSTOP_IDLE_SECONDS"
#: The backstop's limit when neither server.conf nor the config parameter sets one.
DEFAULT_BACKSTOP_IDLE_SECONDS = 24 * 3600

#: What the bootstrap writes on the serial console when it gives up (its ``die``): the time,
#: then why. ``GetConsoleOutput`` shows the console; `bootstrap_failure` reads it.
BOOTSTRAP_FAILED = re.compile(
    r"^notebook-bootstrap: failed at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ): (.{1,500})$",
    re.MULTILINE,
)
#: How much earlier than the instance's LaunchTime a failure may be stamped and still count
#: (instance clocks are synchronised on EC2, but not to the millisecond; a boot takes longer).
CLOCK_SKEW = dt.timedelta(seconds=5)
#: What of a console line may reach the user and the log: printable text only (the line
#: comes from the instance, which may write anything on its console).
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")

# SSM parameter names: letters, digits and _ . - / (no spaces, no quotes). Restricting values
# to such characters keeps server.conf plain KEY=value lines that the script parses (it never
# sources the file) and the simulator reads, with nothing to quote.
_PARAMETER_PATH_RE = re.compile(r"/[A-Za-z0-9_.\-/]{1,1000}")
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[1-9][0-9]?")
_DEVICE_RE = re.compile(r"/dev/[a-z][a-z0-9]{1,15}")


@dataclass(frozen=True)
class BootstrapConfig:
    """What an instance must know before it can ask for anything: where, and which disk."""

    #: The server's parameter path, e.g. ``/notebook-hub/<hub>/<user>/_/``.
    parameter_path: str
    region: str
    #: Host port the notebook listens on (127.0.0.1 only); the tunnel's target.
    port: int = 8888
    #: Attachment name of the home volume (``run_instances_request``'s ``HOME_DEVICE``).
    home_device: str = "/dev/sdf"
    #: The idle backstop's limit in seconds: the instance stops itself once its notebook has
    #: been idle this long (from its boot, if never used). ``None``: the backstop's default,
    #: 24 h, and no ``BACKSTOP_IDLE_SECONDS`` line in server.conf. The hub's idle culler must
    #: act well before (``hub_config.culling.backstop_idle_seconds``: twice its timeout, at
    #: least an hour). Fixed at launch, like all of server.conf.
    backstop_idle_seconds: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parameter_path, str) or not _PARAMETER_PATH_RE.fullmatch(
            self.parameter_path
        ):
            raise ValueError(
                "parameter_path must be an SSM parameter path: '/' then up to 1000 letters, "
                f"digits and _ . - / (got {self.parameter_path!r:.60})"
            )
        if not isinstance(self.region, str) or not _REGION_RE.fullmatch(self.region):
            raise ValueError(f"region must be an AWS region name (got {self.region!r:.40})")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an integer (got {self.port!r:.40})")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be from 1 to 65535 (got {self.port})")
        if not isinstance(self.home_device, str) or not _DEVICE_RE.fullmatch(self.home_device):
            raise ValueError(f"home_device must be like /dev/sdf (got {self.home_device!r:.40})")
        seconds = self.backstop_idle_seconds
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds < 10**10
        ):
            raise ValueError(
                f"backstop_idle_seconds must be a positive whole number of seconds "
                f"(got {seconds!r:.40})"
            )


def bootstrap_script() -> str:
    """The bootstrap script as written (``notebook-bootstrap.sh``), comments and all."""
    return _resource("notebook-bootstrap.sh")


def shipped_script() -> str:
    """The script as the user data carries it: without its comment lines (the shebang and
    ShellCheck directives stay). The comments are for whoever reads the repository (and the
    AMI's copy keeps them); in user data they would take a third of EC2's 16 KB. Every line
    that remains is a line of the source, in order; the tests run this text."""
    lines = bootstrap_script().splitlines(keepends=True)
    return "".join(
        line
        for number, line in enumerate(lines)
        if number == 0
        or not line.lstrip().startswith("#")
        or line.lstrip().startswith("# shellcheck")
    )


def bootstrap_unit() -> str:
    """The systemd unit as shipped (``notebook-bootstrap.service``)."""
    return _resource("notebook-bootstrap.service")


def backstop_units() -> tuple[str, str]:
    """The backstop's service and timer as shipped."""
    return _resource(BACKSTOP_SERVICE_NAME), _resource(BACKSTOP_TIMER_NAME)


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def server_conf(config: BootstrapConfig) -> str:
    """The text of ``/etc/notebook-hub/server.conf`` for ``config``."""
    values = (config.parameter_path, config.region, str(config.port), config.home_device)
    lines = [f"{key}={value}\n" for key, value in zip(SERVER_CONF_KEYS, values, strict=True)]
    if config.backstop_idle_seconds is not None:
        lines.append(f"{BACKSTOP_KEY}={config.backstop_idle_seconds}\n")
    return "".join(lines)


def render_user_data(config: BootstrapConfig) -> str:
    """The instance's user data: a ``#cloud-config`` document, the same for the same config.

    The script travels gzip-compressed and base64-encoded (``encoding: gz+b64``, decoded by
    cloud-init's ``write_files``): as text, with the unit and YAML around it, it would come
    close to EC2's 16 KB limit. The unit is enabled and started without waiting (``--no-block``)
    so cloud-init finishes while the bootstrap still waits for parameters or pulls the image;
    so is the backstop's timer, which then fires at every boot.
    """
    backstop_service, backstop_timer = backstop_units()
    document = {
        "write_files": [
            {
                "path": SERVER_CONF_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": server_conf(config),
            },
            {
                "path": SCRIPT_PATH,
                "owner": "root:root",
                "permissions": "0755",
                "encoding": "gz+b64",
                "content": _gzip_b64(shipped_script()),
            },
            {
                "path": UNIT_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": bootstrap_unit(),
            },
            {
                "path": BACKSTOP_SERVICE_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": backstop_service,
            },
            {
                "path": BACKSTOP_TIMER_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": backstop_timer,
            },
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "--no-block", UNIT_NAME],
            ["systemctl", "enable", "--now", "--no-block", BACKSTOP_TIMER_NAME],
        ],
    }
    text = "#cloud-config\n" + yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
    )
    size = len(text.encode("utf-8"))
    if size > MAX_USER_DATA_BYTES:  # pragma: no cover - a test keeps a wide margin
        raise AssertionError(f"user data is {size} bytes; EC2 allows {MAX_USER_DATA_BYTES}")
    return text


def _gzip_b64(text: str) -> str:
    # mtime=0: the same script gives the same bytes, so the same config gives the same user data.
    return base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")


def parse_server_conf(user_data: str | bytes) -> dict[str, str]:
    """The ``server.conf`` settings in user data from :func:`render_user_data`.

    For the local cloud's instance simulator, which must do what the real bootstrap does with
    the real user data. Raises ValueError when the user data is not ours.
    """
    if isinstance(user_data, bytes):
        user_data = user_data.decode("utf-8")
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("user data is not a #cloud-config document")
    try:
        document = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise ValueError(f"user data is not valid YAML: {exc}") from exc
    files = document.get("write_files") if isinstance(document, dict) else None
    entry = next(
        (f for f in files or [] if isinstance(f, dict) and f.get("path") == SERVER_CONF_PATH),
        None,
    )
    if entry is None or not isinstance(entry.get("content"), str):
        raise ValueError(f"user data does not write {SERVER_CONF_PATH}")
    settings: dict[str, str] = {}
    for line in entry["content"].splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{SERVER_CONF_PATH}: not a KEY=value line: {line[:60]!r}")
        settings[key] = value
    return settings


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so the unit and server.conf read as files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def bootstrap_failure(console: str, since: dt.datetime) -> str | None:
    """Why the bootstrap gave up, from the instance's console (``GetConsoleOutput``), if it
    did at or after ``since`` (the instance's LaunchTime: an earlier boot's failure is not
    this start's); the newest such line, printable characters only."""
    found = None
    for match in BOOTSTRAP_FAILED.finditer(console):
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        if at >= since - CLOCK_SKEW:
            found = _UNPRINTABLE.sub("", match.group(2)).strip()
    return found
