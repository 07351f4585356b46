"""The Session documents the stand-in can start, and how their parameters become properties.

A Session document declares parameters (each with a default and an allowed pattern) and the
``properties`` handed to SSM Agent, where ``{{ name }}`` is replaced by the parameter's value.
The agent sends those properties back to the client, unchanged, in its HandshakeRequest
(amazon-ssm-agent ``sessionplugin.go``: ``SessionTypeRequest{SessionType: PluginName,
Properties: config.Properties}``), and the port plugin reads ``portNumber`` and ``type`` from
them (``port.go``: ``PortParameters``).

``AWS-StartPortForwardingSession`` is AWS's own document; its content (parameters ``portNumber``,
default ``80``, and ``localPortNumber``, default ``0``; properties ``portNumber``,
``type: LocalPortForwarding``, ``localPortNumber``) is public and copied by many custom
documents. Shell documents are not served: the stand-in's agent forwards ports only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import AwsError

PORT_FORWARDING = "AWS-StartPortForwardingSession"
LOCAL_PORT_FORWARDING = "LocalPortForwarding"

_REMOTE_PORT = (
    r"^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
    r"|6553[0-5])$"
)
_LOCAL_PORT = (
    r"^([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
    r"|6553[0-5])$"
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


@dataclass(frozen=True)
class Parameter:
    """One declared document parameter."""

    default: str
    allowed_pattern: str


@dataclass(frozen=True)
class SessionDocument:
    """A Session document: its session type (the agent plugin), parameters and properties."""

    name: str
    session_type: str
    parameters: Mapping[str, Parameter]
    properties: Mapping[str, str] = field(default_factory=dict)

    def render(self, values: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
        """The properties for a StartSession ``Parameters`` map (name -> list of one value).

        Raises ``ValidationException`` for an undeclared parameter, a list that is not exactly
        one value, or a value outside the allowed pattern.
        """
        chosen = {name: spec.default for name, spec in self.parameters.items()}
        for name, given in (values or {}).items():
            spec = self.parameters.get(name)
            if spec is None:
                raise AwsError(
                    "ValidationException",
                    f"Parameter {name} is not declared by document {self.name}.",
                )
            if not isinstance(given, list | tuple) or len(given) != 1:
                raise AwsError(
                    "ValidationException",
                    f"Parameter {name} of document {self.name} takes exactly one value.",
                )
            value = str(given[0])
            if not re.fullmatch(spec.allowed_pattern, value):
                raise AwsError(
                    "ValidationException",
                    f"Parameter {name} value {value!r} does not match the allowed pattern "
                    f"{spec.allowed_pattern}.",
                )
            chosen[name] = value
        return {
            key: _PLACEHOLDER.sub(lambda m: chosen.get(m.group(1), ""), template)
            for key, template in self.properties.items()
        }


PORT_FORWARDING_DOCUMENT = SessionDocument(
    name=PORT_FORWARDING,
    session_type="Port",
    parameters={
        "portNumber": Parameter(default="80", allowed_pattern=_REMOTE_PORT),
        "localPortNumber": Parameter(default="0", allowed_pattern=_LOCAL_PORT),
    },
    properties={
        "portNumber": "{{ portNumber }}",
        "type": LOCAL_PORT_FORWARDING,
        "localPortNumber": "{{ localPortNumber }}",
    },
)

DOCUMENTS: dict[str, SessionDocument] = {PORT_FORWARDING: PORT_FORWARDING_DOCUMENT}


def find_document(name: str | None) -> SessionDocument:
    """The document StartSession names; ``InvalidDocument`` when the stand-in has none.

    Without a name AWS starts a shell (``SSM-SessionManagerRunShell``), which this stand-in
    does not offer, so that is ``InvalidDocument`` too, with a message that says why.
    """
    if not name:
        raise AwsError(
            "InvalidDocument",
            "The local SSM stand-in serves port forwarding only; name a document such as "
            f"{PORT_FORWARDING}.",
        )
    # A document may be named by ARN; the stand-in's documents are AWS-owned, named by name.
    short = name.rsplit("/", 1)[-1] if name.startswith("arn:") else name
    document = DOCUMENTS.get(short)
    if document is None:
        raise AwsError("InvalidDocument", f"Document with name {name} does not exist.")
    return document
