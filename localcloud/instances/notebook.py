"""The notebook container of one simulated instance, as a local ``jupyterhub-singleuser``.

On AWS the bootstrap runs the image with ``docker run --restart unless-stopped``, the
server's environment from the ``jupyterhub-env`` parameter, home on the volume, listening on
127.0.0.1:8888, and the instance role's credentials from IMDS. Here the same program (from
this venv) runs as a process of its own group, with:

- the ``jupyterhub-env`` variables in its environment and never on its command line (the
  command line shows only ports and paths);
- ``HOME`` and the server's root directory in the home volume's directory;
- ``JUPYTER_RUNTIME_DIR`` *outside* the volume (a per-boot directory standing in for a tmpfs):
  jupyter-server writes ``jpserver-<pid>.json`` there *with the hub API token in it*, so on a
  real instance it must not be on the persistent disk either;
- ``AWS_ENDPOINT_URL`` (the AWS front), the region and the role's temporary credentials, as
  IMDS would give them to the container;
- a free port standing in for the instance's 8888;
- for the ``rstudio`` kind, the RStudio stand-in page (``rstudio_page``) and the RStudio
  image's activity filter (``images/rstudio/rstudio_activity_filter.py``: RStudio's event
  long-poll is not activity), loaded as the image loads it, as a jupyter-server extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ..ports import free_port
from .rstudio_page import IMAGE_ENV
from .rstudio_page import PATH as RSTUDIO_PATH

BIN_DIR = Path(sys.executable).parent
#: Where the RStudio image's jupyter-server extensions are (installed into the image from here).
RSTUDIO_IMAGE_DIR = Path(__file__).resolve().parents[2] / "images" / "rstudio"
ACTIVITY_FILTER = "rstudio_activity_filter"
#: Both images' busy-kernel rule (``images/shared/notebook_busy_activity.py``), looking every
#: few seconds here (60 in the images) so that tests with short idle timeouts see it.
SHARED_IMAGE_DIR = Path(__file__).resolve().parents[2] / "images" / "shared"
BUSY_ACTIVITY = "notebook_busy_activity"
BUSY_INTERVAL_SECONDS = 3
#: Both images' JupyterLab notice before a stop (``images/shared/notebook_stop_notice.py``
#: and its prebuilt JupyterLab extension, found through ``JUPYTER_PATH`` as in the image's
#: data directory), asking every few seconds here (60 in the images).
STOP_NOTICE = "notebook_stop_notice"
STOP_NOTICE_POLL_SECONDS = 3
SHARED_JUPYTER_DIR = SHARED_IMAGE_DIR / "jupyter"
SINGLEUSER = BIN_DIR / "jupyterhub-singleuser"
SYNAPSE_CONFIG_MARKER = "# Written by the local cloud's instance simulator"


@dataclass
class RoleCredentials:
    """Temporary credentials of the instance role (what IMDS serves on AWS)."""

    access_key_id: str
    secret_access_key: str
    session_token: str


def notebook_environment(
    hub_env: dict[str, str],
    *,
    home: Path,
    runtime_dir: Path,
    aws_endpoint_url: str,
    region: str,
    credentials: RoleCredentials | None,
    image: str = "",
) -> dict[str, str]:
    """The environment of the notebook process (the container's, on AWS)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "SHELL": "/bin/bash",
        "USER": "jovyan",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({str(k): str(v) for k, v in hub_env.items()})
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env['PATH']}"
    env["HOME"] = str(home)
    env["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
    env.setdefault("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8888/")
    env["AWS_ENDPOINT_URL"] = aws_endpoint_url
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    if credentials is not None:
        env["AWS_ACCESS_KEY_ID"] = credentials.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_access_key
        env["AWS_SESSION_TOKEN"] = credentials.session_token
    if image:
        env[IMAGE_ENV] = image
    return env


def kind_environment(env: dict[str, str], kind: str) -> dict[str, str]:
    """``env`` with what the image of ``kind`` has installed on the Python path
    (site-packages, in the image): both images' busy-activity rule and stop notice; for
    RStudio, also its activity filter. And the stop notice's JupyterLab extension on the
    Jupyter data path (the environment's share/jupyter, in the image)."""
    images = [SHARED_IMAGE_DIR, *([RSTUDIO_IMAGE_DIR] if kind == "rstudio" else [])]
    paths = [*map(str, images), *filter(None, [env.get("PYTHONPATH")])]
    data = [str(SHARED_JUPYTER_DIR), *filter(None, [env.get("JUPYTER_PATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "JUPYTER_PATH": os.pathsep.join(data)}


def notebook_command(port: int, home: Path, kind: str, sshd_pid: int | None = None) -> list[str]:
    """The command line: ports and paths only, no secret. ``sshd_pid``: the instance's sshd,
    whose traffic the busy-activity rule watches (in the image, the container's only sshd)."""
    command = [
        sys.executable,
        "-m",
        "localcloud.instances.die_with_parent",
        str(os.getpid()),
        str(SINGLEUSER),
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={home}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.jpserver_extensions={BUSY_ACTIVITY}=True",
        f"--BusyActivity.interval_seconds={BUSY_INTERVAL_SECONDS}",
        f"--ServerApp.jpserver_extensions={STOP_NOTICE}=True",
        f"--StopNotice.poll_seconds={STOP_NOTICE_POLL_SECONDS}",
    ]
    if sshd_pid is not None:
        command.append(f"--BusyActivity.sshd_pid={sshd_pid}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")  # containers run as jovyan; we may not
    if kind == "rstudio":
        command += [
            f"--ServerApp.default_url={RSTUDIO_PATH}",
            "--ServerApp.jpserver_extensions=localcloud.instances.rstudio_page=True",
            f"--ServerApp.jpserver_extensions={ACTIVITY_FILTER}=True",
        ]
    return command


def write_synapse_config(home: Path, synapse_base_url: str) -> bool:
    """``~/.synapseConfig`` pointing synapseclient at the Synapse stand-in (no token: the
    client reads it through ``SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME``). A file the user wrote
    is left alone. Returns whether it was written."""
    path = home / ".synapseConfig"
    if path.exists() and not path.read_text(errors="replace").startswith(SYNAPSE_CONFIG_MARKER):
        return False
    base = synapse_base_url.rstrip("/")
    path.write_text(
        f"{SYNAPSE_CONFIG_MARKER}: synapseclient talks to the Synapse\n"
        "# stand-in. Authentication comes from SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME.\n"
        "[endpoints]\n"
        f"repoEndpoint = {base}/repo/v1\n"
        f"authEndpoint = {base}/auth/v1\n"
        f"fileHandleEndpoint = {base}/file/v1\n"
        f"portalEndpoint = {base}/\n"
    )
    return True


async def wait_listening(proc: asyncio.subprocess.Process, port: int, within: float) -> bool:
    """Whether ``proc`` accepts connections on 127.0.0.1:``port`` within ``within`` seconds
    (False as soon as it exits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline and proc.returncode is None:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class NotebookProcess:
    """One run of the server: started by ``start``, stopped by ``stop`` (its whole group)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @classmethod
    async def start(
        cls,
        *,
        env: dict[str, str],
        home: Path,
        kind: str,
        console: Path,
        sshd_pid: int | None = None,
    ) -> NotebookProcess:
        port = free_port()
        console.parent.mkdir(parents=True, exist_ok=True)
        with console.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *notebook_command(port, home, kind, sshd_pid),
                env=kind_environment(env, kind),
                cwd=str(home),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, port)

    async def wait_listening(self, within: float = 60.0) -> bool:
        """Whether the server accepts connections ``within`` seconds (False if it exited)."""
        return await wait_listening(self.proc, self.port, within)

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the group (as ``docker stop`` does), SIGKILL whatever is left."""
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()
        return self.proc.returncode

    def kill_now(self) -> None:
        """SIGKILL the group without waiting (last resort at exit)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
