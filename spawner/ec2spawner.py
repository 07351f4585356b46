"""EC2Spawner: each server is a dedicated EC2 instance, reached through SSM Session Manager.

The lifecycle follows dockerspawner's stop-versus-remove: *stop* stops the instance and keeps
its home volume, the next *start* resumes the same instance; only deleting a named server (or
the user) terminates it. What identifies the instance is written to the hub database as soon
as it is known, before anything slow happens, so a hub restart finds every instance again.

The request path of a start is in ``docs/spawner.md``; the pure parts (form, validation,
launch request, user data) live in ``options``, ``launch`` and ``bootstrap``, and the shared
parts (AWS clients, the instance poller, the tunnel) in ``aws``, ``poller`` and ``ssm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import html
import random
import re
import time
import uuid
from typing import Any, NoReturn

from jupyterhub.spawner import Spawner
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import (
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Instance,
    Integer,
    List,
    Unicode,
    default,
    validate,
)

from hub_config import CommunitiesConfig, Community, culling, load_communities
from operations import audit, metrics

from . import zone_move
from .aws import Aws, AwsError, ErrorKind
from .bootstrap import BootstrapConfig, bootstrap_failure, render_user_data
from .launch import ServerIdentity, client_token, run_instances_request, subnet_order
from .naming import (
    DEFAULT_HUB_ID,
    DEFAULT_PARAMETER_PREFIX,
    DEFAULT_SERVER_TAG,
    HOME_DEVICE,
    SERVER_NAME_MAX,
    TAG_COMMUNITY,
    TAG_IMAGE,
    TAG_SERVER,
    TAG_USER,
    ServerParameters,
    instance_port,
    is_valid_server_name,
)
from .options import (
    OptionsError,
    SpawnOptions,
    capacity_advice,
    options_form,
    options_from_form,
    validate_options,
)
from .parameters import ParameterStore
from .poller import DEFAULT_PAGES_PER_MINUTE, UNKNOWN, InstancePoller, InstanceView
from .region import Regions
from .removal import snapshot_then_terminate
from .ssm.datachannel import DEFAULT_PACE, DEFAULT_RESUME_TIMEOUT, SessionError, keep_task
from .ssm.tunnel import DEFAULT_MAX_SESSIONS, Tunnel, TunnelSettings

STATE_VERSION = 1
_HUB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _expired(auth_state: dict[str, Any]) -> bool:
    """The access token's life (``expires_at``, set by the authenticator from Synapse's
    ``expires_in``) is over. Unknown expiry is not expired: older auth states lack it."""
    expires = auth_state.get("expires_at")
    return isinstance(expires, (int, float)) and expires <= time.time()


def token_digest(token: str) -> str:
    """What the spawner keeps of the token it wrote to the server's parameter: enough to
    know the parameter is current, nothing to use it with (the token is a signed JWT of
    Synapse's; its SHA-256 gives no way back).

    Kept in the spawner's state, so that a restarted hub does not write every running
    server's token again: 5,000 ``PutParameter`` calls at once, which Parameter Store
    throttles, competing with the sessions that check each server (`benchmarks/scale.py`)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _home_volume(instance: dict[str, Any]) -> str | None:
    """The home volume's id in an EC2 answer (RunInstances may not list it yet)."""
    return next(
        (
            b["Ebs"]["VolumeId"]
            for b in instance.get("BlockDeviceMappings", [])
            if b.get("DeviceName") == HOME_DEVICE and "Ebs" in b
        ),
        None,
    )


def _article(instance_type: str) -> str:
    """'an m5.large', 'a t3.large': by how the family's first letter is spoken."""
    return "an" if instance_type[:1].lower() in "aefhilmnorsx" else "a"


class StartFailed(web.HTTPError):
    """A start that cannot succeed; the message is for the user (JupyterHub shows it on the
    progress page and in REST answers). An HTTPError, so JupyterHub logs it without a
    traceback: the admin's details were logged where the failure was understood."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(status, message)
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.jupyterhub_message


try:  # JupyterHub 6: a refusal is a spawn *failure* with a reason, not an *error*
    from jupyterhub.spawner import SpawnException as _RefusalBase
except ImportError:  # JupyterHub 5.2
    _RefusalBase = web.HTTPError


class StartRefused(StartFailed, _RefusalBase):
    """A start the rules refuse: bad options or server name, a limit or budget reached, a
    sign-in to renew, access ended, no capacity. Not the hub's fault, so not an error:
    JupyterHub 6 records it as a spawn ``failure`` labelled with ``reason`` (its
    `SpawnException`), logs no traceback and does not count it towards
    ``consecutive_failure_limit``; on 5.2 it is a 4xx (503 for capacity) HTTPError, which
    JupyterHub itself counts like any failure. The API answers with ``status`` and the
    message says what the user can do; the hub's metric outcome is ``refused``, and a
    refusal after AWS calls (capacity, access ended) is audited as ``start_failed`` with
    ``outcome=refused`` (budget and server-limit refusals, before any AWS call, as
    ``start_refused``)."""

    refused = True

    def __init__(self, message: str, status: int = 400, *, reason: str) -> None:
        # HTTPError's own __init__: StartFailed's and SpawnException's take other arguments.
        # ``reason`` is JupyterHub 6's metrics label (and, as for SpawnException, the
        # response's reason phrase).
        web.HTTPError.__init__(self, status, message, reason=reason)
        self.jupyterhub_message = message
        self.message = message
        self.message_html = ""


class NoCapacity(StartRefused):
    """No capacity for the type where it was asked (the message offers the equivalents)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message, status, reason="capacity")


class EC2Spawner(Spawner):
    """A dedicated EC2 instance per server, with the user's Synapse token usable inside."""

    hub_id = Unicode(
        DEFAULT_HUB_ID,
        config=True,
        help="""
        Identifies this hub's instances and parameters: the ``jupyterhub:hub`` tag on every
        instance and volume, and a segment of every parameter path. Two hubs in one account
        must have different ids; changing it orphans existing servers. Lowercase letters,
        digits and ``-``. ``jupyterhub_config.py`` sets it from ``SNH_HUB_ID``.
        """,
    )

    @validate("hub_id")
    def _validate_hub_id(self, proposal: dict[str, Any]) -> str:
        if not _HUB_ID.match(proposal["value"]):
            raise ValueError(
                f"EC2Spawner.hub_id must be lowercase letters, digits and '-' (at most 63), "
                f"got {proposal['value']!r}"
            )
        return proposal["value"]

    communities_file = Unicode(
        "",
        config=True,
        help="""
        The communities file: what each community's servers get (instance types, images,
        disk sizes, network, instance profile). Read once per hub process; the hub checks it at
        start-up (``jupyterhub_config.py``), so an error here means the file changed since.
        Environment: ``SNH_COMMUNITIES_FILE``.
        """,
    )

    aws_endpoint_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        One endpoint for every AWS service (the local cloud's AWS front). Leave unset on AWS.
        ``jupyterhub_config.py`` sets it from ``SNH_AWS_ENDPOINT_URL``.
        """,
    )

    parameter_prefix = Unicode(
        DEFAULT_PARAMETER_PREFIX,
        config=True,
        help="""
        SSM Parameter Store path under which each server's settings and secrets are written
        (``<prefix>/<hub_id>/<user>/<server>/``). The hub's IAM role must be allowed to write
        and delete under it; each instance role to read its own server's parameters only.
        """,
    )

    parameter_kms_key_id = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        KMS key (id, ARN or alias) of the SecureString parameters: the key of the hub stack
        (``hub_config/infrastructure/hub.yaml``), which only this hub may encrypt with and only
        its notebook roles may decrypt with, through SSM. None uses the account's
        ``alias/aws/ssm``, which every role in the account may use through SSM.
        """,
    )

    notebook_port = Integer(
        8888,
        config=True,
        help="Port of the notebook server on the instance (bound to 127.0.0.1 there).",
    )

    regions = Instance(
        Regions,
        config=True,
        help="""
        The hub's `spawner.region.Regions`: per AWS region, the boto3 clients, the shared
        instance poller and the subnet-zone and AMI caches. ``jupyterhub_config.py`` makes one
        and gives it to this class, the admin overview, the home page and the metrics, so
        that every server of the hub shares one poller per region. Unset (a spawner made in
        a test), each spawner makes its own from ``aws_endpoint_url``.
        """,
    )

    @default("regions")
    def _regions_default(self) -> Regions:
        return Regions(self.aws_endpoint_url)

    communities = Instance(
        CommunitiesConfig,
        allow_none=True,
        config=True,
        help="""
        The communities, already loaded (``jupyterhub_config.py`` loads the file once at
        start-up and passes it here and to the pages). Unset, ``communities_file`` is loaded
        the first time a spawner needs it.
        """,
    )

    backstop_idle_seconds = Dict(
        key_trait=Unicode(),
        value_trait=Integer(),
        config=True,
        help="""
        Per community id, the seconds of idleness after which an instance stops itself (the
        backstop timer in the bootstrap: for when the hub's culler cannot act). The hub
        configuration derives it from the culling rules (twice the idle timeout, at least an
        hour; ``hub_config.culling.backstop_idle_seconds``), so that the rule and its
        overrides are read once, not at every launch. A community missing here gets the
        value of its own rule without overrides.
        """,
    )

    ssh_authorized_keys = Callable(
        None,
        allow_none=True,
        config=True,
        help="""
        A callable taking the hub user name and returning the user's SSH public keys, as
        ``authorized_keys`` lines, or None (no keys: nobody can log in over SSH). Asked at
        each start; the keys go to the server in its ``config`` parameter (never in user
        data), the bootstrap hands them to the image's ``sshd``. ``jupyterhub_config.py``
        sets it to the keys users keep on the hub's SSH keys page
        (``operations.ssh_keys.keys_source``). A key added or removed takes effect at the
        server's next start.
        """,
    )

    instance_poll_interval = Float(
        40.0,
        config=True,
        help="""
        Seconds between the shared poller's looks at every instance of the hub in steady
        state (one paginated DescribeInstances for all servers, pages of 1000), at least; more
        when ``instance_poll_pages_per_minute`` asks for it. While a server starts, the
        instances being started are looked at every 2 s. A server stopped outside the hub
        (backstop, console) shows as stopped within about twice the time between looks.
        """,
    )

    instance_poll_pages_per_minute = Float(
        DEFAULT_PAGES_PER_MINUTE,
        allow_none=True,
        config=True,
        help="""
        DescribeInstances calls a minute the shared poller may spend on its looks at every
        instance in steady state (each page of 1000 instances is one call against EC2's API
        rate, which every tool of the account shares). Up to 1,000 servers a look is one page
        every ``instance_poll_interval`` (40 s); at 5,000 servers it is five pages, so a look
        every 200 s. 1.5 leaves room within 2 a minute for the reconciliation service (one
        look every 10 minutes) and the admin overview. None: a look every
        ``instance_poll_interval`` whatever it costs.
        """,
    )

    failed_start_action = Enum(
        ["stop", "terminate"],
        "stop",
        config=True,
        help="""
        What happens to an instance whose start failed after it was launched or started:
        ``stop`` keeps it and its volume (the next start resumes it); ``terminate`` removes
        it (its home volume follows the community's volume policy). Either way nothing is left
        running unseen.
        """,
    )

    token_refresh_margin = Float(
        3600.0,
        config=True,
        help="""
        While a server runs, when the user's Synapse access token is within this many seconds
        of expiry, the hub refreshes it and rewrites the server's token parameter, so
        ``synapseclient`` inside keeps working past the token's 24 hours.
        """,
    )

    tunnel_backoff_max = Float(
        30.0,
        config=True,
        help="Longest wait between attempts to reopen a server's SSM session.",
    )

    tunnel_max_sessions = Integer(
        DEFAULT_MAX_SESSIONS,
        min=1,
        config=True,
        help="""
        Session Manager sessions the hub spreads one server's connections over, at most.

        AWS carries about 1,000 messages of at most 1 KiB a second per session: about 1 MB/s
        for everything one server sends, where a JupyterLab first load is several megabytes
        of JavaScript. Extra sessions are opened when every open one already carries a
        connection, and closed again after a minute without one; a connection whose client
        reads slowly keeps only its own session waiting. ``1`` is the official client's shape
        (one session per port). See docs/ssm-tunnel.md for the measurements behind the
        default.
        """,
    )

    bootstrap_check_interval = Float(
        30.0,
        config=True,
        help="""
        Seconds between looks at a starting instance's console (GetConsoleOutput) for the
        bootstrap's failure. The bootstrap writes why it gave up there (a missing parameter,
        an image it cannot pull, a home volume that is not attached) and does not try again:
        the start then fails at once with that reason, instead of after ``start_timeout``.
        """,
    )

    tunnel_idle_release = Float(
        300.0,
        allow_none=True,
        config=True,
        help="""
        Seconds a server's tunnel may carry no connection before the hub lets its Session
        Manager session go (TerminateSession). The next request to the server opens a new
        session and waits for it (about a second on AWS), as after a hub restart. An open
        JupyterLab tab holds kernel websockets, so this only concerns servers nobody is
        looking at; a session the service ends meanwhile (its idle timeout, 20 minutes by
        default) is likewise not reopened until a request needs it. Thousands of idle
        servers then cost the hub and the service nothing. None keeps every server's first
        session up while the server runs.
        """,
    )

    tunnel_resume_timeout = Float(
        DEFAULT_RESUME_TIMEOUT,
        config=True,
        help="""
        Seconds a server's tunnel may take to resume a session whose websocket was lost
        (ResumeSession, then a signed reconnect) before it gives the session up and opens a
        new one. While it resumes, the server's open connections (kernel websockets, uploads,
        downloads) wait rather than being reset. ``0`` never resumes.
        """,
    )

    budget_check = Callable(
        None,
        allow_none=True,
        config=True,
        help="""
        An async callable taking the hub user name and the `Community` of a start, returning
        an object with ``level`` (``ok``, ``warn`` or ``over``) and ``message``: the
        community's monthly budgets. ``over`` refuses the start (403, before any AWS call
        that costs money) with the message; ``warn`` lets it start and the spawn form shows
        the message. ``jupyterhub_config.py`` sets it to ``operations.budget.BudgetGuard``'s
        ``check``. None: no budgets.
        """,
    )

    zone_move = Bool(
        True,
        config=True,
        help="""
        Whether a stopped server whose zone has no capacity for its type is moved to another
        zone of its community: its home volume snapshotted, a new instance launched in a
        subnet of another zone with the home volume made from the snapshot, then the old
        instance and volume removed (`spawner.zone_move`; nothing is lost if a step fails).
        Off: the user is only offered the community's other types.
        """,
    )

    running_checks = List(
        Callable(),
        config=True,
        help="""
        Callables given this spawner at each poll that finds its server running and ready:
        JupyterHub already polls every running server every ``poll_interval`` (stretched
        beyond 1,000 servers as the shared poller's looks are: `_space_polls`), so a check
        that concerns running servers only needs no loop of its own. A check must return at
        once (start its own task for anything slow) and must not raise.
        ``jupyterhub_config.py`` adds ``operations.stop_watch.StopWatch.check`` (the
        warnings before a stop, and budget stops).
        """,
    )

    tunnel_pace = Float(
        DEFAULT_PACE,
        allow_none=True,
        config=True,
        help="""
        Stream-data messages a second that each Session Manager session of a tunnel sends at
        most (bursts of 64 go at once). About what AWS's data channel carries per session,
        1,000 messages of up to 1 KiB each (so about 1 MB/s per session: a server's
        connections are spread over ``tunnel_max_sessions``). Sending faster only makes
        the service buffer and drop. None sends unpaced: for measuring the hub's own cost
        (``benchmarks.relay``) against a stand-in that does not model the limit.
        """,
    )

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        # EC2: minutes, not seconds (a cold boot, the SSM agent, pulling an image).
        return 15 * 60

    @default("http_timeout")
    def _http_timeout_default(self) -> int:
        return 5 * 60

    @default("ip")
    def _ip_default(self) -> str:
        # What the notebook on the instance listens on; the hub reaches it through the tunnel.
        return "127.0.0.1"

    @default("port")
    def _port_default(self) -> int:
        return self.notebook_port

    @default("env_keep")
    def _env_keep_default(self) -> list[str]:
        # The hub's PATH, LANG and the like mean nothing on the instance, whose image has its
        # own; and nothing of the hub's environment should reach a user's parameters.
        return []

    @default("options_form")
    def _options_form_default(self) -> Any:
        return self._render_options_form

    # -- state ------------------------------------------------------------------------------

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instance_id: str | None = None
        self.region: str | None = None
        self.volume_id: str | None = None
        self.tunnel_port: int | None = None
        self.launch_id: str | None = None
        #: the choices of the last start (typed; saved as ``options`` in the state)
        self.last_options: SpawnOptions | None = None
        #: when stop() stopped the instance (ISO UTC): the home page's last resort for
        #: "stopped since" (operations.home_page), when neither EC2 nor the audit log says
        self.stopped_at: str | None = None
        #: the last start's capacity refusal with its equivalent types, for the spawn form
        self.capacity_note: str | None = None
        #: a zone move not yet cleaned up: the old instance, its home volume and the move's
        #: snapshot (``spawner.zone_move``), removed once the moved server has answered
        self.moved_from: dict[str, str] | None = None
        self.tunnel: Tunnel | None = None
        #: whether GetConsoleOutput's Latest works for this instance (Nitro types only)
        self._console_latest = True
        self._events: list[dict[str, Any]] = []
        self._events_changed = asyncio.Event()
        #: `token_digest` of the token in the server's parameter, when known
        self._token_written: str | None = None
        #: the poll's check of the Synapse token and the owner's teams, in flight
        self._auth_check: asyncio.Future[None] | None = None
        #: when this hub process last checked the owner's teams from a poll (monotonic)
        self._membership_checked: float | None = None
        #: (stored auth state, its token's expiry) as of the last pass that found the token
        #: parameter current: `_refresh_token_if_needed` need not decrypt it again
        self._auth_settled: tuple[bytes | None, float | None] = (None, None)
        #: taken by the token rewrite and by every deletion of the parameters, so that a
        #: rewrite in flight across a stop cannot put the token back after the delete
        self._secrets_lock = asyncio.Lock()
        #: the parameters were deleted (a stop); none is written again before the next start
        self._secrets_deleted = False
        #: tunnels to other ports of the instance, for the owner's relay (operations.relay);
        #: made one at a time, so that two connections at once share one started tunnel
        self._relay_tunnels: dict[int, Tunnel] = {}
        self._relay_lock = asyncio.Lock()
        #: the community whose server limit this server counts against while it starts or
        #: runs (taken in `_check_server_limit`, released at stop or a failed start)
        self.claimed_community: str | None = None

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get("version", STATE_VERSION) > STATE_VERSION:
            self.log.warning("%s: state from a newer hub version: %s", self._log_name, state)
        self.instance_id = state.get("instance_id")
        self.region = state.get("region")
        self.volume_id = state.get("volume_id")
        self.tunnel_port = state.get("tunnel_port")
        self.launch_id = state.get("launch_id")
        self.last_options = SpawnOptions.from_saved(state.get("options"))
        self.stopped_at = state.get("stopped_at")
        self.capacity_note = state.get("capacity_note")
        self.moved_from = state.get("moved_from")
        self._token_written = state.get("token_digest")

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.instance_id or self.launch_id:
            state.update(
                version=STATE_VERSION,
                instance_id=self.instance_id,
                region=self.region,
                volume_id=self.volume_id,
                tunnel_port=self.tunnel_port,
                launch_id=self.launch_id,
                options=self.last_options.as_user_options() if self.last_options else None,
                stopped_at=self.stopped_at,
            )
        if self._token_written and not self._secrets_deleted:
            state["token_digest"] = self._token_written
        if self.capacity_note:
            state["capacity_note"] = self.capacity_note
        if self.moved_from:
            state["moved_from"] = self.moved_from
        return state

    def clear_state(self) -> None:
        """Stop is not delete: the instance, its volume and the tunnel's port are kept."""
        self.claimed_community = None  # JupyterHub's stop always ends here
        super().clear_state()

    def _save_state(self) -> None:
        """Write the state to the hub database now (JupyterHub saves it only after start).
        Through the user's session: ``Spawner.db`` is deprecated, and warns (ten lines in the
        log) once per spawner, 5,000 times in a restart of a 5,000-server hub."""
        db = getattr(self.user, "db", None)
        if self.orm_spawner is not None and db is not None:
            self.orm_spawner.state = self.get_state()
            db.commit()

    # -- configuration helpers --------------------------------------------------------------

    @property
    def communities_config(self) -> CommunitiesConfig:
        if self.communities is None:
            if not self.communities_file:
                raise StartFailed("The hub has no communities configured; ask an admin.")
            self.communities = load_communities(self.communities_file)
        return self.communities

    def aws_for(self, region: str) -> Aws:
        return self.regions[region].aws

    def poller_for(self, region: str) -> InstancePoller:
        return self.regions[region].poller(
            self.hub_id,
            interval=self.instance_poll_interval,
            pages_per_minute=self.instance_poll_pages_per_minute,
        )

    def _parameters(self) -> ServerParameters:
        return ServerParameters.for_server(
            self.parameter_prefix, self.hub_id, self.user.name, self.name
        )

    async def _user_communities(self) -> list[Community]:
        auth_state = await self.user.get_auth_state() or {}
        return self.communities_config.for_teams(auth_state.get("teams", []))

    async def _render_options_form(self, spawner: Spawner) -> str:
        communities = await self._user_communities()
        if not communities:
            return (
                "<p>You are not a member of any community of this hub, so there is nothing to "
                "start. Sign out and in again if you joined a team recently.</p>"
            )
        current = None
        if self.last_options:
            with contextlib.suppress(OptionsError):
                current = validate_options(self.last_options.as_user_options(), communities)
        notes = "".join(
            f'<div class="alert alert-warning snh-budget-note" role="alert">{html.escape(n)}</div>'
            for n in await self._budget_notes(communities)
        )
        if self.capacity_note:
            notes += (
                '<div class="alert alert-warning snh-capacity-note" role="alert">'
                f"{html.escape(self.capacity_note)}</div>"
            )
        return notes + options_form(communities, current=current)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return options_from_form(formdata)

    # -- progress ---------------------------------------------------------------------------

    def _emit(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})
        self._events_changed.set()

    async def progress(self) -> Any:
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            self._events_changed.clear()
            await self._events_changed.wait()

    # -- start ------------------------------------------------------------------------------

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        if self.region:
            env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = self.region
        # The container reads the token itself, at each use, with the instance role: the hub
        # rewrites the parameter when it refreshes the token. SYNAPSE_AUTH_TOKEN is *not*
        # set: it would outrank the parameter in synapseclient's lookup and go stale after
        # the token's 24 hours, and environment variables leak into every child process.
        env["SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME"] = self._parameters().synapse_token
        return env

    async def start(self) -> str:
        began, error = time.monotonic(), None
        try:
            return await self._start()
        except BaseException as e:
            error = e
            self.claimed_community = None  # a failed start holds no place in the limit
            raise
        finally:
            metrics.observe_spawn(
                self.last_options.community_id if self.last_options else None,
                metrics.spawn_outcome(error),
                time.monotonic() - began,
            )

    def _audit(self, action: str, actor: Any = None, **fields: Any) -> None:
        """One audit line about this server (who: the request's user, admin, culler, …).
        Auditing must never break a start or a stop: a failure here is logged, not raised."""
        options = self.last_options
        line = {
            **audit.server_fields(self),
            "community": options.community_id if options else None,
            "instance_type": options.instance_type if options else None,
            "image": options.image_id if options else None,
            **fields,
        }
        try:
            audit.record(action, actor or audit.actor_for(self), **line)
        except Exception:
            self.log.exception("%s: could not write the audit line for %s", self._log_name, action)

    async def _start(self) -> str:
        """The request path of ``docs/spawner.md``, one step per line."""
        self._begin_start()
        self._check_server_name()
        earlier = self.last_options.as_user_options() if self.last_options else {}
        community, options = await self._chosen(self.user_options or earlier)
        auth_state = await self._signed_in_state()
        self._remember(community, options)
        aws, poller = self.aws_for(community.region), self.poller_for(community.region)
        await self._check_budget(community)
        await self._check_server_limit(community, poller)
        self._audit("start")
        store = await self._write_parameters(community, options, auth_state, aws)
        launched_now = False
        try:
            launched_now = await self._ensure_instance(
                community, self._identity(auth_state), options, aws, poller
            )
            await store.tag_for_instance(self._parameters(), self._instance_arn(community))
            await self._wait_reachable(community.image(options.image_id), aws, poller)
        except BaseException as e:
            await self._failed_start(e, community, aws, launched_now)
        if self.moved_from:
            # the moved server answered with its home volume: the old copies may go now,
            # without keeping the user waiting for them
            keep_task(asyncio.ensure_future(self._retire_moved(aws)))
        return self.tunnel_url

    def _begin_start(self) -> None:
        self._events = []
        self.stopped_at = None
        self.capacity_note = None
        self._emit(0, "Preparing your server…")

    def _check_server_name(self) -> None:
        """A new server's name follows JupyterHub 6's rule on every JupyterHub (see
        `spawner.naming.is_valid_server_name`); a server that started before keeps its name,
        as JupyterHub 6 lets servers made before it start (``allow-start``)."""
        if self.instance_id or self.last_options or is_valid_server_name(self.name):
            return
        raise StartRefused(
            f"The server name {self.name!r} is not allowed: use 1-{SERVER_NAME_MAX} lowercase "
            "letters, digits and single hyphens, starting with a letter (the display name can "
            "be anything).",
            400,
            reason="server-name",
        )

    async def _chosen(self, requested: dict[str, Any]) -> tuple[Community, SpawnOptions]:
        """The request's options, validated against the user's communities (400 if not)."""
        try:
            options = validate_options(requested, await self._user_communities())
        except OptionsError as e:
            raise StartRefused(str(e), 400, reason="options") from None
        community = self.communities_config.by_id(options.community_id)
        assert community is not None  # validate_options only returns known communities
        return community, options

    async def _signed_in_state(self) -> dict[str, Any]:
        """The user's auth state, with a token a notebook may be given (never an expired
        one: the pre-spawn refresh could not rotate it, so the user must sign in again)."""
        auth_state = await self.user.get_auth_state() or {}
        if (
            not auth_state.get("access_token")
            or not auth_state.get("userid")
            or _expired(auth_state)
        ):
            raise StartRefused(
                "Your Synapse sign-in has expired: sign out and sign in again.",
                403,
                reason="sign-in",
            )
        return auth_state

    def _identity(self, auth_state: dict[str, Any]) -> ServerIdentity:
        return ServerIdentity(
            hub_id=self.hub_id,
            user=self.user.name,
            server=self.name,
            synapse_userid=str(auth_state["userid"]),
            synapse_user_name=str(auth_state.get("user_name", self.user.name)),
            email=str(auth_state.get("email", "")),
        )

    def _remember(self, community: Community, options: SpawnOptions) -> None:
        """Keep the resolved choices: in the state (the next start's defaults, the cost and
        the audit lines) and as the server's ``user_options``, so that the idle cullers
        apply this server's community's rule even when the request named no community
        (JupyterHub saves user_options with the server)."""
        self.region = community.region
        self.last_options = options
        self.user_options = options.as_user_options()

    def _authorized_keys(self) -> list[str]:
        if self.ssh_authorized_keys is None:
            return []
        return [str(line) for line in self.ssh_authorized_keys(self.user.name)]

    async def _write_parameters(
        self,
        community: Community,
        options: SpawnOptions,
        auth_state: dict[str, Any],
        aws: Aws,
    ) -> ParameterStore:
        """This start's settings and secrets, where only the instance will read them."""
        store = ParameterStore(aws, self.parameter_kms_key_id)
        image = community.image(options.image_id)
        assert image is not None
        self._emit(10, "Writing your server's settings…")
        self._secrets_deleted = False
        try:
            await store.write(
                self._parameters(),
                config={
                    "image": image.image,
                    "image_kind": str(image.kind),
                    "port": self.notebook_port,
                    "user": self.user.name,
                    "server": self.name,
                    # the ports the relay may reach (the bootstrap publishes them on the
                    # instance's loopback) and who may log in over SSH
                    "relay_ports": list(community.relay_ports),
                    "ssh_authorized_keys": self._authorized_keys(),
                },
                env=self.get_env(),
                synapse_token=auth_state["access_token"],
            )
        except AwsError as e:
            raise self._aws_failure(e, community, "writing the server's parameters") from None
        self._token_written = token_digest(auth_state["access_token"])
        return store

    async def _wait_reachable(self, image: Any, aws: Aws, poller: InstancePoller) -> None:
        """From "EC2 accepted it" to "the notebook answers through the tunnel", or to the
        bootstrap's own word that it gave up (on the instance's console), whichever comes
        first: a bootstrap that failed will not try again, and the user should not wait
        ``start_timeout`` for nothing."""
        self._emit(40, "Instance is booting…")
        await self._wait_running(poller)
        # EC2 sets LaunchTime at every start: a failure stamped before it is an earlier boot's
        view = poller.get(self.instance_id) if self.instance_id else None
        since = getattr(view, "launch_time", None) or dt.datetime.now(dt.UTC)
        reach = asyncio.ensure_future(self._wait_connected(image, aws))
        watch = asyncio.ensure_future(self._watch_bootstrap(aws, since))
        try:
            await asyncio.wait({reach, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reach, watch):
                task.cancel()
            results = await asyncio.gather(reach, watch, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    async def _watch_bootstrap(self, aws: Aws, since: dt.datetime) -> None:
        """Read the instance's console every ``bootstrap_check_interval`` until the start is
        over; raise `StartFailed` with the bootstrap's reason once it says it gave up."""
        while True:
            # jittered: hundreds of starts at once must not read their consoles in step
            await asyncio.sleep(self.bootstrap_check_interval * random.uniform(0.75, 1.25))
            reason = await self._bootstrap_failure(aws, since)
            if reason is not None:
                self.log.error(
                    "%s: the bootstrap on %s gave up: %s", self._log_name, self.instance_id, reason
                )
                raise StartFailed(
                    f"Your server's instance could not start the notebook: {reason}. An admin "
                    "can find the details in the hub's log."
                )

    async def _bootstrap_failure(self, aws: Aws, since: dt.datetime) -> str | None:
        """The bootstrap's failure on the console since ``since``, if any. ``Latest`` (the
        serial console's newest output) exists on Nitro instances only: others answer
        ``UnsupportedOperation``, and get the buffered output instead."""
        for latest in (True, False) if self._console_latest else (False,):
            try:
                answer = await aws.call(
                    "ec2", "get_console_output", InstanceId=self.instance_id, Latest=latest
                )
            except AwsError as e:
                if latest and e.code == "UnsupportedOperation":
                    self._console_latest = False  # this instance type: not asked again
                    continue
                self.log.info("%s: cannot read the console: %s", self._log_name, e)
                return None
            return bootstrap_failure(str(answer.get("Output") or ""), since)
        return None

    async def _wait_connected(self, image: Any, aws: Aws) -> None:
        self._emit(60, "Waiting for the instance to connect to Systems Manager…")
        await self._wait_agent_online(aws)
        self._emit(75, "Opening a secure tunnel to the instance…")
        await self._open_tunnel()
        kind = "RStudio" if str(image.kind) == "rstudio" else "Jupyter"
        self._emit(85, f"Starting {kind}…")
        await self._wait_notebook()
        if not (await self.user.get_auth_state() or {}).get("access_token"):
            # The user's access ended while the instance booted (they left their teams, or
            # signed out everywhere): the start fails and cleans up after itself.
            raise StartRefused(
                "Your access to this hub has ended; sign in again.", 403, reason="access-ended"
            )

    async def _failed_start(
        self, e: BaseException, community: Community, aws: Aws, launched_now: bool
    ) -> NoReturn:
        """Audit and clean up a start that failed after its parameters were written, then
        raise what the user should see (the admin's details go to the log)."""
        refused = isinstance(e, StartRefused)  # the rules said no (e.g. capacity): no fault
        self._audit("start_failed", error=str(e)[:300], outcome="refused" if refused else "failed")
        await self._cleanup_failed_start(aws, launched_now, e)
        if isinstance(e, AwsError):
            raise self._aws_failure(e, community, e.operation) from None
        if isinstance(e, SessionError):
            self.log.error(
                "%s: Session Manager %s failed for %s: %s — check the hub role's "
                "ssm:StartSession permission and the instance's SSM agent",
                self._log_name,
                getattr(e, "call", "session"),
                self.instance_id,
                e,
            )
            raise StartFailed(
                "The hub could not open a Session Manager connection to your instance. "
                "It has been stopped; an admin has the details in the hub's log."
            ) from None
        if isinstance(e, Exception) and not isinstance(e, web.HTTPError):
            self.log.exception("%s: unexpected error during start", self._log_name)
            raise StartFailed(
                "Starting your server failed unexpectedly; an admin has the details in "
                "the hub's log. Please try again."
            ) from None
        raise e

    @property
    def tunnel_url(self) -> str:
        return f"http://127.0.0.1:{self.tunnel_port}"

    async def get_url(self) -> str:
        """The server is wherever its tunnel listens.

        After a restart JupyterHub asks this (after `poll`) and, when it differs, corrects
        the URL in its database before it checks the server and routes to it: a server whose
        start the previous hub did not finish (killed mid-spawn) has no URL of its own there,
        and a tunnel whose saved port was taken has moved.
        """
        if self.tunnel_port and self.server is not None:
            return self.tunnel_url + self.server.base_url
        return await super().get_url()

    async def _check_budget(self, community: Community) -> None:
        """Refuse a start while the user or the community is over its monthly budget."""
        if self.budget_check is None:
            return
        try:
            verdict = await self.budget_check(self.user.name, community)
        except Exception:
            # the figures could not be made: not a reason to refuse a start (documented)
            self.log.exception("%s: budget check failed; starting anyway", self._log_name)
            return
        if verdict.level == "over":
            self.log.info("%s: start refused, over budget: %s", self._log_name, verdict.message)
            self._audit("start_refused", reason=verdict.message)
            raise StartRefused(verdict.message, 403, reason="budget")

    async def _budget_notes(self, communities: list[Community]) -> list[str]:
        """The spawn form's budget warnings (and refusals), one per community that has one."""
        if self.budget_check is None:
            return []
        notes = []
        for community in communities:
            try:
                verdict = await self.budget_check(self.user.name, community)
            except Exception:
                self.log.exception("%s: no budget note for %s", self._log_name, community.id)
                continue
            if verdict.level != "ok":
                notes.append(f"{community.name}: {verdict.message}")
        return notes

    async def _check_server_limit(self, community: Community, poller: InstancePoller) -> None:
        """Count the user's servers in the community and take this one's place, atomically.

        EC2 shows only instances that exist; starts racing each other (parallel REST calls)
        have none yet. So the servers that passed this check in this hub and have not stopped
        (their ``claimed_community``) count too, and the count and the claim happen with no
        ``await`` between them: no other start can run in between on the event loop.
        """
        if not poller.fresh:
            with contextlib.suppress(AwsError):
                await poller.refresh()
        own = self.name or DEFAULT_SERVER_TAG
        servers = {
            v.tags.get(TAG_SERVER)
            for v in poller.find(**{TAG_USER: self.user.name, TAG_COMMUNITY: community.id})
            if v.state in ("pending", "running")
            and v.instance_id != self.instance_id
            # this server's own instance, still running (restarted by this start)
            and v.tags.get(TAG_SERVER) != own
        }
        servers |= {
            spawner.name or DEFAULT_SERVER_TAG
            for spawner in self.user.spawners.values()
            if spawner is not self and getattr(spawner, "claimed_community", None) == community.id
        }
        if len(servers) >= community.max_servers_per_user:
            refusal = StartRefused(
                f"You already have {len(servers)} running server(s) in {community.name}, the "
                f"most this community allows. Stop one before starting another.",
                403,
                reason="server-limit",
            )
            self._audit("start_refused", reason=str(refusal))
            raise refusal
        self.claimed_community = community.id

    async def _ensure_instance(
        self,
        community: Community,
        identity: ServerIdentity,
        options: SpawnOptions,
        aws: Aws,
        poller: InstancePoller,
    ) -> bool:
        """This server's instance, started: resumed if it exists (restarted first if it
        still runs), else launched. True when this call launched a new one."""
        view = await self.get_object(aws, poller)
        gone = view is None or view.state in ("terminated", "shutting-down")
        if gone and self.moved_from:
            # a moved server's new instance is gone before its move was cleaned up: the old
            # instance still has the files; go back to it rather than launch an empty one
            self.log.warning(
                "%s: moved instance %s is gone; back to %s",
                self._log_name,
                self.instance_id,
                self.moved_from["instance_id"],
            )
            self.instance_id = self.moved_from["instance_id"]
            self.volume_id = self.moved_from["volume_id"]
            self.moved_from = None
            self._save_state()
            view = await self.get_object(aws, poller)
            gone = view is None or view.state in ("terminated", "shutting-down")
        if gone:
            await self.create_object(community, identity, options, aws)
            poller.kick(self.instance_id)
            return True
        self.instance_id = view.instance_id
        self.volume_id = view.volumes.get(HOME_DEVICE, self.volume_id)
        self._save_state()
        try:
            await self.start_object(view, options, aws, poller)
        except NoCapacity:
            if not self.zone_move or HOME_DEVICE not in view.volumes:
                raise
            elsewhere = await self._subnets_elsewhere(community, identity, view)
            if not elsewhere:
                raise
            await self.move_object(view, community, identity, options, aws, poller, elsewhere)
        poller.kick(self.instance_id)
        return False

    # -- the instance's lifecycle: small steps a subclass may override (dockerspawner's
    # -- get/create/start/stop/remove_object)

    async def start_object(
        self, view: InstanceView, options: SpawnOptions, aws: Aws, poller: InstancePoller
    ) -> None:
        """Start this server's existing instance with the chosen image and type: retag an
        image switch, restart an instance that still runs (so it boots with this start's
        parameters), wait for a stop in flight, change the type, ``StartInstances``."""
        if view.tags.get(TAG_IMAGE) != options.image_id:
            # An image switch: the bootstrap reads the image from the config parameter at
            # boot; the tag follows so cost reports see what runs.
            await aws.call(
                "ec2",
                "create_tags",
                Resources=[view.instance_id],
                Tags=[{"Key": TAG_IMAGE, "Value": options.image_id}],
            )
        state = view.state
        if state in ("pending", "running"):
            await self._stop_stale_instance(view.instance_id, state, aws, poller)
            state = "stopping"
        if state == "stopping":
            self._emit(20, f"Waiting for {view.instance_id} to finish stopping…")
            async with asyncio.timeout(300):
                await poller.wait_for(view.instance_id, {"stopped"})
        if view.instance_type != options.instance_type:
            await aws.call(
                "ec2",
                "modify_instance_attribute",
                InstanceId=view.instance_id,
                InstanceType={"Value": options.instance_type},
            )
        self._emit(20, f"Starting your stopped instance {view.instance_id}…")
        try:
            await self._capacity_call(
                aws, "ec2", "start_instances", {"InstanceIds": [view.instance_id]}
            )
        except AwsError as e:
            if e.kind is not ErrorKind.CAPACITY:
                raise
            # a stopped instance can start only in its own zone: another type may fit there
            community = self.communities_config.by_id(options.community_id)
            assert community is not None
            zone = view.availability_zone or "its zone"
            raise self._no_capacity(community, options.instance_type, zone) from None
        self._audit("resume", instance_id=view.instance_id)

    async def _stop_stale_instance(
        self, instance_id: str, state: str, aws: Aws, poller: InstancePoller
    ) -> None:
        """Stop this server's instance found running at a start, so that it boots again.

        JupyterHub calls ``start()`` only for a server it does not show running, and gives
        every start a new API token; an instance still running (a stop that failed, a hub
        database restored from a backup, a start the hub did not see end) serves a notebook
        with an earlier start's token, hub URL and image, which the hub no longer honours. The
        bootstrap reads the server's parameters at every boot, so a stop and a start give
        the notebook this start's settings; the home volume stays.
        """
        if state == "pending":  # EC2 cannot stop an instance before it runs
            async with asyncio.timeout(300):
                await poller.wait_for(instance_id, {"running"})
        self._emit(
            20, f"Restarting your running instance {instance_id} with this start's settings…"
        )
        await aws.call("ec2", "stop_instances", InstanceIds=[instance_id])
        self._audit(
            "stop",
            instance_id=instance_id,
            reason="found running at a start: restarted to take this start's settings",
        )
        poller.kick(instance_id)

    async def get_object(self, aws: Aws, poller: InstancePoller) -> InstanceView | None:
        """This server's instance: by the id in the state, else by its tags (from describes
        that begin now: an instance launched a moment ago, by this hub before a crash, must
        be found)."""
        if self.instance_id:
            view = poller.get(self.instance_id)
            if view is UNKNOWN:
                await poller.refresh()
            elif view is None:
                await poller.refresh_some([self.instance_id])
            view = poller.get(self.instance_id)
            if view is not None and view is not UNKNOWN:
                return view
        mine = [
            v
            for v in await poller.lookup(
                **{TAG_USER: self.user.name, TAG_SERVER: self.name or DEFAULT_SERVER_TAG}
            )
            if v.state not in ("terminated", "shutting-down")
        ]
        mine.sort(key=lambda v: v.launch_time or 0, reverse=True)
        return mine[0] if mine else None

    async def _subnets_elsewhere(
        self, community: Community, identity: ServerIdentity, view: InstanceView
    ) -> list[str]:
        """The community's subnets outside the stopped instance's zone, in launch order."""
        if not view.availability_zone:  # cannot tell other zones from its own
            return []
        region = self.regions[community.region]
        return [
            subnet
            for subnet in subnet_order(community, identity)
            if subnet != view.subnet_id and await region.zone_of(subnet) != view.availability_zone
        ]

    async def move_object(
        self,
        view: InstanceView,
        community: Community,
        identity: ServerIdentity,
        options: SpawnOptions,
        aws: Aws,
        poller: InstancePoller,
        subnets: list[str],
    ) -> None:
        """Start the stopped server in another zone (`spawner.zone_move`): snapshot its home
        volume, launch in ``subnets`` with the home volume made from it, and wait for it to
        run with that volume attached. Any failure, or the start being cancelled (JupyterHub's
        ``start_timeout``), undoes what was done (`_undo_move`): the server is its old
        instance again. The old copies are removed only after the moved server answered
        (`_retire_moved`)."""
        old_id, old_volume = view.instance_id, view.volumes[HOME_DEVICE]
        where = view.availability_zone
        snapshot, snapshot_gb = await self._move_snapshot(view, old_volume, options, aws)
        size = max(options.disk_gb, snapshot_gb)  # EC2 refuses a volume smaller than it
        self.instance_id, self.launch_id = None, None
        try:
            await self.create_object(
                community,
                identity,
                dataclasses.replace(options, disk_gb=size),
                aws,
                subnets=subnets,
                home_snapshot=snapshot,
                reason=f"zone move of {old_id} from {where}: home volume from {snapshot}",
            )
            poller.kick(self.instance_id)
            self._emit(30, f"Moved to {self.instance_id}: waiting for it to run…")
            async with asyncio.timeout(600):
                new = await poller.wait_for(str(self.instance_id), {"running"})
            if new.state != "running" or HOME_DEVICE not in new.volumes:
                raise StartFailed(
                    f"Your server could not be moved to another zone: its new instance is "
                    f"{new.state} without its home volume. Your files are unchanged in "
                    f"{where}: start again later.",
                    status=503,
                )
        except BaseException as e:
            await asyncio.shield(self._undo_move(aws, old_id, old_volume, snapshot))
            if isinstance(e, NoCapacity):  # nowhere: the offer names every zone tried
                zones = [await self.regions[community.region].zone_of(s) for s in subnets]
                where_all = ", ".join(dict.fromkeys([where, *zones]))
                raise self._no_capacity(community, options.instance_type, where_all) from None
            raise
        self.moved_from = {"instance_id": old_id, "volume_id": old_volume, "snapshot_id": snapshot}
        self.capacity_note = None
        self._save_state()

    async def _move_snapshot(
        self, view: InstanceView, volume: str, options: SpawnOptions, aws: Aws
    ) -> tuple[str, int]:
        """The move's first step: the home volume's snapshot, completed; `StartFailed` with
        the server unchanged when it cannot be had."""
        where = view.availability_zone
        self._emit(
            22,
            f"No {options.instance_type} capacity in {where}: copying your home volume to "
            "another zone (your files stay on it until the copy runs there)…",
        )
        try:
            snapshot, size = await zone_move.snapshot_home(
                aws,
                view,
                volume,
                progress=lambda text: self._emit(24, text),
                timeout=max(60.0, self.start_timeout / 2),
            )
        except zone_move.MoveFailed as e:
            self.log.error("%s: zone move of %s: %s", self._log_name, view.instance_id, e)
            raise StartFailed(
                f"AWS has no {options.instance_type} capacity in {where} right now, and "
                f"your server could not be moved to another zone ({e}). Your files are "
                "unchanged on its volume: start again later, or choose another type.",
                status=503,
            ) from None
        self._audit("snapshot", snapshot_id=snapshot, volume_id=volume, reason="zone move")
        return snapshot, size

    async def _undo_move(self, aws: Aws, old_id: str, old_volume: str, snapshot: str) -> None:
        """Back to the old instance: a new one launched by the move is terminated (the old
        volume still has the files), the state points at the old one, the snapshot goes."""
        new_id = self.instance_id
        if new_id and new_id != old_id:
            try:
                await aws.call("ec2", "terminate_instances", InstanceIds=[new_id])
                self._audit("terminate", instance_id=new_id, reason="zone move undone")
            except AwsError as e:
                self.log.error("%s: zone move undone, %s left: %s", self._log_name, new_id, e)
        self.instance_id, self.volume_id, self.launch_id = old_id, old_volume, None
        self._save_state()
        await zone_move.discard_snapshot(aws, snapshot)

    async def _retire_moved(self, aws: Aws) -> None:
        """The old instance, its home volume and the move's snapshot, after the moved server
        answered; each removal that failed is an audit line (``keep_volume``)."""
        moved = self.moved_from
        if not moved:
            return
        old_id, old_volume, snapshot = (
            moved["instance_id"],
            moved["volume_id"],
            moved["snapshot_id"],
        )
        for action, what in await zone_move.retire_old(aws, old_id, old_volume, snapshot):
            if action == "keep_volume":
                self._audit(action, instance_id=old_id, volume_id=old_volume, reason=what)
            elif action == "terminate":
                self._audit(action, instance_id=old_id, reason="zone move: replaced")
            elif action == "delete_volume":
                self._audit(action, instance_id=old_id, volume_id=what, reason="zone move")
            else:
                self._audit(action, snapshot_id=what, reason="zone move: used")
        if self.moved_from is moved:
            self.moved_from = None
            self._save_state()

    async def create_object(
        self,
        community: Community,
        identity: ServerIdentity,
        options: SpawnOptions,
        aws: Aws,
        *,
        subnets: list[str] | None = None,
        home_snapshot: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Launch a new instance: ``RunInstances`` in the community's subnets (or
        ``subnets``) in turn until one has capacity, with a client token that makes a
        retried call idempotent; the home volume from ``home_snapshot`` when given."""
        if not self.launch_id:
            self.launch_id = uuid.uuid4().hex
            self._save_state()
        user_data = self._user_data(community)
        token = client_token(identity, self.launch_id)
        root_device = await self.regions[community.region].root_device(community.ami)
        tried: list[str] = []
        for subnet in subnets if subnets is not None else subnet_order(community, identity):
            zone = await self.regions[community.region].zone_of(subnet)
            self._emit(
                20,
                f"Requesting {_article(options.instance_type)} {options.instance_type} in {zone}…",
            )
            request = run_instances_request(
                community,
                identity,
                options,
                subnet=subnet,
                client_token=token,
                user_data=user_data,
                root_device=root_device,
                home_snapshot=home_snapshot,
            )
            try:
                answer = await self._run_instances(aws, request)
            except AwsError as e:
                if e.kind is not ErrorKind.CAPACITY:
                    raise
                self.log.warning("%s: no capacity in %s (%s): %s", self._log_name, subnet, zone, e)
                tried.append(zone)
                # A new token for the next subnet: the same one would replay this failure.
                token = client_token(identity, f"{self.launch_id}-{len(tried)}")
                continue
            instance = answer["Instances"][0]
            self.instance_id = instance["InstanceId"]
            self.volume_id = _home_volume(instance)
            self.launch_id = None
            self._save_state()
            self.log.info("%s: launched %s in %s", self._log_name, self.instance_id, subnet)
            self._audit("launch", instance_id=self.instance_id, subnet=subnet, reason=reason)
            return
        raise self._no_capacity(community, options.instance_type, ", ".join(tried))

    def _user_data(self, community: Community) -> str:
        return render_user_data(
            BootstrapConfig(
                parameter_path=self._parameters().path,
                region=community.region,
                port=self.notebook_port,
                backstop_idle_seconds=self._backstop_seconds(community),
            )
        )

    def _no_capacity(self, community: Community, instance_type: str, where: str) -> NoCapacity:
        """The refusal that offers the community's equivalent types (`capacity_advice`),
        kept for the spawn form until the next start."""
        self.capacity_note = capacity_advice(community, instance_type, where)
        self._save_state()
        return NoCapacity(self.capacity_note)

    def _backstop_seconds(self, community: Community) -> int:
        """The instance's own idle limit: a second, larger timeout than the hub's culler
        (`backstop_idle_seconds`, else from the community's own rule)."""
        if community.id in self.backstop_idle_seconds:
            return self.backstop_idle_seconds[community.id]
        [rule] = culling.cull_rules([community])
        return culling.backstop_idle_seconds(rule.timeout_seconds)

    async def _run_instances(self, aws: Aws, request: dict[str, Any]) -> dict[str, Any]:
        """One subnet's RunInstances, with the same client token at every attempt (EC2
        answers a repeat with the same instance)."""
        return await self._capacity_call(aws, "ec2", "run_instances", request)

    async def _capacity_call(
        self, aws: Aws, service: str, operation: str, request: dict[str, Any]
    ) -> dict[str, Any]:
        """An EC2 call that asks for capacity (RunInstances, StartInstances): throttling and
        transient errors retried here with backoff, a capacity error at once to the caller
        (another subnet, or the user's choice of another type, is the answer; botocore would
        retry it in place, as it comes as HTTP 500)."""
        delay = 1.0
        for attempt in range(1, 9):
            try:
                return await aws.call(service, operation, retry=False, **request)
            except AwsError as e:
                if e.kind not in (ErrorKind.THROTTLED, ErrorKind.TRANSIENT) or attempt == 8:
                    raise
                self.log.warning(
                    "%s: %s %s, retrying in %.0fs", self._log_name, operation, e.code, delay
                )
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 20.0)
        raise AssertionError("unreachable")

    def _instance_arn(self, community: Community) -> str:
        """The instance's ARN; partition and account are the instance profile's (the loader
        checked its form), which are necessarily the instance's own."""
        _, partition, _, _, account, _ = community.instance_profile_arn.split(":", 5)
        return f"arn:{partition}:ec2:{community.region}:{account}:instance/{self.instance_id}"

    async def _wait_running(self, poller: InstancePoller) -> None:
        assert self.instance_id
        view = await poller.wait_for(self.instance_id, {"running"})
        if view.state != "running":
            raise StartFailed(
                f"The instance {self.instance_id} did not start ({view.state}"
                f"{': ' + view.state_reason if view.state_reason else ''}). Try again; if it "
                "keeps happening, ask an admin."
            )
        self.volume_id = view.volumes.get(HOME_DEVICE, self.volume_id)
        self._save_state()

    async def _wait_agent_online(self, aws: Aws) -> None:
        delay = 1.0
        while True:
            answer = await aws.call(
                "ssm",
                "describe_instance_information",
                Filters=[{"Key": "InstanceIds", "Values": [self.instance_id]}],
            )
            info = answer.get("InstanceInformationList", [])
            if info and info[0].get("PingStatus") == "Online":
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 10.0)

    def _new_tunnel(self, local_port: int, remote_port: int | None = None) -> Tunnel:
        assert self.instance_id and self.region
        aws = self.aws_for(self.region)
        settings = TunnelSettings(
            backoff_max=self.tunnel_backoff_max,
            max_sessions=self.tunnel_max_sessions,
            resume_timeout=self.tunnel_resume_timeout,
            pace=self.tunnel_pace,
            idle_release=self.tunnel_idle_release,
        )
        return Tunnel(
            self.instance_id,
            remote_port or self.notebook_port,
            settings,
            local_port=local_port,
            region=self.region,
            # one attempt per call: the tunnel retries StartSession and ResumeSession itself,
            # with its own backoff and deadlines, and a call must not hold a pool thread for
            # minutes of botocore's retries while hundreds of tunnels resume after a blip
            ssm_client_factory=lambda: aws.client("ssm", retry=False),
        )

    async def _open_tunnel(self, *, lazy: bool = False) -> None:
        """The tunnel on the server's saved port, so an existing proxy route stays valid."""
        if self.tunnel is not None:
            if self.tunnel.connected:
                return
            await self._close_tunnel()
        tunnel = self._new_tunnel(self.tunnel_port or 0)
        moved = False
        try:
            await tunnel.start(lazy=lazy)
        except OSError:
            # The saved port is taken by something else: any port will do for a new route.
            self.log.warning("%s: port %s taken, tunnel moves", self._log_name, self.tunnel_port)
            tunnel = self._new_tunnel(0)
            await tunnel.start(lazy=lazy)
            moved = self.tunnel_port is not None
        self.tunnel = tunnel
        metrics.track_tunnel(tunnel.metrics)
        if tunnel.local_port != self.tunnel_port:  # a restart keeps it: 5,000 commits fewer
            self.tunnel_port = tunnel.local_port
            self._save_state()
        if moved:
            await self._reroute()

    async def _reroute(self) -> None:
        """Point the server's proxy route at the tunnel's new port, now.

        The old port belongs to whatever took it (any local process can listen on a free
        loopback port): a route left pointing there would hand the user's requests, cookies
        included, to it. The server's URL in the hub's database follows too, so JupyterHub's
        own route check (at start-up and every few minutes) agrees.
        """
        if self.server is None:
            return
        self.server.port = self.tunnel_port
        self.user.db.commit()
        proxy = self.user.settings.get("proxy")
        if proxy is None:
            return
        try:
            await proxy.add_user(self.user, self.name)
        except Exception as e:  # e.g. the proxy not up yet at start-up: its route check follows
            self.log.warning("%s: could not move the proxy route yet: %s", self._log_name, e)

    async def _wait_notebook(self) -> None:
        """The notebook's /api through the tunnel: up once it answers at all (even 4xx)."""
        client = AsyncHTTPClient()
        url = url_path_join(self.tunnel_url, self.server.base_url if self.server else "/", "api")
        delay = 0.5
        while True:
            try:
                await client.fetch(url, request_timeout=10, follow_redirects=False)
                return
            except HTTPClientError as e:
                if e.code not in (599, 502, 503, 504):
                    return
            except OSError:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    async def _cleanup_failed_start(
        self, aws: Aws, launched_now: bool, error: BaseException
    ) -> None:
        """Nothing may be left running unseen after a failed start."""
        self.log.warning("%s: start failed (%r); cleaning up", self._log_name, error)
        await self._close_tunnel()
        with contextlib.suppress(AwsError):
            await self._delete_parameters(aws)
        if not self.instance_id:
            return
        action = self.failed_start_action
        try:
            if action == "terminate" and launched_now:
                await aws.call("ec2", "terminate_instances", InstanceIds=[self.instance_id])
                self.instance_id = self.volume_id = None
            else:
                await aws.call("ec2", "stop_instances", InstanceIds=[self.instance_id])
            self.log.info("%s: %s instance after failed start", self._log_name, action)
            self._audit(action, audit.HUB, reason="failed start")
        except AwsError as e:
            self.log.error(
                "%s: could not %s %s after a failed start: %s",
                self._log_name,
                action,
                self.instance_id,
                e,
            )
        self._save_state()

    def _aws_failure(self, e: AwsError, community: Community, doing: str) -> StartFailed:
        """A message for the user, and a log line naming the call and setting for the admin."""
        setting = {
            "InvalidAMIID.NotFound": "ami",
            "InvalidAMIID.Malformed": "ami",
            "InvalidSubnetID.NotFound": "subnets",
            "InvalidGroup.NotFound": "security_groups",
            "InvalidParameterValue": "instance_profile_arn (or another launch setting)",
        }.get(e.code, "")
        self.log.error(
            "%s: %s failed for community %r: %s: %s%s",
            self._log_name,
            e.operation,
            community.id,
            e.code,
            e.message,
            f" — check the community's {setting!s} in the communities file"
            if setting
            else (" — check the hub's IAM role" if e.kind is ErrorKind.PERMISSION else ""),
        )
        if e.kind is ErrorKind.PERMISSION:
            return StartFailed(
                "The hub is not allowed to start this server (an AWS permission is missing). "
                "An admin has been told in the hub's log; please try again later."
            )
        if e.kind is ErrorKind.CONFIGURATION:
            return StartFailed(
                f"{community.name} is misconfigured ({e.code}), so servers cannot start. "
                "An admin has been told in the hub's log."
            )
        if e.kind is ErrorKind.THROTTLED:
            return StartFailed("AWS is busy right now (throttling). Please try again in a minute.")
        return StartFailed(f"AWS failed while {doing} ({e.code}). Please try again.")

    # -- poll, stop, delete -------------------------------------------------------------------

    async def poll(self) -> int | None:
        if not self.instance_id or not self.region:
            return 0
        poller = self.poller_for(self.region)
        view = poller.get(self.instance_id)
        if view is UNKNOWN:
            try:
                await poller.ensure_fresh()
            except AwsError as e:
                self.log.warning("%s: state unknown (%s): still running", self._log_name, e)
                return None  # cannot tell: an AWS error is not "stopped"
            view = poller.get(self.instance_id)
        if view is UNKNOWN:
            return None
        if view is None:
            return await self._confirm_gone()
        if view.state in ("pending", "running"):
            self._space_polls(poller)
            if self.tunnel is None:
                # After a hub restart: listen on the saved port at once, so the proxy route
                # stays valid; the session opens with the first request (hundreds of servers
                # do not open hundreds of sessions at once).
                try:
                    await self._open_tunnel(lazy=True)
                except OSError as e:
                    self.log.warning("%s: cannot reopen the tunnel: %s", self._log_name, e)
            self._check_auth_in_background()
            if self.ready:
                for check in self.running_checks:
                    try:
                        check(self)
                    except Exception:
                        self.log.exception("%s: running check %r failed", self._log_name, check)
            return None
        if self.tunnel is not None:
            # The hub believed it up: it stopped by itself (its backstop) or behind our back.
            self._audit(
                "stopped",
                audit.BACKSTOP,
                reason=view.state_reason or view.state,
                stopped_since=view.state_since,
            )
        await self._close_tunnel()
        # JupyterHub calls no stop() for a server that poll() finds stopped (its backstop shut
        # it down, or someone stopped it in the console): its secrets go now.
        try:
            await self._delete_parameters(self.aws_for(self.region))
        except AwsError as e:
            self.log.warning("%s: could not delete the parameters: %s", self._log_name, e)
        return 0

    def _space_polls(self, poller: InstancePoller) -> None:
        """Space this server's polls by ``poll_interval`` times the shared poller's stretch.

        JupyterHub polls every running server every ``poll_interval`` (30 s). Up to one page
        of instances (1,000) the view those polls read changes as often; beyond it the looks
        are spread out to keep to ``instance_poll_pages_per_minute`` (200 s at 5,000
        servers), and the 170 polls a second of 5,000 servers cost the hub 12 % of a core to
        read a view that had not changed (`benchmarks/scale.py`). Stretched alike, the polls
        of 5,000 servers cost what those of 1,000 do. What else rides on the poll (the
        membership check, the stop watch's warnings) is then up to one stretched poll later,
        and a server that stopped by itself is seen up to one look later, as before."""
        callback = getattr(self, "_poll_callback", None)  # JupyterHub's PeriodicCallback
        if callback is not None and self.poll_interval > 0:
            # tornado reads callback_time at each scheduling: it takes effect from the next
            callback.callback_time = 1e3 * self.poll_interval * max(1.0, poller.stretch)

    async def _confirm_gone(self) -> int | None:
        """The describe did not list it: make sure before saying so (eventual consistency)."""
        try:
            answer = await self.aws_for(self.region).call(
                "ec2", "describe_instances", InstanceIds=[self.instance_id]
            )
        except AwsError as e:
            return 0 if e.kind is ErrorKind.NOT_FOUND else None
        states = [i["State"]["Name"] for r in answer["Reservations"] for i in r["Instances"]]
        return None if states and states[0] in ("pending", "running") else 0

    def _check_auth_in_background(self) -> None:
        """Start the token and membership check unless one is in flight.

        Not awaited by `poll`: it may call Synapse (slow during an outage), and a user found
        in no team has all their servers stopped by `authenticator.access.end_access`, this
        one included, which must not run inside this server's own poll (JupyterHub's
        start-up check and its poll loop await the poll)."""
        if self._auth_check is None or self._auth_check.done():
            self._auth_check = keep_task(asyncio.ensure_future(self._refresh_auth_logged()))

    async def _refresh_auth_logged(self) -> None:
        """A background task's failure would otherwise only reach asyncio's "never
        retrieved" warning; the next poll tries again."""
        try:
            await self._refresh_token_if_needed()
        except Exception:
            self.log.exception("%s: checking the Synapse token failed", self._log_name)

    def _membership_due(self) -> bool:
        """Whether the owner's teams were last checked more than ``auth_refresh_age`` ago.

        JupyterHub re-checks on the user's requests only; a removed member who makes none (a
        job running, an open SSH session) would keep the server and the community's data
        role until the token nears expiry. The poll closes that gap within
        ``auth_refresh_age`` plus one ``poll_interval``. A restarted hub knows no check: its
        first ones are spread over one ``auth_refresh_age``, so that thousands of servers do
        not ask Synapse at once."""
        age = getattr(self.authenticator, "auth_refresh_age", 0)
        if not age:
            return False
        now = time.monotonic()
        stamps = [getattr(self.user, "_auth_refreshed", None), self._membership_checked]
        known = [stamp for stamp in stamps if stamp is not None]
        if not known:
            self._membership_checked = now - random.uniform(0, age)
            return False
        return now - max(known) >= age

    def _near_expiry(self, expires: float | None) -> bool:
        return bool(expires) and expires - time.time() < self.token_refresh_margin

    async def _refresh_token_if_needed(self) -> None:
        """Keep the token parameter of a running server current (Synapse tokens live 24 h),
        and the owner's membership checked within ``auth_refresh_age`` (`_membership_due`).

        The auth state is decrypted (in a thread) only when its stored form changed since the
        last pass that left the parameter current, or when the token nears expiry or the
        membership check is due: decrypting it at every poll was a quarter of a poll's cost
        with thousands of servers, to find the token already written."""
        blob = getattr(self.user, "encrypted_auth_state", None)
        settled_blob, settled_expires = self._auth_settled
        membership_due = self._membership_due()
        if (
            blob is not None
            and blob == settled_blob
            and not self._near_expiry(settled_expires)
            and not membership_due
        ):
            return
        state = await self.user.get_auth_state() or {}
        expires = state.get("expires_at")
        refresh = getattr(self.authenticator, "refresh_tokens", None)
        near_expiry = self._near_expiry(expires)
        if refresh is not None and (near_expiry or membership_due):
            self._membership_checked = time.monotonic()
            model = await refresh(self.user, force=near_expiry)
            if model is False:
                # Signed out, or in no team any more (then access has ended and this server
                # is stopping): nothing is written for a server that must lose its token.
                self.log.warning("%s: the owner must sign in again", self._log_name)
                return
            # JupyterHub's own stamp (user._auth_refreshed) is left alone: its refresh also
            # applies the model (admin flag, groups), which this one does not.
            if isinstance(model, dict):
                state = model["auth_state"]
                blob = None  # a refresh stored a new state: read it again next time
            elif near_expiry:
                self.log.warning("%s: could not refresh the Synapse token", self._log_name)
        async with self._secrets_lock:
            await self._rewrite_token(state)
        token = state.get("access_token")
        settled = bool(token) and token_digest(token) == self._token_written and not _expired(state)
        self._auth_settled = (blob, state.get("expires_at")) if settled else (None, None)

    async def _rewrite_token(self, state: dict[str, Any]) -> None:
        """Under `_secrets_lock`: a stopped or stopping server's parameters are deleted and
        stay so."""
        token = state.get("access_token")
        if not token or token_digest(token) == self._token_written or self._stop_pending:
            return
        if self._secrets_deleted:
            return
        if _expired(state):
            # A notebook is never handed a token past its life: it keeps the one it has
            # until a refresh succeeds (the hub's view of expiry; Synapse's 401 on a token
            # it thinks expired makes the authenticator rotate again).
            self.log.warning(
                "%s: not writing an expired Synapse token to the parameter", self._log_name
            )
            return
        try:
            await ParameterStore(
                self.aws_for(self.region), self.parameter_kms_key_id
            ).write_synapse_token(self._parameters(), token)
        except AwsError as e:
            self.log.warning("%s: could not rewrite the token parameter: %s", self._log_name, e)
            return
        if self._token_written is not None:
            self.log.info("%s: rewrote the Synapse token parameter", self._log_name)
        self._token_written = token_digest(token)
        self._save_state()  # a restarted hub knows the parameter is current

    async def relay_tunnel(self, port: int) -> Tunnel:
        """A tunnel to ``port`` of this server (where its instance publishes it:
        `spawner.naming.instance_port`), for its owner's relay (`operations.relay`): opened
        when first asked for (raising `SessionError` if it
        cannot be), kept while the server runs, closed when it stops. Which ports may be
        asked for is the relay's decision (the community's ``relay_ports``)."""
        async with self._relay_lock:
            tunnel = self._relay_tunnels.get(port)
            if tunnel is None:  # once started, a tunnel opens sessions as connections need them
                remote = instance_port(port, self.notebook_port)
                tunnel = self._new_tunnel(0, remote_port=remote)
                try:
                    await tunnel.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await tunnel.stop()
                    raise
                self._relay_tunnels[port] = tunnel
                metrics.track_tunnel(tunnel.metrics)
            return tunnel

    async def _close_tunnel(self) -> None:
        relays, self._relay_tunnels = list(self._relay_tunnels.values()), {}
        for relay in relays:
            metrics.untrack_tunnel(relay.metrics)
            with contextlib.suppress(Exception):
                await relay.stop()
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            metrics.untrack_tunnel(tunnel.metrics)
            with contextlib.suppress(Exception):
                await tunnel.stop()

    async def stop(self, now: bool = False) -> None:
        self.claimed_community = None
        await self._close_tunnel()
        if not self.region:
            return
        aws = self.aws_for(self.region)
        await self._delete_parameters(aws)
        if self.instance_id:
            await self.stop_object(aws)
            self.poller_for(self.region).kick(self.instance_id)
        self.log.info("%s: stopped %s (volume kept)", self._log_name, self.instance_id)

    async def _delete_parameters(self, aws: Aws) -> None:
        """The server's secrets go (stop, delete, a failed start, a stop behind the hub's
        back); no token is rewritten after this until the next start writes them again."""
        async with self._secrets_lock:
            self._secrets_deleted = True
            await ParameterStore(aws).delete(self._parameters())

    async def stop_object(self, aws: Aws) -> None:
        """``StopInstances``: the disk stays; an instance already gone is forgotten."""
        try:
            await aws.call("ec2", "stop_instances", InstanceIds=[self.instance_id])
            self.stopped_at = audit.isoformat(audit.utcnow())
            self._audit("stop")
        except AwsError as e:
            if e.kind is not ErrorKind.NOT_FOUND:
                raise
            self.instance_id = None

    async def delete_forever(self) -> None:
        """Deleting a named server (or the user) terminates its instance: the home volume is
        snapshotted first when the community says so (`spawner.removal`)."""
        if not self.instance_id or not self.region:
            return
        aws = self.aws_for(self.region)
        with contextlib.suppress(AwsError):
            await self._delete_parameters(aws)
        await self.remove_object(aws)
        self.log.info("%s: terminated %s", self._log_name, self.instance_id)
        self.instance_id = self.volume_id = self.tunnel_port = None

    async def remove_object(self, aws: Aws) -> None:
        """Terminate the instance for good, the home volume snapshotted first when the
        community says so: `spawner.removal`, the reaper's own steps."""
        view = self.poller_for(self.region).get(self.instance_id)
        community = self.communities_config.by_id(
            self.last_options.community_id if self.last_options else ""
        )
        await snapshot_then_terminate(
            aws,
            view if view not in (None, UNKNOWN) else self.instance_id,
            community,
            audit.actor_for(self),
            "server deleted" if self.name else "user deleted",
        )
