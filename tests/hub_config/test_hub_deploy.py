"""The hub host's installation (``hub_config/deploy/``) and the user data that starts it.

``install-hub.sh`` and ``fetch-hub-secrets.sh`` are run here against a scratch root
(``SNH_INSTALL_ROOT``) with stub commands that log their arguments, like the notebook
bootstrap's tests (``tests/spawner/test_bootstrap.py``): the argument checking, the files
they write (``hub.env`` holds only variables ``hub_config/settings.py`` knows), the data
volume found by its NVMe serial and formatted only when empty, and that the secrets reach
only a tmpfs file, mode 0600, never an argument or a log line. The units are checked with
``systemd-analyze verify`` (systemd.unit(5), systemd.exec(5)) where it is installed. What
cannot run here: Amazon Linux itself, pip and npm against the registries, systemd starting
the units, and the AWS calls (docs/deployment.md says so).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub_config.infrastructure import sources
from hub_config.settings import VARIABLES
from tests.shell_stubs import run_sourced
from tests.test_shell_scripts import shell_scripts

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "hub_config" / "deploy"
INSTALL = DEPLOY / "install-hub.sh"
FETCH = DEPLOY / "fetch-hub-secrets.sh"
UNITS = (
    "synapse-notebook-hub.service",
    "synapse-notebook-hub-reaper.service",
    "synapse-notebook-hub-reaper.timer",
)

CLIENT_SECRET = "clientSECRET0123456789abcdefghijklmnop"
CRYPT_KEY = "0123456789abcdef" * 4
DB_URL = "postgresql+psycopg://hub:pa%24%24word@db.internal:5432/hub"
IMDS_TOKEN = "IMDSTOKEN0123456789abcdefghijkl"
SECRETS = (CLIENT_SECRET, CRYPT_KEY, DB_URL, IMDS_TOKEN)

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"
CLIENT_ARN = ARN + "SynapseClientSecret-AbCdEf"
CRYPT_ARN = ARN + "CryptKeySecret-GhIjKl"
DB_ARN = ARN + "synapse-notebook-hub/db-url-MnOpQr"
VOLUME_ID = "vol-0123456789abcdef0"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"

FULL_ARGUMENTS = (
    "--public-url",
    "https://notebooks.example.org",
    "--client-id",
    "100042",
    "--admin-contact",
    "hub-admins@example.org",
    "--break-glass-admins",
    "ops.lead,ops-two",
    "--communities-file",
    "hub_config/communities.yaml",
    "--region",
    "us-east-1",
    "--hub-id",
    "synapse-notebook-hub",
    "--parameter-prefix",
    "/synapse-notebook-hub",
    "--parameter-kms-key-id",
    KEY_ARN,
    "--hub-api-port",
    "8081",
    "--proxy-port",
    "8000",
    "--data-volume-id",
    VOLUME_ID,
    "--client-secret-arn",
    CLIENT_ARN,
    "--crypt-key-secret-arn",
    CRYPT_ARN,
    "--db-url-secret-arn",
    "",
)


# --------------------------------------------------------------------------------------------
# Static checks: shellcheck, the units, the env template
# --------------------------------------------------------------------------------------------


def test_the_scripts_are_shellchecked() -> None:
    """tests/test_shell_scripts.py runs ShellCheck over every script it finds: these must be
    among them (new files count as soon as git sees them)."""
    found = shell_scripts()
    for script in ("install-hub.sh", "fetch-hub-secrets.sh"):
        assert f"hub_config/deploy/{script}" in found


@pytest.mark.parametrize("script", [INSTALL, FETCH])
def test_scripts_are_strict_bash_without_tracing(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in text
    assert not re.search(r"^\s*set\s+-[a-z]*x", text, re.MULTILINE)
    assert "shellcheck disable" not in text
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def _unit(name: str) -> list[str]:
    return [line.strip() for line in (DEPLOY / name).read_text().splitlines()]


def test_hub_unit_runs_jupyterhub_with_secrets_on_tmpfs_only() -> None:
    """systemd.exec(5): RuntimeDirectory= is created under /run (tmpfs) for the unit and
    removed when it stops; EnvironmentFile= is read before each command is executed, so a
    file written by ExecStartPre= is seen by ExecStart= (a "-" prefix: missing is fine)."""
    lines = _unit("synapse-notebook-hub.service")
    assert "User=synapse-notebook-hub" in lines
    assert "RuntimeDirectory=synapse-notebook-hub" in lines
    assert "RuntimeDirectoryMode=0700" in lines
    assert "UMask=0077" in lines
    assert "EnvironmentFile=/etc/synapse-notebook-hub/hub.env" in lines
    assert "EnvironmentFile=-/run/synapse-notebook-hub/secrets.env" in lines
    pre = [line for line in lines if line.startswith("ExecStartPre=")]
    assert pre == [
        "ExecStartPre=/opt/synapse-notebook-hub/current/hub_config/deploy/fetch-hub-secrets.sh"
        " /etc/synapse-notebook-hub/secrets.conf /run/synapse-notebook-hub/secrets.env"
    ]
    assert (
        "ExecStart=/opt/synapse-notebook-hub/venv/bin/jupyterhub"
        " -f /opt/synapse-notebook-hub/current/jupyterhub_config.py"
    ) in lines
    assert "Restart=on-failure" in lines
    assert "RequiresMountsFor=/var/lib/synapse-notebook-hub" in lines
    assert "ReadWritePaths=/var/lib/synapse-notebook-hub" in lines
    assert "ProtectSystem=strict" in lines and "NoNewPrivileges=yes" in lines
    # node's JIT writes executable memory: this option would stop the proxy.
    assert not any(line.startswith("MemoryDenyWriteExecute") for line in lines)


def test_reaper_runs_daily_with_the_hubs_settings_and_no_secret() -> None:
    service = _unit("synapse-notebook-hub-reaper.service")
    assert "ExecStart=/opt/synapse-notebook-hub/venv/bin/snh reap" in service
    assert "EnvironmentFile=/etc/synapse-notebook-hub/hub.env" in service
    assert "User=synapse-notebook-hub" in service and "Type=oneshot" in service
    assert not any("secrets" in line for line in service if not line.startswith("#"))
    timer = _unit("synapse-notebook-hub-reaper.timer")
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that the commands exist: point them at copies under tmp_path.
    opt = tmp_path / "opt"
    for path in (
        "current/hub_config/deploy/fetch-hub-secrets.sh",
        "venv/bin/jupyterhub",
        "venv/bin/python",
        "venv/bin/snh",
    ):
        target = opt / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/synapse-notebook-hub", str(opt))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "synapse-notebook-hub" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def _template_variables() -> list[str]:
    lines = (DEPLOY / "hub.env").read_text().splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def test_env_template_names_only_known_variables() -> None:
    names = _template_variables()
    assert len(names) == len(set(names))
    unknown = set(names) - set(VARIABLES) - {"AWS_REGION"}
    assert not unknown, f"hub.env sets variables hub_config/settings.py does not know: {unknown}"
    assert {
        "SNH_PUBLIC_URL",
        "SNH_COMMUNITIES_FILE",
        "SNH_STATE_DIR",
        "SNH_HUB_ID",
        "SNH_HUB_BIND_URL",
        "SNH_HUB_CONNECT_URL",
        "SNH_PARAMETER_PREFIX",
        "SNH_PARAMETER_KMS_KEY_ID",
        "AWS_REGION",
    } <= set(names)


def test_env_template_holds_no_secret() -> None:
    """The secrets come from fetch-hub-secrets.sh, on tmpfs; hub.env is an ordinary file."""
    names = set(_template_variables())
    assert not names & {"SYNAPSE_CLIENT_SECRET", "JUPYTERHUB_CRYPT_KEY", "SNH_DB_URL"}


def test_only_the_fetch_script_reads_secrets_and_it_writes_to_run() -> None:
    """Read the scripts: no other file of the host's installation touches a secret value,
    and the one that does is given an output under /run by the unit."""
    for path in DEPLOY.iterdir():
        text = path.read_text()
        reads = "get-secret-value" in text
        assert reads == (path.name == "fetch-hub-secrets.sh"), path.name
    install = INSTALL.read_text()
    for name in ("SYNAPSE_CLIENT_SECRET", "JUPYTERHUB_CRYPT_KEY", "SNH_DB_URL"):
        assert not re.search(rf"\b{name}\b", install), name


# --------------------------------------------------------------------------------------------
# The scripts, run against stubs
# --------------------------------------------------------------------------------------------

_STUB_HEADER = """#!/bin/bash
set -u
state=$SNH_TEST_STATE
{ printf '%s' "${0##*/}"; printf '\\x1f%s' "$@"; printf '\\n'; } >>"$state/calls"
"""

_STUBS = {
    "curl": r"""
if [[ " $* " == *" -X PUT "* ]]; then printf '%s' "$IMDS_TOKEN_VALUE"; exit 0; fi
cat >"$state/curl-stdin"
grep -qx "X-aws-ec2-metadata-token: $IMDS_TOKEN_VALUE" "$state/curl-stdin" || exit 22
case ${!#} in
  */local-ipv4) printf '10.60.32.17' ;;
  *) exit 22 ;;
esac
""",
    "aws": r"""
id=""
for ((i = 1; i <= $#; i++)); do [[ ${!i} == --secret-id ]] && { j=$((i + 1)); id=${!j}; }; done
name=${id##*:}
file=$state/secret-${name//\//_}
if [[ ! -f $file ]]; then
  echo "An error occurred (ResourceNotFoundException) when calling the GetSecretValue" \
    "operation: Secrets Manager can't find the specified secret value for staging label:" \
    "AWSCURRENT" >&2
  exit 254
fi
cat "$file"; echo
""",
    "python3.11": r"""
# python3.11 -m venv DIR
dir=${!#}
mkdir -p "$dir/bin"
printf '#!/bin/bash\n' >"$dir/bin/python"
printf '#!/bin/bash\nexec "%s/pip" "$@"\n' "$SNH_TEST_STUBS" >"$dir/bin/pip"
chmod +x "$dir/bin/python" "$dir/bin/pip"
""",
    "pip": "",
    "npm": "",
    "node": "",
    "blkid": r"""
if [[ " $* " == *" -s UUID "* ]]; then echo 6a0e0d52-1b7c-4a53-9a76-0c1d2e3f4a5b; exit 0; fi
exit "$(cat "$state/blkid-status" 2>/dev/null || echo 0)"
""",
    "lsblk": 'cat "$state/lsblk" 2>/dev/null || true\n',
    "mountpoint": "[[ -f $state/mounted ]]\n",
    "mount": 'touch "$state/mounted"\n',
    "mkfs.ext4": "",
    "systemctl": "",
    "getent": "[[ -f $state/user ]]\n",
    "useradd": 'touch "$state/user"\n',
    "chown": "",
    "sleep": "",
    "stat": 'cat "$state/fstype" 2>/dev/null || echo tmpfs\n',
}


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[list[str]]
    root: Path
    state: Path

    def commands(self, name: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def etc(self, name: str) -> str:
        return (self.root / "etc" / "synapse-notebook-hub" / name).read_text()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("stubs")
    for name, body in _STUBS.items():
        path = directory / name
        path.write_text(_STUB_HEADER + body, encoding="utf-8")
        path.chmod(0o755)
    return directory


@pytest.fixture
def host(tmp_path: Path, stubs: Path):
    """A hub host's filesystem with the data volume attached as an NVMe device (a file of
    zeros here, linked by the serial Nitro gives it: the volume id without its dash)."""
    root, state = tmp_path / "root", tmp_path / "state"
    state.mkdir()
    by_id = root / "dev" / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (root / "dev" / "nvme1n1").write_bytes(b"\0" * (2 << 20))
    (by_id / ("nvme-Amazon_Elastic_Block_Store_" + VOLUME_ID.replace("-", ""))).symlink_to(
        root / "dev" / "nvme1n1"
    )
    (state / "blkid-status").write_text("2")

    def run(script: Path, *args: str, wait: int = 0) -> Run:
        env = {
            "PATH": f"{stubs}:{os.environ['PATH']}",
            "SNH_INSTALL_ROOT": str(root),
            "SNH_TEST_STATE": str(state),
            "SNH_TEST_STUBS": str(stubs),
            "SNH_DATA_VOLUME_WAIT_SECONDS": str(wait),
            "IMDS_TOKEN_VALUE": IMDS_TOKEN,
            "LC_ALL": "C",
        }
        result, calls = run_sourced(script, args, env, state, timeout=60)
        return Run(result.returncode, result.stderr, calls, root, state)

    run.root = root  # type: ignore[attr-defined]
    run.state = state  # type: ignore[attr-defined]
    return run


def _no_secret_anywhere(run: Run) -> None:
    for secret in SECRETS:
        for call in run.calls:
            assert not any(secret in arg for arg in call), call
        assert secret not in run.stderr
    for path in run.root.rglob("*"):
        if path.is_file() and "run" not in path.relative_to(run.root).parts[:1]:
            text = path.read_text(errors="replace")
            assert not any(secret in text for secret in SECRETS), path


def test_install_first_boot(host) -> None:
    run = host(INSTALL, *FULL_ARGUMENTS)
    assert run.returncode == 0, run.stderr
    root = run.root
    device = str(root / "dev" / "nvme1n1")
    state_dir = str(root / "var" / "lib" / "synapse-notebook-hub")

    assert run.commands("useradd") == [
        [
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/synapse-notebook-hub",
            "--no-create-home",
            "--shell",
            "/sbin/nologin",
            "synapse-notebook-hub",
        ]
    ]
    assert run.commands("mkfs.ext4") == [["-q", "-L", "snh-state", device]]
    assert run.commands("mount") == [["-o", "nodev,nosuid,noexec", device, state_dir]]
    assert ["synapse-notebook-hub:synapse-notebook-hub", state_dir] in run.commands("chown")
    assert (root / "etc" / "fstab").read_text() == (
        "UUID=6a0e0d52-1b7c-4a53-9a76-0c1d2e3f4a5b /var/lib/synapse-notebook-hub ext4"
        " defaults,nofail,nodev,nosuid,noexec 0 2\n"
    )

    venv = root / "opt" / "synapse-notebook-hub" / "venv"
    assert run.commands("python3.11") == [["-m", "venv", str(venv)]]
    assert run.commands("pip") == [
        ["install", "--quiet", "--disable-pip-version-check", "--upgrade", str(ROOT)]
    ]
    assert run.commands("npm") == [
        ["ci", "--prefix", str(ROOT), "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"]
    ]
    assert (root / "opt" / "synapse-notebook-hub" / "current").resolve() == ROOT

    assert run.etc("hub.env").splitlines()[1:] == [
        "SNH_PUBLIC_URL=https://notebooks.example.org",
        "SYNAPSE_CLIENT_ID=100042",
        "SNH_ADMIN_CONTACT=hub-admins@example.org",
        "SNH_BREAK_GLASS_ADMINS=ops.lead,ops-two",
        "SNH_COMMUNITIES_FILE=/opt/synapse-notebook-hub/current/hub_config/communities.yaml",
        "SNH_STATE_DIR=/var/lib/synapse-notebook-hub",
        "SNH_HUB_ID=synapse-notebook-hub",
        "SNH_BIND_URL=http://:8000",
        "SNH_HUB_BIND_URL=http://0.0.0.0:8081",
        "SNH_HUB_CONNECT_URL=http://10.60.32.17:8081",
        "SNH_PARAMETER_PREFIX=/synapse-notebook-hub",
        f"SNH_PARAMETER_KMS_KEY_ID={KEY_ARN}",
        "AWS_REGION=us-east-1",
    ]
    assert run.etc("secrets.conf").splitlines()[2:] == [
        f"CLIENT_SECRET_ARN={CLIENT_ARN}",
        f"CRYPT_KEY_SECRET_ARN={CRYPT_ARN}",
        "DB_URL_SECRET_ARN=",
    ]
    # The IMDS token went to curl on its standard input, not in an argument.
    assert not any(IMDS_TOKEN in arg for call in run.calls for arg in call)

    unit_dir = root / "etc" / "systemd" / "system"
    for name in UNITS:
        assert (unit_dir / name).read_text() == (DEPLOY / name).read_text()
        assert stat.S_IMODE((unit_dir / name).stat().st_mode) == 0o644
    assert run.commands("systemctl") == [
        ["daemon-reload"],
        ["enable", "synapse-notebook-hub.service", "synapse-notebook-hub-reaper.timer"],
        ["restart", "synapse-notebook-hub.service"],
        ["restart", "synapse-notebook-hub-reaper.timer"],
    ]
    _no_secret_anywhere(run)


def test_hub_env_as_the_hub_reads_it(host, tmp_path: Path) -> None:
    """The written file, read as the environment it is, passes the hub's own settings check
    (with the secrets fetch-hub-secrets.sh adds and the checkout's communities file)."""
    from hub_config.settings import HubSettings

    run = host(INSTALL, *FULL_ARGUMENTS)
    assert run.returncode == 0, run.stderr
    environ = dict(line.split("=", 1) for line in run.etc("hub.env").splitlines()[1:])
    environ["SNH_COMMUNITIES_FILE"] = str(ROOT / "hub_config" / "communities.yaml")
    environ["SNH_STATE_DIR"] = str(tmp_path / "state-dir")
    environ |= {"SYNAPSE_CLIENT_SECRET": CLIENT_SECRET, "JUPYTERHUB_CRYPT_KEY": CRYPT_KEY}
    settings = HubSettings.from_environ(environ)
    assert settings.hub_connect_url == "http://10.60.32.17:8081"
    assert settings.hub_bind_url == "http://0.0.0.0:8081"
    assert settings.parameter_kms_key_id == KEY_ARN
    assert settings.oauth_callback_url == "https://notebooks.example.org/hub/oauth_callback"


def test_install_again_keeps_settings_and_data(host) -> None:
    """An upgrade: no arguments, the saved settings; the volume, formatted and mounted, is
    neither formatted nor mounted again; the user exists; the hub is restarted."""
    first = host(INSTALL, *FULL_ARGUMENTS)
    assert first.returncode == 0, first.stderr
    hub_env = first.etc("hub.env")
    (first.state / "blkid-status").write_text("0")
    again = host(INSTALL)
    assert again.returncode == 0, again.stderr
    assert again.etc("hub.env") == hub_env
    assert again.commands("mkfs.ext4") == again.commands("mount") == []
    assert again.commands("useradd") == []
    assert again.commands("python3.11") == []  # the virtualenv exists
    assert ["restart", "synapse-notebook-hub.service"] in again.commands("systemctl")
    assert (again.root / "etc" / "fstab").read_text().count("/var/lib/synapse-notebook-hub") == 1


def test_install_with_a_database_adds_psycopg_and_the_secret_arn(host) -> None:
    first = host(INSTALL, *FULL_ARGUMENTS)
    assert first.returncode == 0, first.stderr
    run = host(INSTALL, "--db-url-secret-arn", DB_ARN)
    assert run.returncode == 0, run.stderr
    assert run.commands("pip")[-1] == [
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        "psycopg[binary]>=3.3",
    ]
    assert f"DB_URL_SECRET_ARN={DB_ARN}" in run.etc("secrets.conf").splitlines()
    assert f"DB_URL_SECRET_ARN={DB_ARN}" in run.etc("install.conf").splitlines()


def test_install_without_settings_names_each_missing_one(host) -> None:
    run = host(INSTALL)
    assert run.returncode == 2
    for option in (
        "--public-url",
        "--client-id",
        "--region",
        "--data-volume-id",
        "--client-secret-arn",
        "--crypt-key-secret-arn",
    ):
        assert f"{option} is required" in run.stderr, option
    assert "--hub-id is required" not in run.stderr  # it has a default
    assert run.calls == []
    assert not (run.root / "etc").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--public-url", "https://notebooks.example.org/$(reboot)"),
        ("--public-url", "notebooks.example.org"),
        ("--client-id", "100042'; rm -rf /"),
        ("--region", "us east 1"),
        ("--hub-id", "Hub_One"),
        ("--parameter-prefix", "synapse-notebook-hub"),
        ("--proxy-port", "70000"),
        ("--data-volume-id", "/dev/nvme1n1"),
        ("--client-secret-arn", "arn:aws:s3:::bucket/secret"),
        ("--db-url-secret-arn", "postgresql://hub:secret@db/hub"),
        ("--communities-file", "../../etc/passwd.yaml"),
        ("--communities-file", "hub_config/no-such-file.yaml"),
        ("--admin-contact", "Hub admins <ops@example.org>"),
        ("--break-glass-admins", "ops.lead, ops-two"),
        ("--break-glass-admins", "Ops.Lead"),
        ("--break-glass-admins", "ops.lead,"),
    ],
)
def test_install_refuses_bad_values(host, option: str, value: str) -> None:
    arguments = list(FULL_ARGUMENTS)
    if option in arguments:
        arguments[arguments.index(option) + 1] = value
    else:
        arguments += [option, value]
    run = host(INSTALL, *arguments)
    assert run.returncode == 2, run.stderr
    assert option in run.stderr
    assert run.calls == []
    assert not (run.root / "etc").exists()


@pytest.mark.parametrize("arguments", [["--no-such-option", "x"], ["--public-url"], ["stray"]])
def test_install_refuses_unknown_arguments(host, arguments: list[str]) -> None:
    run = host(INSTALL, *arguments)
    assert run.returncode != 0
    assert "unknown" in run.stderr
    assert run.calls == []


def test_install_refuses_to_format_a_volume_with_unknown_data(host) -> None:
    (host.root / "dev" / "nvme1n1").write_bytes(b"\1" * 4096 + b"\0" * 4096)
    run = host(INSTALL, *FULL_ARGUMENTS)
    assert run.returncode == 1
    assert "refusing to format" in run.stderr
    assert run.commands("mkfs.ext4") == [] and run.commands("mount") == []


def test_install_waits_for_the_data_volume_then_says_which(host) -> None:
    for link in (host.root / "dev" / "disk" / "by-id").iterdir():
        link.unlink()
    run = host(INSTALL, *FULL_ARGUMENTS, wait=0)
    assert run.returncode == 1
    assert f"data volume {VOLUME_ID} is not attached" in run.stderr
    # Found by the serial lsblk reports, as on Nitro instances without the udev link:
    (host.state / "lsblk").write_text(
        "nvme0n1 vol0aaaaaaaaaaaaaaaa\nnvme1n1 vol0123456789abcdef0\n"
    )
    run = host(INSTALL, *FULL_ARGUMENTS)
    assert run.returncode == 0, run.stderr
    assert run.commands("mkfs.ext4") == [
        ["-q", "-L", "snh-state", str(host.root / "dev" / "nvme1n1")]
    ]


# --------------------------------------------------------------------------------------------
# fetch-hub-secrets.sh
# --------------------------------------------------------------------------------------------


@pytest.fixture
def secrets_run(host, tmp_path: Path):
    conf = tmp_path / "secrets.conf"
    run_dir = tmp_path / "run-synapse-notebook-hub"
    run_dir.mkdir(mode=0o700)
    output = run_dir / "secrets.env"

    def put(arn: str, value: str) -> None:
        name = arn.rsplit(":", 1)[1].replace("/", "_")
        (host.state / f"secret-{name}").write_text(value)

    def fetch(db_arn: str = "") -> Run:
        conf.write_text(
            f"CLIENT_SECRET_ARN={CLIENT_ARN}\nCRYPT_KEY_SECRET_ARN={CRYPT_ARN}\n"
            f"DB_URL_SECRET_ARN={db_arn}\n"
        )
        return host(FETCH, str(conf), str(output))

    fetch.put = put  # type: ignore[attr-defined]
    fetch.output = output  # type: ignore[attr-defined]
    return fetch


def test_fetch_writes_the_secrets_0600_on_tmpfs(secrets_run) -> None:
    secrets_run.put(CLIENT_ARN, CLIENT_SECRET)
    secrets_run.put(CRYPT_ARN, CRYPT_KEY)
    run = secrets_run()
    assert run.returncode == 0, run.stderr
    output: Path = secrets_run.output
    assert output.read_text().splitlines() == [
        f"SYNAPSE_CLIENT_SECRET='{CLIENT_SECRET}'",
        f"JUPYTERHUB_CRYPT_KEY='{CRYPT_KEY}'",
    ]
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert sorted(p.name for p in output.parent.iterdir()) == ["secrets.env"]
    assert [c[:2] for c in run.commands("aws")] == [["secretsmanager", "get-secret-value"]] * 2
    assert [c[c.index("--secret-id") + 1] for c in run.commands("aws")] == [CLIENT_ARN, CRYPT_ARN]
    assert all(c[c.index("--region") + 1] == "us-east-1" for c in run.commands("aws"))
    _no_secret_anywhere(run)


def test_fetch_adds_the_database_url_when_configured(secrets_run) -> None:
    secrets_run.put(CLIENT_ARN, CLIENT_SECRET)
    secrets_run.put(CRYPT_ARN, CRYPT_KEY)
    secrets_run.put(DB_ARN, DB_URL)
    run = secrets_run(DB_ARN)
    assert run.returncode == 0, run.stderr
    assert f"SNH_DB_URL='{DB_URL}'" in secrets_run.output.read_text().splitlines()
    _no_secret_anywhere(run)


def test_fetch_says_how_to_put_a_missing_client_secret(secrets_run) -> None:
    """A secret created without a value answers ResourceNotFoundException (Secrets Manager
    API Reference, GetSecretValue) until put-secret-value gives it one."""
    secrets_run.put(CRYPT_ARN, CRYPT_KEY)
    run = secrets_run()
    assert run.returncode == 1
    assert "ResourceNotFoundException" in run.stderr
    assert f"put-secret-value --secret-id {CLIENT_ARN}" in run.stderr
    assert not secrets_run.output.exists()
    assert list(secrets_run.output.parent.iterdir()) == []  # nothing half-written is left
    _no_secret_anywhere(run)


@pytest.mark.parametrize("bad", ["it's", "two\nlines"])
def test_fetch_refuses_values_it_cannot_quote(secrets_run, bad: str) -> None:
    secrets_run.put(CLIENT_ARN, bad)
    secrets_run.put(CRYPT_ARN, CRYPT_KEY)
    run = secrets_run()
    assert run.returncode == 1
    assert "quote or a line break" in run.stderr
    assert bad not in run.stderr
    assert not secrets_run.output.exists()


def test_fetch_refuses_a_directory_that_is_not_tmpfs(secrets_run, host) -> None:
    secrets_run.put(CLIENT_ARN, CLIENT_SECRET)
    secrets_run.put(CRYPT_ARN, CRYPT_KEY)
    (host.state / "fstype").write_text("xfs\n")
    run = secrets_run()
    assert run.returncode == 1
    assert "not tmpfs" in run.stderr
    assert run.commands("aws") == []
    assert not secrets_run.output.exists()


# --------------------------------------------------------------------------------------------
# The user data of hub-host.yaml
# --------------------------------------------------------------------------------------------


def _user_data() -> str:
    """The instance's user data with every ${...} of its Fn::Sub filled with an example."""
    template = sources.load_template("hub-host")
    text, _variables = template["Resources"]["HubInstance"]["Properties"]["UserData"]["Fn::Base64"][
        "Fn::Sub"
    ]
    values = {
        "RepositoryUrl": "https://github.com/example/synapse-notebook-hub.git",
        "RepositoryRef": "main",
        "HostName": "notebooks.example.org",
        "SynapseClientId": "100042",
        "AdminContact": "",
        "BreakGlassAdmins": "",
        "CommunitiesFile": "hub_config/communities.yaml",
        "AWS::Region": "us-east-1",
        "HubId": "synapse-notebook-hub",
        "ParameterPrefix": "synapse-notebook-hub",
        "ParameterKeyArn": KEY_ARN,
        "HubApiPort": "8081",
        "ProxyPort": "8000",
        "DataVolume": VOLUME_ID,
        "SynapseClientSecret": CLIENT_ARN,
        "CryptKeySecret": CRYPT_ARN,
        "DatabaseUrlSecretArn": "",
    }
    assert "${!" not in text  # no IAM-style escapes: every ${...} is a deployment value
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)


def test_user_data_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(_user_data())
    shellcheck = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "shellcheck"
    if not shellcheck.exists():
        shellcheck = Path(shutil.which("shellcheck") or "shellcheck")
    done = subprocess.run(
        [str(shellcheck), "--severity=style", str(script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_user_data_passes_every_install_option_the_script_knows() -> None:
    """Each option in the user data is one install-hub.sh accepts, and the install
    arguments the tests use are all there, so the first boot configures everything."""
    user_data = _user_data()
    given = re.findall(r"^\s+(--[a-z-]+) ", user_data, re.MULTILINE)
    assert sorted(given) == sorted(FULL_ARGUMENTS[0::2])
    assert "--parameter-prefix '/synapse-notebook-hub'" in user_data  # the leading slash


# --------------------------------------------------------------------------------------------
# hub-host.yaml: the promises of issue 6, on the template itself
# --------------------------------------------------------------------------------------------

HOST_TEMPLATE = sources.load_template("hub-host")
RESOURCES = HOST_TEMPLATE["Resources"]


def test_the_hub_host_is_not_an_instance_the_hub_manages() -> None:
    """The hub role stops and terminates instances tagged jupyterhub:hub, and reconciliation
    stops those without a server: its own host must never carry the tag."""
    tags = RESOURCES["HubInstance"]["Properties"]["Tags"]
    assert not [t for t in tags if t["Key"].startswith("jupyterhub:")]


def test_the_host_requires_imdsv2_and_encrypts_its_volumes() -> None:
    data = RESOURCES["HubLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert [m["Ebs"]["Encrypted"] for m in data["BlockDeviceMappings"]] == [True]
    volume = RESOURCES["DataVolume"]
    assert volume["Properties"]["Encrypted"] is True
    assert volume["DeletionPolicy"] == volume["UpdateReplacePolicy"] == "Retain"
    image = HOST_TEMPLATE["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert image["Default"].startswith("/aws/service/ami-amazon-linux-latest/al2023-ami-")


def test_the_load_balancer_serves_https_only_and_keeps_websockets() -> None:
    """ELB User Guide: idle_timeout.timeout_seconds (default 60) closes a connection with no
    data for that long, websockets included; the TLS13-1-2 policies allow TLS 1.2 and 1.3."""
    attributes = {
        a["Key"]: a["Value"]
        for a in RESOURCES["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    assert int(attributes["idle_timeout.timeout_seconds"]) >= 3600
    https = RESOURCES["HttpsListener"]["Properties"]
    assert (https["Protocol"], https["Port"]) == ("HTTPS", 443)
    assert https["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2-")
    http = RESOURCES["HttpRedirectListener"]["Properties"]
    assert http["DefaultActions"] == [
        {
            "Type": "redirect",
            "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"},
        }
    ]
    target = RESOURCES["ProxyTargetGroup"]["Properties"]
    assert target["HealthCheckPath"] == "/hub/health"
    assert target["Port"] == {"Ref": "ProxyPort"}


def test_only_the_load_balancer_reaches_the_proxy_port() -> None:
    rule = RESOURCES["HubProxyFromLoadBalancer"]["Properties"]
    assert rule["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"}
    assert rule["FromPort"] == rule["ToPort"] == {"Ref": "ProxyPort"}
    assert "CidrIp" not in rule
    group = RESOURCES["LoadBalancerSecurityGroup"]["Properties"]
    assert {(r["FromPort"], r["CidrIp"]["Ref"]) for r in group["SecurityGroupIngress"]} == {
        (443, "AllowedCidr"),
        (80, "AllowedCidr"),
    }


def test_the_ports_agree_with_the_hubs_defaults() -> None:
    """The proxy port the load balancer targets is the one hub.env gives SNH_BIND_URL, and
    the network's hub API port is SNH_HUB_BIND_URL's default."""
    assert HOST_TEMPLATE["Parameters"]["ProxyPort"]["Default"] == 8000
    assert "http://:8000" in VARIABLES["SNH_BIND_URL"][1]
    network = sources.load_template("network")
    assert network["Parameters"]["HubApiPort"]["Default"] == 8081
    assert ":8081" in VARIABLES["SNH_HUB_BIND_URL"][1]


def test_the_secrets_policy_names_the_stacks_own_secrets() -> None:
    statement = RESOURCES["HubSecretsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement == [
        {
            "Sid": "ReadOnlyTheHubsOwnSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": [{"Ref": "SynapseClientSecret"}, {"Ref": "CryptKeySecret"}],
        }
    ]
    # No value in the template for the client secret: the operator puts it.
    client = RESOURCES["SynapseClientSecret"]["Properties"]
    assert "SecretString" not in client and "GenerateSecretString" not in client
    # JUPYTERHUB_CRYPT_KEY: 64 characters from 0-9a-f, i.e. 32 bytes in hex.
    generated = RESOURCES["CryptKeySecret"]["Properties"]["GenerateSecretString"]
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789") - set(generated["ExcludeCharacters"])
    assert generated["PasswordLength"] == 64 and generated["ExcludeUppercase"] is True
    assert generated["ExcludePunctuation"] is True and allowed == set("0123456789abcdef")
