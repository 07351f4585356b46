"""The Session Manager ``ClientMessage``: binary codec and the JSON payloads carried in it.

Everything here follows the public Go sources, which are the only specification:
aws/session-manager-plugin ``src/message/clientmessage.go``, ``messageparser.go`` and
``handshakemessage.go``, and aws/amazon-ssm-agent ``agent/session/contracts``. JSON payloads are
produced byte for byte as Go's ``encoding/json`` marshals the corresponding structs (field order,
no spaces, HTML-safe escaping, ``null`` for nil slices), because the peers and the golden-byte
tests compare bytes, not meaning.

The functions are pure. `encode`/`decode` are the readable API; the channel's hot path uses the
underscored helpers, which skip building objects it does not need.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import uuid
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any

HEADER_LENGTH = 116  # value of the HeaderLength field: the offset of PayloadLength
MAX_PAYLOAD = 1024  # largest stream-data payload, both directions (StreamDataPayloadSize)
SCHEMA_VERSION = 1
PAYLOAD_OFFSET = HEADER_LENGTH + 4  # 120: where the payload starts when HeaderLength is 116
MESSAGE_TYPE_LENGTH = 32

SYN, FIN = 1, 2  # bits of the Flags field
ACK_FLAGS = SYN | FIN  # acks (and other control messages) carry Flags=3 in both Go peers


class MessageType(StrEnum):
    INPUT_STREAM_DATA = "input_stream_data"
    OUTPUT_STREAM_DATA = "output_stream_data"
    ACKNOWLEDGE = "acknowledge"
    CHANNEL_CLOSED = "channel_closed"
    START_PUBLICATION = "start_publication"
    PAUSE_PUBLICATION = "pause_publication"


class PayloadType(IntEnum):
    UNDEFINED = 0  # what acks carry: Go leaves the field at its zero value
    OUTPUT = 1
    ERROR = 2
    SIZE = 3
    PARAMETER = 4
    HANDSHAKE_REQUEST = 5
    HANDSHAKE_RESPONSE = 6
    HANDSHAKE_COMPLETE = 7
    ENC_CHALLENGE_REQUEST = 8
    ENC_CHALLENGE_RESPONSE = 9
    FLAG = 10
    STDERR = 11
    EXIT_CODE = 12


class Flag(IntEnum):
    DISCONNECT_TO_PORT = 1
    TERMINATE_SESSION = 2
    CONNECT_TO_PORT_ERROR = 3


class ActionStatus(IntEnum):
    SUCCESS = 1
    FAILED = 2
    UNSUPPORTED = 3


class ProtocolError(ValueError):
    """A message or payload the official peers would reject; the text names the field."""


@dataclass(frozen=True)
class ClientMessage:
    message_type: str
    sequence_number: int
    flags: int
    message_id: uuid.UUID
    payload_type: int
    payload: bytes
    created_date: int  # epoch milliseconds
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class Ack:
    message_type: str
    message_id: str
    sequence_number: int
    is_sequential: bool


@dataclass(frozen=True)
class HandshakeRequest:
    agent_version: str
    session_type: str | None  # from the SessionType action; None when the agent sent none
    properties: Any  # the document's properties, passed through (a dict for port sessions)
    # every requested action as (ActionType, ActionParameters): the client answers each one
    actions: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ProcessedAction:
    action_type: str
    action_status: int
    action_result: Any
    error: str


@dataclass(frozen=True)
class HandshakeResponse:
    client_version: str
    actions: tuple[ProcessedAction, ...]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class HandshakeCompletion:
    time_to_complete_ns: int
    customer_message: str


@dataclass(frozen=True)
class ChannelClosed:
    session_id: str
    output: str


# --- binary layout -------------------------------------------------------------------------
# HeaderLength u32 | MessageType 32 bytes | SchemaVersion u32 | CreatedDate u64 |
# SequenceNumber i64 | Flags u64 | MessageId 16 | PayloadDigest 32 | PayloadType u32 |
# PayloadLength u32 | Payload. All big-endian; no padding between fields.
_HEADER = struct.Struct(">I32sIQqQ16s32sII")
assert _HEADER.size == PAYLOAD_OFFSET

_PUBLICATION_TYPES = frozenset(
    {MessageType.START_PUBLICATION.value, MessageType.PAUSE_PUBLICATION.value}
)
_PADDED_TYPES: dict[str, bytes] = {
    t.value: t.value.encode().ljust(MESSAGE_TYPE_LENGTH, b" ") for t in MessageType
}
_TYPE_BY_FIELD: dict[bytes, str] = {v: k for k, v in _PADDED_TYPES.items()}
_sha256 = hashlib.sha256


def _text(value: str) -> str:
    """The plain string of a value that may be a `MessageType` (``str()`` of a str-Enum
    member is its qualified name before Python 3.12)."""
    return value.value if isinstance(value, Enum) else value


def padded_type(message_type: str) -> bytes:
    """The 32-byte MessageType field: Go's ``putString`` fills with spaces, then copies."""
    field = _PADDED_TYPES.get(message_type)
    if field is not None:
        return field
    raw = _text(message_type).encode()
    if len(raw) > MESSAGE_TYPE_LENGTH:
        raise ProtocolError(f"MessageType {message_type!r} is longer than 32 bytes")
    return raw.ljust(MESSAGE_TYPE_LENGTH, b" ")


# unicode.IsSpace: what Go's strings.TrimSpace removes (Python's str.strip removes more).
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _read_type(field: bytes) -> str:
    known = _TYPE_BY_FIELD.get(field)
    if known is not None:
        return known
    # Go's getString: bytes.Trim(NUL) first, then strings.TrimSpace.
    return field.strip(b"\x00").decode("utf-8", "replace").strip(_GO_SPACE)


def uuid_to_wire(message_id: uuid.UUID) -> bytes:
    """``putUuid`` writes the UUID's bytes 8..15 first, then bytes 0..7."""
    b = message_id.bytes
    return b[8:] + b[:8]


def uuid_from_wire(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=raw[8:16] + raw[0:8])


def wire_id_str(raw: bytes) -> str:
    """The canonical text of a wire-order MessageId, as Go's ``uuid.String()`` prints it."""
    h = (raw[8:16] + raw[0:8]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_raw(
    type_field: bytes,
    created_ms: int,
    seq: int,
    flags: int,
    wire_id: bytes,
    payload_type: int,
    payload: bytes,
) -> bytes:
    """Hot-path encoder; arguments are already in wire form (padded type, swapped id)."""
    return (
        _HEADER.pack(
            HEADER_LENGTH,
            type_field,
            SCHEMA_VERSION,
            created_ms,
            seq,
            flags,
            wire_id,
            _sha256(payload).digest(),
            payload_type,
            len(payload),
        )
        + payload
    )


def encode(msg: ClientMessage) -> bytes:
    """Serialize as ``SerializeClientMessage`` does: HeaderLength 116, digest of the payload."""
    payload = bytes(msg.payload)
    try:
        return (
            _HEADER.pack(
                HEADER_LENGTH,
                padded_type(msg.message_type),
                msg.schema_version,
                msg.created_date,
                msg.sequence_number,
                msg.flags,
                uuid_to_wire(msg.message_id),
                _sha256(payload).digest(),
                int(msg.payload_type),
                len(payload),
            )
            + payload
        )
    except struct.error as exc:
        raise ProtocolError(f"field out of range: {exc}") from exc


def decode_raw(data: bytes) -> tuple[str, int, int, int, int, bytes, int, bytes]:
    """Hot-path decoder: (type, schema, created, seq, flags, wire id, payload type, payload).

    Validates as ``DeserializeClientMessage`` + ``Validate`` do in the plugin, and is stricter
    where Go would read garbage or panic: the header must be complete, HeaderLength must not
    point inside the fixed fields, and PayloadLength must match the bytes that follow (Go takes
    "the rest of the buffer" and only uses PayloadLength to decide whether to check the digest).
    """
    n = len(data)
    if n < PAYLOAD_OFFSET:
        raise ProtocolError(f"truncated header: {n} bytes, a message needs at least 120")
    (hl, type_field, schema, created, seq, flags, wire_id, digest, ptype, plen) = (
        _HEADER.unpack_from(data)
    )
    mtype = _TYPE_BY_FIELD.get(type_field)
    if mtype is None:
        mtype = _read_type(type_field)
    validate = mtype not in _PUBLICATION_TYPES  # Validate() returns nil for these two
    if validate:
        if hl == 0:
            raise ProtocolError("HeaderLength cannot be zero")
        if not mtype:
            raise ProtocolError("MessageType is missing")
        if created == 0:
            raise ProtocolError("CreatedDate is missing")
    if hl == HEADER_LENGTH:
        payload = data[PAYLOAD_OFFSET:]
    else:
        if hl < HEADER_LENGTH and validate:
            raise ProtocolError(f"HeaderLength {hl} points inside the 116-byte header")
        start = hl + 4  # Go: Payload = input[HeaderLength+4:]
        if start > n:
            raise ProtocolError(f"truncated: HeaderLength {hl} but only {n} bytes in the message")
        payload = data[start:]
    if plen != len(payload):
        if plen > len(payload):
            raise ProtocolError(
                f"truncated payload: PayloadLength {plen}, only {len(payload)} bytes present"
            )
        raise ProtocolError(
            f"PayloadLength {plen} disagrees with the {len(payload)} bytes after the header"
        )
    if validate and plen != 0 and _sha256(payload).digest() != digest:
        raise ProtocolError("PayloadDigest does not match the SHA-256 of the payload")
    return mtype, schema, created, seq, flags, wire_id, ptype, payload


def decode(data: bytes) -> ClientMessage:
    """Parse and validate one binary websocket frame."""
    mtype, schema, created, seq, flags, wire_id, ptype, payload = decode_raw(bytes(data))
    return ClientMessage(
        message_type=mtype,
        sequence_number=seq,
        flags=flags,
        message_id=uuid_from_wire(wire_id),
        payload_type=ptype,
        payload=payload,
        created_date=created,
        schema_version=schema,
    )


# --- JSON as Go marshals it ----------------------------------------------------------------


def go_json(obj: Any, *, sort_keys: bool = False) -> bytes:
    """``json.Marshal`` output: compact, UTF-8 as is, ``<``, ``>``, ``&``, U+2028/9 escaped.

    ``sort_keys`` is for values that are Go maps (``interface{}`` decoded from JSON), which Go
    always marshals with sorted keys; struct fields keep declaration order (dict order here).
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    if any(c in text for c in "<>&\u2028\u2029"):
        text = (
            text.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return text.encode()


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} payload is not a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, default: Any = None) -> Any:
    """Go's ``json.Unmarshal`` matches keys exactly, else case-insensitively."""
    if name in obj:
        return obj[name]
    lname = name.lower()
    for key, value in obj.items():
        if key.lower() == lname:
            return value
    return default


def _str_field(obj: dict[str, Any], name: str, what: str) -> str:
    value = _field(obj, name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: {name} is not a string")
    return value


def _int_field(obj: dict[str, Any], name: str, what: str, default: int | None = None) -> int:
    value = _field(obj, name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what}: {name} is missing or not an integer")
    return value


# --- acknowledge ---------------------------------------------------------------------------

# AcknowledgeContent as json.Marshal writes it, for values that need no escaping.
ACK_TEMPLATE = (
    '{"AcknowledgedMessageType":"%s","AcknowledgedMessageId":"%s",'
    '"AcknowledgedMessageSequenceNumber":%d,"IsSequentialMessage":true}'
)
_ACK_SEQ = re.compile(rb'^\{"AcknowledgedMessageType":"[^"\\]*","AcknowledgedMessageId":"[^"\\]*",'
                      rb'"AcknowledgedMessageSequenceNumber":(-?\d+),')  # fmt: skip


def ack_payload(message_type: str, message_id: str, sequence_number: int) -> bytes:
    """AcknowledgeContent as marshalled by both peers (IsSequentialMessage is always true)."""
    if _is_plain(message_type) and _is_plain(message_id):
        return (ACK_TEMPLATE % (message_type, message_id, sequence_number)).encode()
    return go_json(
        {
            "AcknowledgedMessageType": message_type,
            "AcknowledgedMessageId": message_id,
            "AcknowledgedMessageSequenceNumber": sequence_number,
            "IsSequentialMessage": True,
        }
    )


_PLAIN = re.compile(r"[A-Za-z0-9_\-]*")


def _is_plain(s: str) -> bool:
    return _PLAIN.fullmatch(s) is not None


def ack_for(msg: ClientMessage, *, message_id: uuid.UUID, now_ms: int) -> ClientMessage:
    """The ``acknowledge`` message for ``msg``: sequence 0, Flags 3, PayloadType 0.

    Plugin: ``SerializeClientMessageWithAcknowledgeContent``; agent: ``sendAgentMessage``.
    """
    return ClientMessage(
        message_type=MessageType.ACKNOWLEDGE.value,
        sequence_number=0,
        flags=ACK_FLAGS,
        message_id=message_id,
        payload_type=PayloadType.UNDEFINED,
        payload=ack_payload(_text(msg.message_type), str(msg.message_id), msg.sequence_number),
        created_date=now_ms,
    )


def ack_sequence_number(payload: bytes) -> int:
    """Only the sequence number of an ack, which is all a sender uses (fast path)."""
    m = _ACK_SEQ.match(payload)
    if m is not None:
        return int(m.group(1))
    return parse_ack_payload(payload).sequence_number


def parse_ack_payload(payload: bytes) -> Ack:
    obj = _json_object(payload, "acknowledge")
    what = "acknowledge"
    is_seq = _field(obj, "IsSequentialMessage", False)
    return Ack(
        message_type=_str_field(obj, "AcknowledgedMessageType", what),
        message_id=_str_field(obj, "AcknowledgedMessageId", what),
        sequence_number=_int_field(obj, "AcknowledgedMessageSequenceNumber", what),
        is_sequential=bool(is_seq),
    )


def parse_ack(msg: ClientMessage) -> Ack:
    if msg.message_type != MessageType.ACKNOWLEDGE.value:
        raise ProtocolError(f"not an acknowledge message: {msg.message_type!r}")
    return parse_ack_payload(msg.payload)


# --- flags, token, channel_closed ----------------------------------------------------------

_U32 = struct.Struct(">I")


def flag_payload(flag: Flag) -> bytes:
    """``binary.Write(buf, BigEndian, PayloadTypeFlag)``: a 4-byte big-endian integer."""
    return _U32.pack(int(flag))


def parse_flag(payload: bytes) -> Flag:
    if len(payload) != 4:
        raise ProtocolError(f"Flag payload must be 4 bytes, got {len(payload)}")
    value = _U32.unpack(payload)[0]
    try:
        return Flag(value)
    except ValueError:
        raise ProtocolError(f"unknown Flag value {value}") from None


def token_frame(token: str, *, request_id: str, client_id: str, client_version: str) -> str:
    """The first (text) websocket frame: ``OpenDataChannelInput`` in struct field order."""
    return go_json(
        {
            "MessageSchemaVersion": "1.0",
            "RequestId": request_id,
            "TokenValue": token,
            "ClientId": client_id,
            "ClientVersion": client_version,
        }
    ).decode()


def channel_closed_payload(
    session_id: str,
    output: str = "",
    *,
    message_id: str = "",
    created_date: str = "",
    destination_id: str = "",
    schema_version: int = 1,
) -> bytes:
    """A ``channel_closed`` payload as the plugin's ``ChannelClosed`` struct would marshal it.

    The service builds these; this exists for the local stand-in and tests.
    """
    return go_json(
        {
            "MessageId": message_id,
            "CreatedDate": created_date,
            "DestinationId": destination_id,
            "SessionId": session_id,
            "MessageType": MessageType.CHANNEL_CLOSED.value,
            "SchemaVersion": schema_version,
            "Output": output,
        }
    )


def parse_channel_closed(payload: bytes) -> ChannelClosed:
    obj = _json_object(payload, "channel_closed")
    return ChannelClosed(
        session_id=_str_field(obj, "SessionId", "channel_closed"),
        output=_str_field(obj, "Output", "channel_closed"),
    )


# --- handshake -----------------------------------------------------------------------------

SESSION_TYPE_ACTION = "SessionType"
KMS_ENCRYPTION_ACTION = "KMSEncryption"


def _go_map_order(value: Any) -> Any:
    """Sort every object's keys, as Go marshals a ``map[string]interface{}``."""
    if isinstance(value, dict):
        return {k: _go_map_order(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_go_map_order(v) for v in value]
    return value


def handshake_request(agent_version: str, session_type: str, properties: Any) -> bytes:
    """HandshakeRequestPayload with one SessionType action, as the agent marshals it.

    ``Properties`` is an ``interface{}`` decoded from the session document, i.e. a Go map:
    Go writes its keys sorted, whatever order the document had.
    """
    return go_json(
        {
            "AgentVersion": agent_version,
            "RequestedClientActions": [
                {
                    "ActionType": SESSION_TYPE_ACTION,
                    "ActionParameters": {
                        "SessionType": session_type,
                        "Properties": _go_map_order(properties),
                    },
                }
            ],
        }
    )


def parse_handshake_request(payload: bytes) -> HandshakeRequest:
    what = "HandshakeRequest"
    obj = _json_object(payload, what)
    actions_raw = _field(obj, "RequestedClientActions") or []
    if not isinstance(actions_raw, list):
        raise ProtocolError(f"{what}: RequestedClientActions is not a list")
    actions: list[tuple[str, Any]] = []
    session_type: str | None = None
    properties: Any = None
    for action in actions_raw:
        if not isinstance(action, dict):
            raise ProtocolError(f"{what}: an action is not a JSON object")
        action_type = _str_field(action, "ActionType", what)
        params = _field(action, "ActionParameters")
        actions.append((action_type, params))
        if action_type == SESSION_TYPE_ACTION and session_type is None:
            if isinstance(params, dict):
                session_type = _str_field(params, "SessionType", what)
                properties = _field(params, "Properties")
            else:
                session_type = ""
    return HandshakeRequest(
        agent_version=_str_field(obj, "AgentVersion", what),
        session_type=session_type,
        properties=properties,
        actions=tuple(actions),
    )


def processed_action(
    action_type: str, action_status: int, action_result: Any = None, error: str = ""
) -> dict[str, Any]:
    """One ``ProcessedClientAction`` in struct field order."""
    return {
        "ActionType": action_type,
        "ActionStatus": int(action_status),
        "ActionResult": action_result,
        "Error": error,
    }


def handshake_response_payload(
    client_version: str, actions: list[dict[str, Any]], errors: list[str] | None
) -> bytes:
    """HandshakeResponsePayload; no errors marshal as ``null``, as Go's nil slice does."""
    return go_json(
        {
            "ClientVersion": client_version,
            "ProcessedClientActions": actions,
            "Errors": errors or None,
        }
    )


def handshake_response(client_version: str, session_type: str) -> bytes:
    """The plugin's answer to a request with one SessionType action it accepts."""
    del session_type  # the response names the action, not the session type
    return handshake_response_payload(
        client_version, [processed_action(SESSION_TYPE_ACTION, ActionStatus.SUCCESS)], None
    )


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    what = "HandshakeResponse"
    obj = _json_object(payload, what)
    actions_raw = _field(obj, "ProcessedClientActions") or []
    errors_raw = _field(obj, "Errors") or []
    if not isinstance(actions_raw, list) or not isinstance(errors_raw, list):
        raise ProtocolError(f"{what}: ProcessedClientActions/Errors must be lists")
    actions = []
    for action in actions_raw:
        if not isinstance(action, dict):
            raise ProtocolError(f"{what}: an action is not a JSON object")
        actions.append(
            ProcessedAction(
                action_type=_str_field(action, "ActionType", what),
                action_status=_int_field(action, "ActionStatus", what, 0),
                action_result=_field(action, "ActionResult"),
                error=_str_field(action, "Error", what),
            )
        )
    return HandshakeResponse(
        client_version=_str_field(obj, "ClientVersion", what),
        actions=tuple(actions),
        errors=tuple(str(e) for e in errors_raw),
    )


def handshake_complete(time_to_complete_ns: int, customer_message: str = "") -> bytes:
    """HandshakeCompletePayload: ``time.Duration`` marshals as integer nanoseconds."""
    return go_json(
        {"HandshakeTimeToComplete": int(time_to_complete_ns), "CustomerMessage": customer_message}
    )


def parse_handshake_complete(payload: bytes) -> HandshakeCompletion:
    what = "HandshakeComplete"
    obj = _json_object(payload, what)
    return HandshakeCompletion(
        time_to_complete_ns=_int_field(obj, "HandshakeTimeToComplete", what, 0),
        customer_message=_str_field(obj, "CustomerMessage", what),
    )
