"""A stand-in for AWS Systems Manager Session Manager: the SSM API and an agent.

``serve()`` starts, on the running loop, an HTTP server that answers boto3's ``ssm`` client
(StartSession, TerminateSession, ResumeSession, DescribeSessions, DescribeInstanceInformation;
every other operation goes to moto when ``moto_url`` is given) and serves the session data
channels as the service does, with an SSM Agent behind each one that forwards to TCP ports on
this machine. Tests steer it through the returned ``SsmStandIn`` or through ``/_control/``.

Managed instances are registered by whoever simulates them::

    standin, server, base_url = await serve(moto_url=moto)      # base_url: the endpoint_url
    standin.register("i-0abc...", lambda remote_port: ("127.0.0.1", notebook_port))
    standin.set_online("i-0abc...", False)    # agent lost: StartSession -> TargetNotConnected
    standin.restart_agent("i-0abc...")        # every session of it drops abruptly
    standin.deregister("i-0abc...")           # instance stopped/terminated
    await shutdown(standin, server)

The resolver maps the remote port a session asks for (``portNumber``) to the address the agent
dials; raising ``LookupError`` means nothing listens there (ConnectToPortError for the client).

Modules: ``service`` (state and operations), ``api`` (JSON 1.1 endpoint), ``websocket``
(data channel endpoint, reading with ``spawner.ssm.wsreader``), ``agent`` (the agent role of
the channel), ``ports`` (smux and basic port sessions), ``documents``, ``registry``, ``sessions``,
``pagination``, ``faults``, ``control``, ``app``, and ``sigv4`` (the signature check of every
data-channel upgrade; ``serve(credentials=...)`` names the principals, ``require_signature=False``
accepts unsigned upgrades as well).
"""

from __future__ import annotations

from .agent import AgentSettings
from .app import make_app, serve, shutdown
from .faults import FaultRule
from .registry import DEFAULT_AGENT_VERSION, ManagedInstance, Resolver, fixed_resolver
from .service import SsmStandIn

__all__ = [
    "DEFAULT_AGENT_VERSION",
    "AgentSettings",
    "FaultRule",
    "ManagedInstance",
    "Resolver",
    "SsmStandIn",
    "fixed_resolver",
    "make_app",
    "serve",
    "shutdown",
]
