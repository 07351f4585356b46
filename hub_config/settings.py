"""The hub's settings from the environment, checked before JupyterHub starts.

Everything an operator sets per deployment comes from environment variables, so one
``jupyterhub_config.py`` serves the demo and a real deployment unchanged. A missing or
malformed variable stops the hub with a message that names the variable and what it wants,
instead of a failure much later (at the first sign-in) that names nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from spawner.naming import DEFAULT_HUB_ID, DEFAULT_PARAMETER_PREFIX

HERE = Path(__file__).resolve().parent
DEFAULT_COMMUNITIES_FILE = HERE / "communities.yaml"

# name -> (required, help); the README's table of variables is generated from the same words.
VARIABLES: dict[str, tuple[bool, str]] = {
    "SYNAPSE_CLIENT_ID": (True, "OAuth client id registered with Synapse"),
    "SYNAPSE_CLIENT_SECRET": (True, "secret of that OAuth client"),
    "SNH_PUBLIC_URL": (
        True,
        "URL users open, e.g. https://notebooks.example.org; the OAuth redirect URI is "
        "<SNH_PUBLIC_URL>/hub/oauth_callback and must be registered with the client",
    ),
    "SYNAPSE_ISSUER": (False, "Synapse OIDC issuer (default: production Synapse)"),
    "SYNAPSE_SIGNIN_URL": (False, "Synapse sign-in page (default: https://signin.synapse.org)"),
    "SNH_COMMUNITIES_FILE": (False, "communities file (default: hub_config/communities.yaml)"),
    "SNH_BIND_URL": (False, "where the proxy listens (default: http://:8000)"),
    "SNH_STATE_DIR": (
        False,
        "directory for the hub's database, cookie secret and identity table (default: .)",
    ),
    "SNH_DB_URL": (False, "JupyterHub database URL (default: sqlite in SNH_STATE_DIR)"),
    "SNH_ADMIN_CONTACT": (False, "who refused users should contact, shown on the refusal page"),
    "SNH_SSH_USER": (
        False,
        "the user SSH sessions log in as in a server (the images' jovyan; the local cloud's "
        "simulated servers run as the user running them), shown in the home page's "
        "'Connect from your computer' lines",
    ),
    "SNH_BREAK_GLASS_ADMINS": (
        False,
        "comma-separated hub user names of the deployment's own operators who get full "
        "JupyterHub admin (which can read and use other people's credentials); empty by "
        "default, every use audited. Members of admin teams get the community-operator role",
    ),
    "SNH_HUB_ID": (
        False,
        "this hub's id in tags and parameter paths (default: synapse-notebook-hub)",
    ),
    "SNH_HUB_BIND_URL": (
        False,
        "where the hub's API listens for notebook servers (default: http://127.0.0.1:8081)",
    ),
    "SNH_HUB_CONNECT_URL": (
        False,
        "how notebook instances reach the hub's API, e.g. http://10.0.1.5:8081 "
        "(default: SNH_HUB_BIND_URL)",
    ),
    "SNH_INSTANCE_HUB_URL": (
        False,
        "how notebook instances reach the hub's API when that differs from how the hub's "
        "proxy and services do (the local cloud's real-boot machines: their hub link's name; "
        "default: SNH_HUB_CONNECT_URL)",
    ),
    "SNH_AWS_ENDPOINT_URL": (
        False,
        "one endpoint for every AWS service; only for the local cloud, unset on AWS",
    ),
    "SNH_PARAMETER_PREFIX": (
        False,
        "SSM Parameter Store path of the servers' parameters (default: /synapse-notebook-hub); "
        "the hub stack's ParameterPrefix",
    ),
    "SNH_PARAMETER_KMS_KEY_ID": (
        False,
        "KMS key (id, ARN or alias) of the SecureString parameters: the hub stack's "
        "ParameterKeyArn output; unset, SSM's account-wide alias/aws/ssm is used",
    ),
    "SNH_EXTRA_CONFIG": (False, "a further Python config file loaded after this one"),
    "JUPYTERHUB_CRYPT_KEY": (
        True,
        "32-byte key(s), hex or base64, that encrypt auth_state (JupyterHub's own variable); "
        "generate one with `openssl rand -hex 32`",
    ),
}


#: Environment variables for trying culling quickly (README, "Idle culling").
IDLE_TIMEOUT_VARIABLE = "IDLE_TIMEOUT_SECONDS"
CULL_EVERY_VARIABLE = "CULL_EVERY_SECONDS"
#: How the culler services get their rules (JSON, see ``culling.CullPolicy.to_json``).
POLICY_VARIABLE = "SNH_CULL_POLICY"
_MAX_SECONDS = 10**9


class SettingsError(ValueError):
    """One or more environment variables are missing or malformed; lists all of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "The hub cannot start; fix these environment variables:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
        self.problems = problems


@dataclass(frozen=True)
class CullingOverrides:
    """``IDLE_TIMEOUT_SECONDS`` and ``CULL_EVERY_SECONDS``, when set."""

    idle_timeout_seconds: int | None = None
    cull_every_seconds: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> CullingOverrides:
        """Read both variables; a malformed one raises ``SettingsError`` naming it."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, int | None] = {}
        for name in (IDLE_TIMEOUT_VARIABLE, CULL_EVERY_VARIABLE):
            raw = env.get(name, "").strip()
            values[name] = None
            if not raw:
                continue
            if raw.isascii() and raw.isdigit() and 0 < int(raw) < _MAX_SECONDS:
                values[name] = int(raw)
            else:
                problems.append(f"{name}={raw!r}: not a positive whole number of seconds")
        if problems:
            raise SettingsError(problems)
        return cls(values[IDLE_TIMEOUT_VARIABLE], values[CULL_EVERY_VARIABLE])


def culler_policy_json(environ: Mapping[str, str] | None = None) -> str | None:
    """The rules a culler service was started with (``SNH_CULL_POLICY``, set by the hub in
    the service's environment; see ``culling.culler_services``), or None."""
    env = os.environ if environ is None else environ
    return env.get(POLICY_VARIABLE) or None


def _url(name: str, value: str, problems: list[str], *, path_ok: bool = True) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append(f"{name}={value!r}: not an http(s) URL")
    elif not path_ok and parsed.path not in ("", "/"):
        problems.append(f"{name}={value!r}: must not have a path")
    return value.rstrip("/")


@dataclass(frozen=True)
class HubSettings:
    client_id: str
    client_secret: str
    public_url: str
    issuer: str
    signin_url: str
    communities_file: Path
    bind_url: str
    state_dir: Path
    db_url: str
    admin_contact: str
    extra_config: Path | None
    hub_id: str = DEFAULT_HUB_ID
    hub_bind_url: str = "http://127.0.0.1:8081"
    hub_connect_url: str = ""
    instance_hub_url: str = ""
    aws_endpoint_url: str | None = None
    parameter_prefix: str = DEFAULT_PARAMETER_PREFIX
    parameter_kms_key_id: str | None = None
    break_glass_admins: frozenset[str] = frozenset()
    cull_overrides: CullingOverrides = CullingOverrides()
    ssh_user: str = "jovyan"
    #: The warnings before a stop go by e-mail too when set (``SNH_SMTP_*``).
    smtp: SmtpSettings | None = None

    def aws_environment(self) -> dict[str, str]:
        """What the hub's own services (reconciliation, reaper) need to reach AWS as the hub
        does: JupyterHub starts services with a bare environment."""
        names = (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "PYTHONPATH",
        )
        env = {name: os.environ[name] for name in names if name in os.environ}
        env.update(
            SNH_HUB_ID=self.hub_id,
            SNH_COMMUNITIES_FILE=str(self.communities_file.resolve()),
        )
        if self.aws_endpoint_url:
            env["SNH_AWS_ENDPOINT_URL"] = self.aws_endpoint_url
        return env

    @property
    def oauth_callback_url(self) -> str:
        return f"{self.public_url}/hub/oauth_callback"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> HubSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str, default: str = "") -> str:
            value = env.get(name, "").strip()
            if not value and VARIABLES[name][0]:
                problems.append(f"{name} is not set: {VARIABLES[name][1]}")
            return value or default

        client_id = get("SYNAPSE_CLIENT_ID")
        client_secret = get("SYNAPSE_CLIENT_SECRET")
        get("JUPYTERHUB_CRYPT_KEY")
        public_url = get("SNH_PUBLIC_URL")
        if public_url:
            public_url = _url("SNH_PUBLIC_URL", public_url, problems, path_ok=False)
        issuer = _url(
            "SYNAPSE_ISSUER",
            get("SYNAPSE_ISSUER", "https://repo-prod.prod.sagebase.org/auth/v1"),
            problems,
        )
        signin_url = _url(
            "SYNAPSE_SIGNIN_URL", get("SYNAPSE_SIGNIN_URL", "https://signin.synapse.org"), problems
        )
        bind_url = get("SNH_BIND_URL", "http://:8000")
        if not bind_url.startswith(("http://", "https://")):
            problems.append(f"SNH_BIND_URL={bind_url!r}: not an http(s) URL")

        state_dir = Path(get("SNH_STATE_DIR", ".")).expanduser()
        if state_dir.exists() and not state_dir.is_dir():
            problems.append(f"SNH_STATE_DIR={str(state_dir)!r}: exists and is not a directory")

        communities = Path(get("SNH_COMMUNITIES_FILE", str(DEFAULT_COMMUNITIES_FILE)))
        if not communities.is_file():
            problems.append(f"SNH_COMMUNITIES_FILE={str(communities)!r}: no such file")

        extra = get("SNH_EXTRA_CONFIG")
        extra_config = Path(extra) if extra else None
        if extra_config is not None and not extra_config.is_file():
            problems.append(f"SNH_EXTRA_CONFIG={extra!r}: no such file")

        db_url = get("SNH_DB_URL", f"sqlite:///{state_dir / 'jupyterhub.sqlite'}")
        hub_id = get("SNH_HUB_ID", DEFAULT_HUB_ID)
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", hub_id):
            problems.append(f"SNH_HUB_ID={hub_id!r}: lowercase letters, digits and '-' only")
        hub_bind_url = _url(
            "SNH_HUB_BIND_URL", get("SNH_HUB_BIND_URL", "http://127.0.0.1:8081"), problems
        )
        hub_connect_url = get("SNH_HUB_CONNECT_URL")
        if hub_connect_url:
            hub_connect_url = _url("SNH_HUB_CONNECT_URL", hub_connect_url, problems)
        instance_hub_url = get("SNH_INSTANCE_HUB_URL")
        if instance_hub_url:
            instance_hub_url = _url("SNH_INSTANCE_HUB_URL", instance_hub_url, problems)
        aws_endpoint_url = get("SNH_AWS_ENDPOINT_URL")
        if aws_endpoint_url:
            aws_endpoint_url = _url("SNH_AWS_ENDPOINT_URL", aws_endpoint_url, problems)
        parameter_prefix = get("SNH_PARAMETER_PREFIX", DEFAULT_PARAMETER_PREFIX).rstrip("/")
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", parameter_prefix):
            problems.append(
                f"SNH_PARAMETER_PREFIX={parameter_prefix!r}: a parameter path such as "
                "/synapse-notebook-hub (letters, digits, _ . - between slashes)"
            )
        kms_key = get("SNH_PARAMETER_KMS_KEY_ID")
        if kms_key and not re.fullmatch(
            r"(arn:[a-z-]+:kms:\S+|alias/[A-Za-z0-9/_-]+|[0-9a-f-]{36})", kms_key
        ):
            problems.append(
                f"SNH_PARAMETER_KMS_KEY_ID={kms_key!r}: a KMS key id, key ARN, alias/NAME or "
                "alias ARN"
            )
        break_glass = frozenset(
            name.strip() for name in get("SNH_BREAK_GLASS_ADMINS").split(",") if name.strip()
        )
        bad = sorted(n for n in break_glass if not re.fullmatch(r"[a-z0-9][a-z0-9._@-]*", n))
        if bad:
            problems.append(
                f"SNH_BREAK_GLASS_ADMINS: {', '.join(bad)}: hub user names (lower case, "
                "comma-separated)"
            )
        ssh_user = get("SNH_SSH_USER", "jovyan")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", ssh_user):
            problems.append(f"SNH_SSH_USER={ssh_user!r}: a POSIX user name such as jovyan")
        try:
            cull_overrides = CullingOverrides.from_environ(env)
        except SettingsError as e:
            problems.extend(e.problems)
            cull_overrides = CullingOverrides()
        try:
            smtp = SmtpSettings.from_environ(env)
        except SettingsError as e:
            problems.extend(e.problems)
            smtp = None
        if problems:
            raise SettingsError(problems)
        return cls(
            client_id=client_id,
            client_secret=client_secret,
            public_url=public_url,
            issuer=issuer,
            signin_url=signin_url,
            communities_file=communities,
            bind_url=bind_url,
            state_dir=state_dir,
            db_url=db_url,
            admin_contact=get("SNH_ADMIN_CONTACT"),
            extra_config=extra_config,
            hub_id=hub_id,
            hub_bind_url=hub_bind_url,
            hub_connect_url=hub_connect_url or hub_bind_url,
            instance_hub_url=instance_hub_url or "",
            aws_endpoint_url=aws_endpoint_url or None,
            parameter_prefix=parameter_prefix,
            parameter_kms_key_id=kms_key or None,
            break_glass_admins=break_glass,
            cull_overrides=cull_overrides,
            ssh_user=ssh_user,
            smtp=smtp,
        )


@dataclass(frozen=True)
class SmtpSettings:
    """Where the managers' reports (``snh report --email``) and the hub's warnings before a
    stop are sent: ``SNH_SMTP_HOST`` (unset: no e-mail), ``SNH_SMTP_PORT`` (587 with
    STARTTLS, 465 with SSL, else 25),
    ``SNH_SMTP_TLS`` (``starttls``, the default; ``ssl``; ``none`` only for a relay on the
    same host), ``SNH_SMTP_USER`` / ``SNH_SMTP_PASSWORD`` (optional login) and
    ``SNH_SMTP_FROM`` (the sender)."""

    host: str
    port: int
    tls: str = "starttls"
    user: str | None = None
    password: str | None = None
    sender: str = "notebook-hub@localhost"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SmtpSettings | None:
        def get(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        host = get("SNH_SMTP_HOST")
        if host is None:
            return None
        tls = (get("SNH_SMTP_TLS") or "starttls").lower()
        if tls not in ("starttls", "ssl", "none"):
            raise SettingsError([f"SNH_SMTP_TLS={tls!r}: starttls, ssl or none"])
        port_text = get("SNH_SMTP_PORT") or {"starttls": "587", "ssl": "465"}.get(tls, "25")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SettingsError([f"SNH_SMTP_PORT={port_text!r}: a port number"])
        return cls(
            host=host,
            port=int(port_text),
            tls=tls,
            user=get("SNH_SMTP_USER"),
            password=get("SNH_SMTP_PASSWORD"),
            sender=get("SNH_SMTP_FROM") or "notebook-hub@localhost",
        )


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator commands (``snh``) take from the environment: the hub's own
    variables (the reaper's systemd unit loads the hub's ``hub.env``; the hub's services get
    them from `HubSettings.aws_environment`) and JupyterHub's API variables. Command-line
    options override each; nothing here is required, so ``snh forward`` and ``snh check``
    work on a laptop with none of them set."""

    hub_id: str = DEFAULT_HUB_ID
    communities_file: Path | None = None
    aws_endpoint_url: str | None = None
    state_dir: Path = Path(".")
    api_url: str | None = None
    api_token: str | None = None
    #: the relay's client (``snh login``/``ssh-proxy``): the hub, a token, where to keep them
    relay_hub_url: str | None = None
    relay_token: str | None = None
    config_dir: Path = Path(".snh")
    #: ``snh report --email``
    smtp: SmtpSettings | None = None

    @property
    def audit_log(self) -> Path:
        return self.state_dir.expanduser() / "audit.log"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        communities = get("SNH_COMMUNITIES_FILE")
        config_home = get("XDG_CONFIG_HOME") or str(Path(get("HOME") or "~") / ".config")
        return cls(
            relay_hub_url=get("SNH_HUB_URL"),
            relay_token=get("SNH_TOKEN"),
            config_dir=Path(config_home).expanduser() / "snh",
            hub_id=get("SNH_HUB_ID") or DEFAULT_HUB_ID,
            communities_file=Path(communities) if communities else None,
            aws_endpoint_url=get("SNH_AWS_ENDPOINT_URL"),
            state_dir=Path(get("SNH_STATE_DIR") or "."),
            api_url=get("JUPYTERHUB_API_URL"),
            api_token=get("JUPYTERHUB_API_TOKEN"),
            smtp=SmtpSettings.from_environ(env),
        )
