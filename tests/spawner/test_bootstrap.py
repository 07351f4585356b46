"""The instance's user data, and the bootstrap script and unit it installs.

The script is also run here, against a scratch directory (``NOTEBOOK_BOOTSTRAP_ROOT``) with
stub ``aws``, ``curl``, ``docker``, ``blkid``, ``mount``… that log their arguments: what it
does at a first boot, a later boot, with late parameters or a disk it must not format, and
that no secret ever appears in an argument, a log line or a file left behind.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from spawner.bootstrap import (
    BACKSTOP_KEY,
    BACKSTOP_SERVICE_NAME,
    BACKSTOP_SERVICE_PATH,
    BACKSTOP_TIMER_NAME,
    BACKSTOP_TIMER_PATH,
    MAX_USER_DATA_BYTES,
    SCRIPT_PATH,
    SERVER_CONF_KEYS,
    SERVER_CONF_PATH,
    UNIT_NAME,
    UNIT_PATH,
    BootstrapConfig,
    backstop_units,
    bootstrap_failure,
    bootstrap_script,
    bootstrap_unit,
    parse_server_conf,
    render_user_data,
    server_conf,
    shipped_script,
)
from tests.shell_stubs import run_sourced

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "spawner" / "bootstrap"
SCRIPT_FILE = PACKAGE_DIR / "notebook-bootstrap.sh"
UNIT_FILE = PACKAGE_DIR / "notebook-bootstrap.service"
CONFIG = BootstrapConfig(parameter_path="/notebook-hub/hub-prod/alice/_", region="us-east-1")

API_TOKEN = "hubtoken0123456789abcdef0123456789"
IMDS_TOKEN = "IMDSTOKEN0123456789abcdefghijkl"
ECR_PASSWORD = "ECRPASSWORD0123456789abcdefghij"
JUPYTER_IMAGE = "ghcr.io/example/notebook-jupyter@sha256:" + "a" * 64
RSTUDIO_IMAGE = "ghcr.io/example/notebook-rstudio@sha256:" + "b" * 64
SYNAPSE_PARAMETER = "/notebook-hub/hub-prod/alice/_/synapse-token"


def _document(config: BootstrapConfig = CONFIG) -> dict[str, Any]:
    text = render_user_data(config)
    return yaml.safe_load(text)


def _files(config: BootstrapConfig = CONFIG) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in _document(config)["write_files"]}


def _content(entry: dict[str, Any]) -> str:
    if entry.get("encoding") == "gz+b64":
        return gzip.decompress(base64.b64decode(entry["content"])).decode("utf-8")
    assert "encoding" not in entry
    return entry["content"]


# --------------------------------------------------------------------------------------------
# The user data
# --------------------------------------------------------------------------------------------


def test_user_data_is_a_cloud_config_installing_its_files() -> None:
    text = render_user_data(CONFIG)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert set(document) == {"write_files", "runcmd"}
    files = _files()
    assert list(files) == [
        SERVER_CONF_PATH,
        SCRIPT_PATH,
        UNIT_PATH,
        BACKSTOP_SERVICE_PATH,
        BACKSTOP_TIMER_PATH,
    ]
    assert [(f["owner"], f["permissions"]) for f in files.values()] == [
        ("root:root", "0644"),
        ("root:root", "0755"),
        ("root:root", "0644"),
        ("root:root", "0644"),
        ("root:root", "0644"),
    ]
    shipped = _content(files[SCRIPT_PATH])
    assert shipped == shipped_script()
    # the source's lines, in order, less its comments (the shebang stays)
    source = SCRIPT_FILE.read_text(encoding="utf-8").splitlines()
    kept = iter(source)
    assert all(line in kept for line in shipped.splitlines())
    assert shipped.startswith("#!/bin/bash\n")
    dropped = [line for line in source if line not in shipped.splitlines()]
    assert dropped and all(line.lstrip().startswith("#") for line in dropped)
    assert bootstrap_script() == SCRIPT_FILE.read_text(encoding="utf-8")
    assert _content(files[UNIT_PATH]) == UNIT_FILE.read_text(encoding="utf-8") == bootstrap_unit()
    assert _content(files[SERVER_CONF_PATH]) == (
        "NOTEBOOK_PARAMETER_PATH=/notebook-hub/hub-prod/alice/_\n"
        "AWS_REGION=us-east-1\n"
        "NOTEBOOK_PORT=8888\n"
        "HOME_DEVICE=/dev/sdf\n"
    )
    assert document["runcmd"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", UNIT_NAME],
        ["systemctl", "enable", "--now", "--no-block", BACKSTOP_TIMER_NAME],
    ]


def test_user_data_is_deterministic_and_small() -> None:
    first = render_user_data(CONFIG)
    assert render_user_data(BootstrapConfig(CONFIG.parameter_path, CONFIG.region)) == first
    assert len(first.encode("utf-8")) < MAX_USER_DATA_BYTES * 3 // 4  # a wide margin
    longest = BootstrapConfig("/" + "p" * 1000, "ap-southeast-2", 65535, "/dev/nvme15n1")
    assert len(render_user_data(longest).encode("utf-8")) < MAX_USER_DATA_BYTES


def test_the_renderer_takes_no_secret() -> None:
    assert list(inspect.signature(render_user_data).parameters) == ["config"]
    assert [f.name for f in fields(BootstrapConfig)] == [
        "parameter_path",
        "region",
        "port",
        "home_device",
        "backstop_idle_seconds",
    ]
    decoded = "\n".join(_content(f) for f in _files().values())
    for pattern in (r"JUPYTERHUB_API_TOKEN\s*=", r"syn_pat_", r"eyJ[A-Za-z0-9_-]{10,}", r"AKIA"):
        assert not re.search(pattern, decoded)
    # Nothing long and random-looking: names and paths only.
    assert not re.search(r"[A-Za-z0-9+/=]{40,}", decoded)


def test_server_conf_round_trip() -> None:
    configs = [
        CONFIG,
        BootstrapConfig("/notebook-hub/h/a_x40b.c/named-1/", "eu-west-2", 9999, "/dev/xvdg"),
    ]
    for config in configs:
        assert parse_server_conf(render_user_data(config)) == {
            "NOTEBOOK_PARAMETER_PATH": config.parameter_path,
            "AWS_REGION": config.region,
            "NOTEBOOK_PORT": str(config.port),
            "HOME_DEVICE": config.home_device,
        }
        assert parse_server_conf(render_user_data(config).encode()) == parse_server_conf(
            render_user_data(config)
        )
    assert list(parse_server_conf(render_user_data(CONFIG))) == list(SERVER_CONF_KEYS)


@pytest.mark.parametrize(
    "path",
    [
        "/path with spaces",
        "/quote'd",
        '/double"quoted',
        "/new\nline",
        "/$(reboot)",
        "/back`tick`",
        "/semi;colon",
        "relative/path",
        "",
        "/",
        "/" + "p" * 1001,
        "/ünïcode",
    ],
)
def test_parameter_paths_that_would_need_quoting_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="parameter_path"):
        BootstrapConfig(path, "us-east-1")


@pytest.mark.parametrize(
    "change",
    [
        {"region": "us east 1"},
        {"region": "us-east-1\n"},
        {"port": 0},
        {"port": 65536},
        {"port": True},
        {"port": "8888"},
        {"home_device": "sdf"},
        {"home_device": "/dev/sdf; rm -rf /"},
    ],
)
def test_other_bad_settings_are_refused(change: dict[str, Any]) -> None:
    values = {"parameter_path": "/p", "region": "us-east-1", **change}
    with pytest.raises(ValueError):
        BootstrapConfig(**values)


@pytest.mark.parametrize(
    "user_data",
    [
        "#!/bin/bash\necho hi\n",
        "#cloud-config\n: [\n",
        "#cloud-config\nwrite_files: []\n",
        "#cloud-config\nwrite_files:\n- path: /etc/notebook-hub/server.conf\n  content: |\n"
        "    not a setting\n",
    ],
)
def test_parse_server_conf_refuses_other_user_data(user_data: str) -> None:
    with pytest.raises(ValueError):
        parse_server_conf(user_data)


# --------------------------------------------------------------------------------------------
# The script and the unit, statically
# --------------------------------------------------------------------------------------------


def test_script_is_strict_bash_without_tracing() -> None:
    script = bootstrap_script()
    assert script.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in script
    assert not re.search(r"^\s*set\s+-[a-z]*x", script, re.MULTILINE)
    assert "shellcheck disable" not in script
    assert SERVER_CONF_PATH.removeprefix("/") in script
    for key in SERVER_CONF_KEYS:
        assert f"{key})" in script  # the script parses each key the renderer writes
    subprocess.run(["bash", "-n", str(SCRIPT_FILE)], check=True)


def test_unit_runs_the_script_at_every_boot() -> None:
    unit = bootstrap_unit()
    lines = [line.strip() for line in unit.splitlines()]
    assert f"ExecStart={SCRIPT_PATH} start" in lines
    assert f"ExecStop={SCRIPT_PATH} stop" in lines
    for line in ("Type=oneshot", "RemainAfterExit=yes", "Restart=on-failure"):
        assert line in lines
    assert "Wants=network-online.target docker.service" in lines
    assert "After=network-online.target docker.service" in lines
    assert "WantedBy=multi-user.target" in lines
    assert not any(line.startswith(("Environment=", "EnvironmentFile=")) for line in lines)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at a copy of the script.
    script = tmp_path / "notebook-bootstrap"
    shutil.copy(SCRIPT_FILE, script)
    script.chmod(0o755)
    unit = tmp_path / UNIT_NAME
    unit.write_text(bootstrap_unit().replace(SCRIPT_PATH, str(script)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT_NAME in line or "notebook-bootstrap" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# The script, run against stubs
# --------------------------------------------------------------------------------------------

_STUB_HEADER = """#!/bin/bash
set -u
state=$NOTEBOOK_TEST_STATE
{ printf '%s' "${0##*/}"; printf '\\x1f%s' "$@"; printf '\\n'; } >>"$state/calls"
"""

_STUBS = {
    "curl": r"""
if [[ " $* " == *" -X PUT "* ]]; then printf '%s' "$IMDS_TOKEN_VALUE"; exit 0; fi
header=""
for arg in "$@"; do [[ $arg == @* ]] && header=${arg#@}; done
grep -q "X-aws-ec2-metadata-token: $IMDS_TOKEN_VALUE" "$header" || exit 22
case ${!#} in
  */instance-id) printf 'i-0123456789abcdef0' ;;
  */placement/region) printf 'us-east-1' ;;
  *) exit 22 ;;
esac
""",
    "aws": r"""
name=""
for ((i = 1; i <= $#; i++)); do [[ ${!i} == --name ]] && { j=$((i + 1)); name=${!j}; }; done
case "$1 $2" in
  "ssm get-parameter")
    count=$(cat "$state/ssm-failures" 2>/dev/null || echo 0)
    if ((count > 0)); then
      echo $((count - 1)) >"$state/ssm-failures"
      echo "An error occurred (ParameterNotFound) when calling the GetParameter operation:" >&2
      exit 254
    fi
    case $name in
      */config) cat "$state/config.json" ;;
      */jupyterhub-env) cat "$state/env.json" ;;
      *) exit 254 ;;
    esac ;;
  "ecr get-login-password") printf '%s\n' "$ECR_PASSWORD_VALUE" ;;
  *) exit 2 ;;
esac
""",
    "docker": r"""
case $1 in
  container)
    [[ -f $state/container ]] || exit 1
    cat "$state/container" ;;
  image) [[ -f $state/image-present ]] ;;
  pull)
    [[ ! -f $state/pull-fails ]] && exit 0
    echo "Error: initializing source docker://$2: pinging container registry: no such host" >&2
    exit 125 ;;
  login) cat >"$state/login-stdin"; printf '%s' "${DOCKER_CONFIG:-}" >"$state/login-config" ;;
  exec)
    cat >"$state/exec-stdin"
    [[ -f $state/activity ]] || { echo "Error: No such container: notebook" >&2; exit 1; }
    cat "$state/activity" ;;
  stop) ;;
  rm) rm -f "$state/container" ;;
  run)
    if [[ -f $state/run-fails ]]; then
      echo 'Error: crun: executable file `jupyterhub-singleuser` not found in $PATH' >&2
      exit 127
    fi
    prev=""
    for arg in "$@"; do
      if [[ $prev == --env-file ]]; then
        cp "$arg" "$state/env-at-run"
        /usr/bin/stat -c %a "$arg" >"$state/env-mode"
      fi
      prev=$arg
    done
    echo run >"$state/container" ;;
  *) exit 2 ;;
esac
""",
    "blkid": 'exit "$(cat "$state/blkid-status" 2>/dev/null || echo 0)"\n',
    # Identify Controller data as an EBS volume answers: the block device mapping's name in
    # the vendor-specific area (bytes 3072-3103), padded; <state>/nvme/<device> holds it.
    "nvme": r"""
[[ $1 == id-ctrl && $2 == --raw-binary ]] || exit 2
name=$(cat "$state/nvme/${3##*/}" 2>/dev/null) || { echo "not an NVMe device" >&2; exit 1; }
python3 -c '
import sys
name = sys.argv[1].encode()
sys.stdout.buffer.write(b"\x01" * 3072 + name.ljust(32, b" ") + b"\x02" * 992)
' "$name"
""",
    "findmnt": "echo ext4\n",
    "mountpoint": "[[ -f $state/mounted ]]\n",
    "mount": '[[ ! -f $state/mount-fails ]] || exit 32\ntouch "$state/mounted"\n',
    "stat": 'cat "$state/run-fstype" 2>/dev/null || echo tmpfs\n',
    "mkfs.ext4": "",
    "resize2fs": "",
    "chown": "",
    "sleep": "",
    "shutdown": "",
}


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[list[str]]
    state: Path
    root: Path

    def commands(self, name: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def index(self, name: str, *args: str) -> int:
        return next(
            i
            for i, c in enumerate(self.calls)
            if c[0] == name and list(c[1 : 1 + len(args)]) == list(args)
        )


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("stubs")
    for name, body in _STUBS.items():
        path = directory / name
        path.write_text(_STUB_HEADER + body, encoding="utf-8")
        path.chmod(0o755)
    # The script's python3, fast and certain to exist.
    (directory / "python3").symlink_to(sys.executable)
    return directory


@pytest.fixture
def machine(tmp_path: Path, stubs: Path):
    """An instance's filesystem, with server.conf as the user data writes it."""
    root, state = tmp_path / "root", tmp_path / "state"
    state.mkdir()
    shipped = tmp_path / "notebook-bootstrap"
    shipped.write_text(shipped_script(), encoding="utf-8")
    conf = root / SERVER_CONF_PATH.removeprefix("/")
    conf.parent.mkdir(parents=True)
    conf.write_text(server_conf(CONFIG), encoding="utf-8")
    # Nitro: the root volume and the home volume as NVMe devices, numbered the other way round
    # from the block device mapping (the kernel does not promise an order).
    (root / "dev").mkdir()
    (root / "dev" / "nvme0n1").write_bytes(b"\0" * (2 << 20))
    (root / "dev" / "nvme1n1").write_bytes(b"\x7fELF-root" * 16)
    (state / "nvme").mkdir()
    (state / "nvme" / "nvme0n1").write_text("sdf")
    (state / "nvme" / "nvme1n1").write_text("/dev/xvda")
    (state / "blkid-status").write_text("2")
    (state / "config.json").write_text(
        json.dumps({"image": JUPYTER_IMAGE, "image_kind": "jupyter", "port": 8888})
    )
    (state / "env.json").write_text(
        json.dumps(
            {
                "JUPYTERHUB_API_TOKEN": API_TOKEN,
                "JUPYTERHUB_API_URL": "http://hub.internal:8081/hub/api",
                "SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME": SYNAPSE_PARAMETER,
            }
        )
    )

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        extra = env or {}
        env = {
            "PATH": f"{stubs}:{os.environ['PATH']}",
            "NOTEBOOK_BOOTSTRAP_ROOT": str(root),
            "NOTEBOOK_TEST_STATE": str(state),
            "IMDS_TOKEN_VALUE": IMDS_TOKEN,
            "ECR_PASSWORD_VALUE": ECR_PASSWORD,
            "LC_ALL": "C",
            **extra,
        }
        # what an instance runs: the script as the user data carries it
        result, calls = run_sourced(shipped, args, env, state, timeout=30)
        return Run(result.returncode, result.stderr, calls, state, root)

    run.root = root  # type: ignore[attr-defined]
    run.state = state  # type: ignore[attr-defined]
    return run


def _no_secret_anywhere(run: Run) -> None:
    for secret in (API_TOKEN, IMDS_TOKEN, ECR_PASSWORD):
        for call in run.calls:
            assert not any(secret in arg for arg in call), call
        assert secret not in run.stderr
    run_dir = run.root / "run" / "notebook-hub"
    left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert left in ([], ["docker"], ["ssh"], ["docker", "ssh"]), left
    for path in run.root.rglob("*"):
        if path.is_file() and not path.name.startswith("nvme"):
            text = path.read_text(errors="replace")
            assert API_TOKEN not in text and IMDS_TOKEN not in text, path


def test_first_boot_formats_mounts_and_runs(machine) -> None:
    run = machine()
    assert run.returncode == 0, run.stderr
    root = run.root
    device = str(root / "dev" / "nvme0n1")
    home = str(root / "srv" / "notebook-home")
    assert run.commands("mkfs.ext4") == [["-q", "-L", "notebook-home", "-m", "0", device]]
    assert run.commands("mount") == [["-o", "nodev,nosuid", device, home]]
    assert run.commands("chown") == [["1000:100", home]]
    assert run.commands("docker")[-2:] == [
        ["pull", "--quiet", JUPYTER_IMAGE],
        [
            "run",
            "--detach",
            "--name",
            "notebook",
            "--restart",
            "unless-stopped",
            "--publish",
            "127.0.0.1:8888:8888",
            "--publish",
            "127.0.0.1:2222:2222",
            "--volume",
            f"{home}:/home/jovyan",
            "--volume",
            f"{root / 'run' / 'notebook-hub' / 'ssh' / 'authorized_keys'}"
            ":/etc/notebook-ssh/authorized_keys:ro",
            "--env-file",
            str(root / "run" / "notebook-hub" / "jupyterhub.env"),
            "--tmpfs",
            "/run/jupyter:rw,nosuid,nodev,mode=1777",
            "--env",
            "JUPYTER_RUNTIME_DIR=/run/jupyter",
            "--log-driver",
            "journald",
            "--log-opt",
            "tag=notebook",
            JUPYTER_IMAGE,
            "jupyterhub-singleuser",
            "--ip=0.0.0.0",
            "--port=8888",
        ],
    ]
    # The parameters were read by name with decryption, value to a file, never an argument.
    ssm = run.commands("aws")[:2]
    assert [c[c.index("--name") + 1] for c in ssm] == [
        "/notebook-hub/hub-prod/alice/_/config",
        "/notebook-hub/hub-prod/alice/_/jupyterhub-env",
    ]
    assert all("--with-decryption" in c and c[-2:] == ["--output", "text"] for c in ssm)
    env_file = (run.state / "env-at-run").read_text()
    assert env_file.splitlines() == [
        "AWS_REGION=us-east-1",
        "AWS_DEFAULT_REGION=us-east-1",
        f"JUPYTERHUB_API_TOKEN={API_TOKEN}",
        "JUPYTERHUB_API_URL=http://hub.internal:8081/hub/api",
        f"SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME={SYNAPSE_PARAMETER}",
    ]
    assert (run.state / "env-mode").read_text().strip() == "600"
    assert stat.S_IMODE((root / "run" / "notebook-hub").stat().st_mode) == 0o700
    _no_secret_anywhere(run)


def test_later_boot_replaces_the_old_container_first_and_keeps_the_disk(machine) -> None:
    state: Path = machine.state
    (state / "blkid-status").write_text("0")
    (state / "container").write_text(JUPYTER_IMAGE)  # restarted by docker at boot
    (state / "image-present").touch()
    (state / "config.json").write_text(
        json.dumps({"image": RSTUDIO_IMAGE, "image_kind": "rstudio"})
    )
    run = machine()
    assert run.returncode == 0, run.stderr
    assert run.index("docker", "rm") < run.index("aws", "ssm") < run.index("mount")
    assert run.commands("mkfs.ext4") == [] and run.commands("chown") == []
    assert not any(c[0] == "pull" for c in run.commands("docker"))
    docker_run = run.commands("docker")[-1]
    assert docker_run[0] == "run"
    assert docker_run[-5:] == [
        RSTUDIO_IMAGE,
        "jupyterhub-singleuser",
        "--ip=0.0.0.0",
        "--port=8888",
        "--ServerApp.default_url=/rstudio",
    ]
    assert f"removing the notebook container of image {JUPYTER_IMAGE}" in run.stderr
    _no_secret_anywhere(run)


def test_ssh_keys_and_app_ports_reach_the_container(machine, tmp_path) -> None:
    """The config parameter's keys become the file the image's sshd reads (readable by the
    container's user, mounted read-only); the community's other relay ports are published
    on the instance's loopback only, as the notebook's port is."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZ1 alice@laptop"
    (machine.state / "config.json").write_text(
        json.dumps(
            {
                "image": JUPYTER_IMAGE,
                "image_kind": "jupyter",
                "relay_ports": [22, 3838, 8888, 8080],
                "ssh_authorized_keys": [key],
            }
        )
    )
    run = machine()
    assert run.returncode == 0, run.stderr
    keys = run.root / "run" / "notebook-hub" / "ssh" / "authorized_keys"
    assert keys.read_text() == key + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o644
    docker_run = run.commands("docker")[-1]
    published = [docker_run[i + 1] for i, a in enumerate(docker_run) if a == "--publish"]
    assert published == [
        "127.0.0.1:8888:8888",
        "127.0.0.1:2222:2222",
        "127.0.0.1:3838:3838",
        "127.0.0.1:8080:8080",
    ]
    assert "1 SSH key(s)" in run.stderr


@pytest.mark.parametrize(
    "config",
    [
        {"ssh_authorized_keys": ['command="sh" ssh-ed25519 AAAA x']},
        {"ssh_authorized_keys": ["ssh-ed25519 AAAA x\nssh-rsa AAAA y"]},
        {"relay_ports": ["22; rm -rf /"]},
        {"relay_ports": [70000]},
    ],
)
def test_keys_with_options_or_bad_ports_start_nothing(machine, config) -> None:
    (machine.state / "config.json").write_text(
        json.dumps({"image": JUPYTER_IMAGE, "image_kind": "jupyter", **config})
    )
    run = machine()
    assert run.returncode != 0
    assert not any(c[0] == "run" for c in run.commands("docker"))


def test_parameters_that_appear_late_are_waited_for(machine) -> None:
    (machine.state / "ssm-failures").write_text("3")
    run = machine()
    assert run.returncode == 0, run.stderr
    assert run.commands("sleep") == [["2"], ["4"], ["8"]]
    assert run.stderr.count("not readable yet (An error occurred (ParameterNotFound)") == 3
    _no_secret_anywhere(run)


def test_a_parameter_that_never_appears_is_reported_by_name(machine) -> None:
    """After the wait (600 s on an instance; none here), the start fails naming the
    parameter and why AWS refused it: what the hub shows the user."""
    (machine.state / "ssm-failures").write_text("1000")
    run = machine(env={"NOTEBOOK_PARAMETER_WAIT_SECONDS": "0"})
    assert run.returncode == 1
    assert failures(run) == [
        "cannot read parameter /notebook-hub/hub-prod/alice/_/config: An error occurred "
        "(ParameterNotFound) when calling the GetParameter operation:"
    ]
    assert not any(c[0] == "run" for c in run.commands("docker"))


def test_a_disk_with_unknown_data_is_never_formatted(machine) -> None:
    (machine.root / "dev" / "nvme0n1").write_bytes(b"\0" * 4096 + b"precious" + b"\0" * 4096)
    run = machine()
    assert run.returncode == 1
    assert "refusing to format" in run.stderr
    assert run.commands("mkfs.ext4") == [] and run.commands("mount") == []
    assert not any(c[0] == "run" for c in run.commands("docker"))
    _no_secret_anywhere(run)


def test_an_ambivalent_probe_is_never_formatted(machine) -> None:
    (machine.state / "blkid-status").write_text("8")
    run = machine()
    assert run.returncode == 1 and "blkid exit status 8" in run.stderr
    assert run.commands("mkfs.ext4") == []


def test_the_volume_is_found_by_its_attachment_name_without_asking_ec2(machine) -> None:
    """The home volume is the NVMe device whose controller names it ``sdf`` (EBS User Guide,
    "Amazon EBS and NVMe"), whatever its number; without NVMe, the Xen name or Amazon
    Linux's udev link. EC2 is never asked: the instance role cannot describe instances
    (trust review, finding 3), and nothing in the script tries."""
    run = machine()
    assert run.returncode == 0, run.stderr
    assert run.commands("mount")[0][2] == str(machine.root / "dev" / "nvme0n1")
    assert not any(c[0] == "ec2" for c in run.commands("aws"))
    assert sorted(c[-1] for c in run.commands("nvme"))[0].endswith("nvme0n1")

    # "/dev/sdf" as some volumes spell it, padded with NULs instead of spaces.
    for path in (machine.state / "mounted", machine.state / "nvme" / "nvme0n1"):
        path.unlink()
    (machine.state / "nvme" / "nvme3n1").write_text("/dev/sdf")
    (machine.root / "dev" / "nvme3n1").write_bytes(b"\0" * 4096)
    run = machine()
    assert run.returncode == 0, run.stderr
    assert run.commands("mount")[0][2] == str(machine.root / "dev" / "nvme3n1")

    # Xen: no NVMe controller names it; the device is xvdf.
    (machine.state / "mounted").unlink()
    for device in ("nvme0n1", "nvme1n1", "nvme3n1"):
        (machine.root / "dev" / device).unlink()
    (machine.root / "dev" / "xvdf").write_bytes(b"\0" * 4096)
    run = machine()
    assert run.returncode == 0, run.stderr
    assert run.commands("mount")[0][2] == str(machine.root / "dev" / "xvdf")


def failures(run: Run) -> list[str]:
    """What the bootstrap said when it gave up (journald's error priority, as ``die``
    writes it; on an instance the same line goes to the console)."""
    return [line[3:] for line in run.stderr.splitlines() if line.startswith("<3>")]


def test_a_home_volume_that_never_appears_is_reported(machine) -> None:
    (machine.state / "nvme" / "nvme0n1").write_text("sdg")
    run = machine()
    assert run.returncode == 1
    # said once, by the subshell that looked (not again, less precisely, by the script)
    assert failures(run) == ["home volume /dev/sdf is not attached"]
    assert run.commands("mkfs.ext4") == [] and run.commands("mount") == []
    # The root volume was looked at and left alone.
    assert [c[-1].rsplit("/", 1)[-1] for c in run.commands("nvme")][:2] == ["nvme0n1", "nvme1n1"]


def test_secrets_never_touch_a_persistent_disk(machine) -> None:
    (machine.state / "run-fstype").write_text("ext2/ext3")
    run = machine()
    assert run.returncode == 1 and "not tmpfs" in run.stderr
    assert run.commands("aws") == []


def test_a_bad_environment_parameter_starts_nothing(machine) -> None:
    (machine.state / "env.json").write_text(json.dumps({"A": "one\nB=two"}))
    run = machine()
    assert run.returncode == 1 and "not a one-line string" in run.stderr
    assert not any(c[0] == "run" for c in run.commands("docker"))


def test_a_missing_server_conf_is_reported(machine) -> None:
    (machine.root / SERVER_CONF_PATH.removeprefix("/")).write_text("AWS_REGION=us-east-1\n")
    run = machine()
    assert run.returncode == 1 and "NOTEBOOK_PARAMETER_PATH" in run.stderr
    assert run.commands("aws") == []


def test_an_image_that_cannot_run_is_reported_with_the_engines_reason(machine) -> None:
    """A bad image (here one without ``jupyterhub-singleuser``) fails the start at once with
    the container engine's reason, which the hub shows the user."""
    (machine.state / "run-fails").touch()
    run = machine()
    assert run.returncode == 1
    assert failures(run) == [
        f"cannot run the notebook container of {JUPYTER_IMAGE}: Error: crun: executable file "
        "`jupyterhub-singleuser` not found in $PATH"
    ]
    _no_secret_anywhere(run)


def test_an_image_that_cannot_be_pulled_is_reported_after_five_attempts(machine) -> None:
    (machine.state / "pull-fails").touch()
    run = machine()
    assert run.returncode == 1
    assert len([c for c in run.commands("docker") if c[0] == "pull"]) == 5
    assert run.commands("sleep") == [["10"], ["20"], ["30"], ["40"]]  # none after the last
    [failure] = failures(run)
    assert failure.startswith(f"cannot pull {JUPYTER_IMAGE}: Error: initializing source")
    assert not any(c[0] == "run" for c in run.commands("docker"))


def test_a_command_that_fails_without_a_message_is_reported_with_its_step(machine) -> None:
    """Under ``set -e`` a failing command ends the script; the start must still fail with a
    reason (the hub reads it from the console), naming what the bootstrap was doing."""
    (machine.state / "mount-fails").touch()
    run = machine()
    assert run.returncode == 32  # mount's own
    assert failures(run) == [
        "mounting the home volume failed (exit status 32); the unit notebook-bootstrap's "
        "journal has the rest"
    ]
    assert not any(c[0] == "run" for c in run.commands("docker"))
    _no_secret_anywhere(run)


def test_private_ecr_images_log_in_through_stdin_on_tmpfs(machine) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/notebook@sha256:" + "c" * 64
    (machine.state / "config.json").write_text(json.dumps({"image": image}))
    run = machine()
    assert run.returncode == 0, run.stderr
    assert (machine.state / "login-stdin").read_text().strip() == ECR_PASSWORD
    assert (machine.state / "login-config").read_text() == str(
        machine.root / "run" / "notebook-hub" / "docker"
    )
    _no_secret_anywhere(run)


def test_stop_removes_the_container(machine) -> None:
    (machine.state / "container").write_text(JUPYTER_IMAGE)
    run = machine("stop")
    assert run.returncode == 0, run.stderr
    assert [c[0] for c in run.commands("docker")] == ["container", "stop", "rm"]
    assert not (machine.state / "container").exists()
    run = machine("stop")  # nothing left: nothing to do
    assert run.returncode == 0 and [c[0] for c in run.commands("docker")] == ["container"]


# --------------------------------------------------------------------------------------------
# The idle backstop: notebook-backstop.timer runs `notebook-bootstrap backstop`
# --------------------------------------------------------------------------------------------


def test_the_backstop_limit_goes_to_server_conf_only_when_set() -> None:
    config = BootstrapConfig(CONFIG.parameter_path, CONFIG.region, backstop_idle_seconds=7200)
    conf = _content(_files(config)[SERVER_CONF_PATH])
    assert conf.endswith(f"HOME_DEVICE=/dev/sdf\n{BACKSTOP_KEY}=7200\n")
    assert parse_server_conf(render_user_data(config))[BACKSTOP_KEY] == "7200"
    assert BACKSTOP_KEY not in parse_server_conf(render_user_data(CONFIG))
    assert len(render_user_data(config).encode()) < MAX_USER_DATA_BYTES * 3 // 4
    for bad in (0, -1, True, 3600.0, "3600", 10**10):
        with pytest.raises(ValueError, match="backstop_idle_seconds"):
            BootstrapConfig(CONFIG.parameter_path, CONFIG.region, backstop_idle_seconds=bad)


def test_the_backstop_units() -> None:
    service, timer = backstop_units()
    service_lines = [line.strip() for line in service.splitlines()]
    assert f"ExecStart={SCRIPT_PATH} backstop" in service_lines
    assert "Type=oneshot" in service_lines
    assert not any(line.startswith("[Install]") for line in service_lines)  # the timer's
    timer_lines = [line.strip() for line in timer.splitlines()]
    for line in ("OnBootSec=5min", "OnUnitActiveSec=5min", "WantedBy=timers.target"):
        assert line in timer_lines
    assert _files()[BACKSTOP_SERVICE_PATH]["content"] == service
    assert _files()[BACKSTOP_TIMER_PATH]["content"] == timer
    assert (PACKAGE_DIR / BACKSTOP_SERVICE_NAME).read_text(encoding="utf-8") == service


def test_systemd_analyze_verify_the_backstop(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = tmp_path / "notebook-bootstrap"
    shutil.copy(SCRIPT_FILE, script)
    script.chmod(0o755)
    service, timer = backstop_units()
    (tmp_path / BACKSTOP_SERVICE_NAME).write_text(service.replace(SCRIPT_PATH, str(script)))
    (tmp_path / BACKSTOP_TIMER_NAME).write_text(timer)
    result = subprocess.run(
        [
            analyze,
            "verify",
            str(tmp_path / BACKSTOP_TIMER_NAME),
            str(tmp_path / BACKSTOP_SERVICE_NAME),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "notebook-" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_bootstrap_reads_past_the_backstop_key(machine) -> None:
    conf = machine.root / SERVER_CONF_PATH.removeprefix("/")
    conf.write_text(conf.read_text() + f"{BACKSTOP_KEY}=7200\n")
    run = machine()
    assert run.returncode == 0, run.stderr
    assert "ignoring unknown key" not in run.stderr


def _boot(machine, *, uptime: float, activity_age: float | None = None) -> None:
    """The instance booted ``uptime`` seconds ago; its notebook's last activity was
    ``activity_age`` seconds ago (None: no notebook container answers)."""
    proc = machine.root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "uptime").write_text(f"{uptime:.2f} 12345.67\n")
    activity = machine.state / "activity"
    if activity_age is None:
        activity.unlink(missing_ok=True)
    else:
        activity.write_text(f"{int(time.time() - activity_age)}\n")


def _backstop_log(run: Run) -> str:
    path = run.root / "var" / "log" / "notebook-backstop.log"
    return path.read_text() if path.exists() else ""


def test_the_backstop_stops_an_instance_nobody_used_a_day_after_its_boot(machine) -> None:
    _boot(machine, uptime=86400 - 120)
    run = machine("backstop")
    assert run.returncode == 0, run.stderr
    assert run.commands("shutdown") == []
    assert "idle for 862" in run.stderr and "of 86400 s" in run.stderr
    assert "No such container" in run.stderr  # said, not fatal

    _boot(machine, uptime=86400 + 5)
    run = machine("backstop")
    assert run.returncode == 0, run.stderr
    assert run.commands("shutdown") == [["-h", "now"]]
    line = _backstop_log(run).strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ stopping this instance: no notebook activity for "
        r"8640[5-9] s, since the boot at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(limit 86400 s\); "
        r"the notebook has not answered since the boot \(Error: No such container: notebook \)",
        line,
    ), line
    assert "stopping this instance" in run.stderr


def test_the_backstop_asks_the_notebook_inside_its_container(machine) -> None:
    conf = machine.root / SERVER_CONF_PATH.removeprefix("/")
    conf.write_text(conf.read_text() + f"{BACKSTOP_KEY}=3600\n")
    booted = time.time()
    _boot(machine, uptime=10 * 86400, activity_age=600)
    reported = time.time()  # the activity written is 600 s before a moment in between
    run = machine("backstop")
    assert run.returncode == 0, run.stderr
    assert run.commands("shutdown") == []
    assert run.commands("docker") == [["exec", "-i", "notebook", "python3", "-"]]
    asked = (machine.state / "exec-stdin").read_text()
    # The token is read inside the container; the host never sees it.
    assert "os.environ" in asked and "JUPYTERHUB_API_TOKEN" in asked and "api/status" in asked
    assert API_TOKEN not in asked
    state = machine.root / "run" / "notebook-backstop"
    remembered = int((state / "last-activity").read_text())
    assert int(booted) - 600 - 1 <= remembered <= reported - 600 + 1
    assert "idle for 60" in run.stderr and "of 3600 s" in run.stderr

    # The notebook stops answering (say, the hub is gone and cannot check its token): the
    # activity it last reported stands, and an hour after it the instance stops.
    (state / "last-activity").write_text(f"{int(time.time() - 3700)}\n")
    _boot(machine, uptime=10 * 86400, activity_age=None)
    run = machine("backstop")
    assert run.commands("shutdown") == [["-h", "now"]]
    line = _backstop_log(run)
    assert "no notebook activity for 370" in line and "since its last activity at" in line
    assert "(limit 3600 s); the notebook answered at " in line
    assert ", not since (Error: No such container: notebook )" in line


def test_the_backstop_ignores_activity_from_before_the_boot_or_the_future(machine) -> None:
    _boot(machine, uptime=86400 + 60, activity_age=10 * 86400)  # a clock gone wrong
    run = machine("backstop")
    assert run.commands("shutdown") == [["-h", "now"]]
    assert "since the boot at" in _backstop_log(run)

    machine.state.joinpath("activity").write_text(f"{int(time.time()) + 86400}\n")
    (machine.root / "var" / "log" / "notebook-backstop.log").unlink()
    run = machine("backstop")
    assert run.commands("shutdown") == []  # "now" at the latest: not idle
    assert "idle for 0 s" in run.stderr


def test_the_backstop_limit_in_server_conf_must_be_a_number(machine) -> None:
    conf = machine.root / SERVER_CONF_PATH.removeprefix("/")
    conf.write_text(conf.read_text() + f"{BACKSTOP_KEY}=soon; reboot\n")
    _boot(machine, uptime=7200)
    run = machine("backstop")
    assert run.returncode == 0 and run.commands("shutdown") == []
    assert "of 86400 s" in run.stderr


def test_the_bootstrap_failure_on_the_console_is_read_by_time() -> None:
    """``die`` writes "notebook-bootstrap: failed at <UTC time>: <why>" on the console; the
    hub takes the newest one stamped since the instance's LaunchTime (less a few seconds of
    clock skew), printable characters only (the instance writes what it likes there)."""
    since = dt.datetime(2026, 12, 7, 14, 0, tzinfo=dt.UTC)
    console = (
        "notebook-bootstrap: failed at 2026-12-07T13:59:30Z: from an earlier boot\n"
        "notebook-bootstrap[185]: required command docker is not installed\n"
        "notebook-bootstrap: failed at 2026-12-07T13:59:57Z: within the skew\n"
        "notebook-bootstrap: failed at 2026-12-07T14:02:00Z: cannot \x1b[31mpull\x07 img\r\n"
        "junk notebook-bootstrap: failed at 2026-12-07T14:03:00Z: not at a line start\n"
    )
    assert bootstrap_failure(console, since) == "cannot [31mpull img"
    assert bootstrap_failure(console.splitlines()[2], since) == "within the skew"
    assert bootstrap_failure(console.splitlines()[0], since) is None
    assert bootstrap_failure("", since) is None
