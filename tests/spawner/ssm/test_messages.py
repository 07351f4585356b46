"""Golden-byte tests of `spawner.ssm.messages`, written from the Go sources, not round trips.

Expected bytes are spelled out by hand (hex literals and explicit arithmetic) from
aws/session-manager-plugin ``src/message/clientmessage.go`` (layout and offsets),
``messageparser.go`` (putString, putUuid, SerializeClientMessage, Validate,
SerializeClientMessageWithAcknowledgeContent), ``handshakemessage.go`` (JSON structs),
``src/datachannel/streaming.go`` (ack content, SendFlag, FinalizeDataChannelHandshake) and the
agent's ``agent/session/contracts`` / ``agent/session/datachannel``.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from spawner.ssm import messages as m
from spawner.ssm.messages import ClientMessage, Flag, MessageType, PayloadType, ProtocolError

# A UUID whose two halves differ, to show the byte swap of putUuid.
MSG_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
MSG_ID_WIRE = bytes.fromhex("8899aabbccddeeff0011223344556677")  # bytes 8..15, then 0..7
CREATED_MS = 1_700_000_000_123
HELLO_SHA256 = bytes.fromhex("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")


def golden_hello() -> bytes:
    """input_stream_data, seq 7, flags 0, Output payload b"hello", field by field."""
    return (
        bytes.fromhex("00000074")  # HeaderLength 116
        + b"input_stream_data" + b" " * (32 - len("input_stream_data"))  # space padded
        + bytes.fromhex("00000001")  # SchemaVersion 1
        + bytes.fromhex("0000018bcfe5687b")  # CreatedDate 1700000000123 ms
        + bytes.fromhex("0000000000000007")  # SequenceNumber 7
        + bytes.fromhex("0000000000000000")  # Flags
        + MSG_ID_WIRE
        + HELLO_SHA256  # SHA-256 of the payload
        + bytes.fromhex("00000001")  # PayloadType Output
        + bytes.fromhex("00000005")  # PayloadLength
        + b"hello"
    )  # fmt: skip


HELLO = ClientMessage(
    message_type="input_stream_data",
    sequence_number=7,
    flags=0,
    message_id=MSG_ID,
    payload_type=PayloadType.OUTPUT,
    payload=b"hello",
    created_date=CREATED_MS,
)


def test_golden_constants_are_what_they_claim() -> None:
    """The hand-written hex above encodes 1700000000123 and 116; the digest is of b"hello"."""
    assert int.from_bytes(bytes.fromhex("0000018bcfe5687b"), "big") == CREATED_MS
    assert 0x74 == 116 == 4 + 32 + 4 + 8 + 8 + 8 + 16 + 32 + 4
    assert len(golden_hello()) == 120 + 5


def test_encode_produces_the_golden_bytes() -> None:
    """SerializeClientMessage: HL=116, space-padded type, swapped UUID, SHA-256, lengths."""
    assert m.encode(HELLO) == golden_hello()


def test_decode_reads_the_golden_bytes() -> None:
    """DeserializeClientMessage reads every field back from the fixed offsets."""
    msg = m.decode(golden_hello())
    assert msg == HELLO
    assert msg.message_id == MSG_ID  # getUuid undoes the swap


def test_offsets_match_clientmessage_go() -> None:
    """The ClientMessage_*Offset constants: 0, 4, 36, 40, 48, 56, 64, 80, 112, 116, 120."""
    raw = golden_hello()
    assert raw[0:4] == (116).to_bytes(4, "big")
    assert raw[4:36].rstrip(b" ") == b"input_stream_data"
    assert raw[36:40] == (1).to_bytes(4, "big")
    assert raw[40:48] == CREATED_MS.to_bytes(8, "big")
    assert raw[48:56] == (7).to_bytes(8, "big")
    assert raw[64:80] == MSG_ID.bytes[8:] + MSG_ID.bytes[:8]
    assert raw[80:112] == HELLO_SHA256
    assert raw[112:116] == (1).to_bytes(4, "big")
    assert raw[116:120] == (5).to_bytes(4, "big")
    assert raw[120:] == b"hello"


def test_sequence_number_is_signed_and_flags_unsigned() -> None:
    """SequenceNumber is an int64 (putLong/getLong); Flags a uint64 (putULong)."""
    msg = ClientMessage("output_stream_data", -2, 2**64 - 1, MSG_ID, 1, b"", CREATED_MS)
    raw = m.encode(msg)
    assert raw[48:56] == bytes.fromhex("fffffffffffffffe")
    assert raw[56:64] == bytes.fromhex("ffffffffffffffff")
    back = m.decode(raw)
    assert back.sequence_number == -2
    assert back.flags == 2**64 - 1


def test_empty_payload_still_carries_the_digest_of_nothing() -> None:
    """The writer always hashes the payload, even an empty one."""
    raw = m.encode(ClientMessage("acknowledge", 0, 3, MSG_ID, 0, b"", CREATED_MS))
    assert raw[80:112] == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert len(raw) == 120


def test_message_type_reader_strips_spaces_and_nuls() -> None:
    """getString: bytes.Trim(NUL) at both ends first, then strings.TrimSpace."""
    raw = bytearray(golden_hello())
    raw[4:36] = b"acknowledge".ljust(32, b"\x00")
    assert m.decode(bytes(raw)).message_type == "acknowledge"
    raw[4:36] = b"\x00\x00 channel_closed".ljust(32, b" ")
    assert m.decode(bytes(raw)).message_type == "channel_closed"
    # NULs between spaces survive: Go trims NULs before spaces, and TrimSpace keeps NUL.
    raw[4:36] = b"channel_closed\x00".ljust(32, b" ")
    assert m.decode(bytes(raw)).message_type == "channel_closed\x00"


def test_message_type_longer_than_32_bytes_cannot_be_encoded() -> None:
    """putString fails when the string does not fit its 32 bytes."""
    with pytest.raises(ProtocolError, match="longer than 32"):
        m.encode(ClientMessage("x" * 33, 0, 0, MSG_ID, 1, b"", CREATED_MS))


def test_message_type_enum_members_encode_as_their_value() -> None:
    msg = ClientMessage(MessageType.INPUT_STREAM_DATA, 7, 0, MSG_ID, 1, b"hello", CREATED_MS)
    assert m.encode(msg) == golden_hello()


# --- what the reader rejects (Validate, plus framing the Go reader does not survive) -------


def _with(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(golden_hello(), 0, bytes(4)), "HeaderLength cannot be zero"),
        (_with(golden_hello(), 4, b" " * 32), "MessageType is missing"),
        (_with(golden_hello(), 4, b"\x00" * 32), "MessageType is missing"),
        (_with(golden_hello(), 40, bytes(8)), "CreatedDate is missing"),
        (_with(golden_hello(), 80, bytes(32)), "PayloadDigest does not match"),
        (golden_hello()[:119], "truncated header: 119 bytes"),
        (golden_hello()[:60], "truncated header"),
        (golden_hello()[:122], "truncated payload: PayloadLength 5, only 2 bytes"),
        (golden_hello() + b"!", "PayloadLength 5 disagrees with the 6 bytes"),
        (_with(golden_hello(), 0, (100).to_bytes(4, "big")), "points inside the 116-byte header"),
        (_with(golden_hello(), 0, (400).to_bytes(4, "big")), "truncated: HeaderLength 400"),
    ],
    ids=[
        "zero-header-length",
        "empty-type-spaces",
        "empty-type-nuls",
        "zero-date",
        "bad-digest",
        "truncated-header",
        "very-truncated-header",
        "truncated-payload",
        "trailing-bytes",
        "header-length-inside-header",
        "header-length-past-end",
    ],
)
def test_decoder_rejects(raw: bytes, message: str) -> None:
    """Validate() in messageparser.go, and a clear error where Go would misread or panic."""
    with pytest.raises(ProtocolError, match=message):
        m.decode(raw)


def test_digest_is_not_checked_when_payload_length_is_zero() -> None:
    """Validate only hashes when PayloadLength != 0."""
    raw = m.encode(ClientMessage("acknowledge", 0, 3, MSG_ID, 0, b"", CREATED_MS))
    assert m.decode(_with(raw, 80, b"\x01" * 32)).payload == b""


@pytest.mark.parametrize("mtype", ["start_publication", "pause_publication"])
def test_publication_messages_are_exempt_from_validation(mtype: str) -> None:
    """Validate returns nil for start/pause_publication before any check."""
    raw = m.encode(ClientMessage(mtype, 0, 0, MSG_ID, 0, b"x", CREATED_MS))
    raw = _with(raw, 40, bytes(8))  # zero CreatedDate
    raw = _with(raw, 80, bytes(32))  # wrong digest
    msg = m.decode(raw)
    assert msg.message_type == mtype
    assert msg.created_date == 0


def test_larger_header_length_moves_the_payload() -> None:
    """Go reads the payload from HeaderLength+4, so a longer header is skipped over."""
    base = golden_hello()
    raw = (120).to_bytes(4, "big") + base[4:120] + b"XXXX" + b"hello"
    assert m.decode(raw).payload == b"hello"


# --- acknowledge -------------------------------------------------------------------------

ACK_JSON = (
    b'{"AcknowledgedMessageType":"input_stream_data",'
    b'"AcknowledgedMessageId":"00112233-4455-6677-8899-aabbccddeeff",'
    b'"AcknowledgedMessageSequenceNumber":7,'
    b'"IsSequentialMessage":true}'
)


def test_ack_json_is_byte_for_byte_go_json_marshal() -> None:
    """AcknowledgeContent: field order of the struct tags, no spaces, IsSequentialMessage true."""
    ack_id = uuid.UUID("ffeeddcc-bbaa-9988-7766-554433221100")
    ack = m.ack_for(HELLO, message_id=ack_id, now_ms=CREATED_MS + 1)
    assert ack.payload == ACK_JSON
    assert ack.message_type == "acknowledge"
    assert ack.sequence_number == 0
    assert ack.flags == 3
    assert ack.payload_type == 0
    expected = (
        bytes.fromhex("00000074")
        + b"acknowledge" + b" " * 21
        + bytes.fromhex("00000001")
        + (CREATED_MS + 1).to_bytes(8, "big")
        + bytes(8)  # seq 0
        + bytes.fromhex("0000000000000003")  # Flags 3
        + bytes.fromhex("7766554433221100" "ffeeddccbbaa9988")
        + hashlib.sha256(ACK_JSON).digest()
        + bytes(4)  # PayloadType 0: Go leaves it unset
        + len(ACK_JSON).to_bytes(4, "big")
        + ACK_JSON
    )  # fmt: skip
    assert m.encode(ack) == expected


def test_parse_ack_reads_the_fields() -> None:
    msg = m.decode(m.encode(ClientMessage("acknowledge", 0, 3, MSG_ID, 0, ACK_JSON, CREATED_MS)))
    assert m.parse_ack(msg) == m.Ack("input_stream_data", str(MSG_ID), 7, True)
    assert m.ack_sequence_number(ACK_JSON) == 7


def test_parse_ack_matches_keys_case_insensitively_like_go() -> None:
    """encoding/json's Unmarshal falls back to a case-insensitive key match."""
    payload = b'{ "acknowledgedmessagesequencenumber" : 12 }'
    assert m.ack_sequence_number(payload) == 12
    assert m.parse_ack_payload(payload).message_type == ""


def test_parse_ack_rejects_garbage() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        m.ack_sequence_number(b"{nope")
    with pytest.raises(ProtocolError, match="AcknowledgedMessageSequenceNumber"):
        m.ack_sequence_number(b'{"AcknowledgedMessageSequenceNumber":"7"}')


# --- handshake -----------------------------------------------------------------------------


def test_handshake_response_bytes() -> None:
    """HandshakeResponsePayload for one successful SessionType action; nil Errors is null."""
    assert m.handshake_response("1.2.0.0", "Port") == (
        b'{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType",'
        b'"ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}'
    )


def test_handshake_request_bytes_sort_the_properties_map() -> None:
    """HandshakeRequestPayload; Properties is a Go map, so json.Marshal sorts its keys."""
    payload = m.handshake_request(
        "3.3.40.0",
        "Port",
        {"portNumber": "8888", "type": "LocalPortForwarding", "localPortNumber": "0"},
    )
    assert payload == (
        b'{"AgentVersion":"3.3.40.0","RequestedClientActions":[{"ActionType":"SessionType",'
        b'"ActionParameters":{"SessionType":"Port","Properties":{"localPortNumber":"0",'
        b'"portNumber":"8888","type":"LocalPortForwarding"}}}]}'
    )


def test_parse_handshake_request_accepts_any_property_order() -> None:
    payload = (
        b'{"AgentVersion":"3.3.0.0","RequestedClientActions":[{"ActionType":"SessionType",'
        b'"ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"8888",'
        b'"type":"LocalPortForwarding","localPortNumber":"0"}}}]}'
    )
    req = m.parse_handshake_request(payload)
    assert req.agent_version == "3.3.0.0"
    assert req.session_type == "Port"
    assert req.properties == {
        "portNumber": "8888",
        "type": "LocalPortForwarding",
        "localPortNumber": "0",
    }
    assert [a for a, _ in req.actions] == ["SessionType"]


def test_handshake_complete_bytes() -> None:
    """HandshakeCompletePayload: time.Duration marshals as integer nanoseconds."""
    assert m.handshake_complete(1_500_000_000) == (
        b'{"HandshakeTimeToComplete":1500000000,"CustomerMessage":""}'
    )
    done = m.parse_handshake_complete(m.handshake_complete(42, "hi"))
    assert (done.time_to_complete_ns, done.customer_message) == (42, "hi")


def test_handshake_response_round_trip_with_failures() -> None:
    payload = m.handshake_response_payload(
        "1.2.0.0",
        [m.processed_action("KMSEncryption", m.ActionStatus.FAILED, None, "no")],
        ["no"],
    )
    assert payload.endswith(b'"Error":"no"}],"Errors":["no"]}')
    resp = m.parse_handshake_response(payload)
    assert resp.client_version == "1.2.0.0"
    assert resp.actions[0].action_status == 2
    assert resp.errors == ("no",)


# --- flags, token frame, channel_closed ----------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "raw"),
    [
        (Flag.DISCONNECT_TO_PORT, b"\x00\x00\x00\x01"),
        (Flag.TERMINATE_SESSION, b"\x00\x00\x00\x02"),
        (Flag.CONNECT_TO_PORT_ERROR, b"\x00\x00\x00\x03"),
    ],
)
def test_flag_payload_is_four_bytes_big_endian(flag: Flag, raw: bytes) -> None:
    """SendFlag: binary.Write(BigEndian, PayloadTypeFlag uint32)."""
    assert m.flag_payload(flag) == raw
    assert m.parse_flag(raw) is flag


def test_parse_flag_rejects_bad_payloads() -> None:
    with pytest.raises(ProtocolError, match="4 bytes"):
        m.parse_flag(b"\x00\x02")
    with pytest.raises(ProtocolError, match="unknown Flag value 9"):
        m.parse_flag(b"\x00\x00\x00\x09")


def test_token_frame_is_open_data_channel_input() -> None:
    """OpenDataChannelInput in struct order; MessageSchemaVersion is config's "1.0"."""
    frame = m.token_frame("TOKEN", request_id="rid", client_id="cid", client_version="1.2.0.0")
    assert frame == (
        '{"MessageSchemaVersion":"1.0","RequestId":"rid","TokenValue":"TOKEN",'
        '"ClientId":"cid","ClientVersion":"1.2.0.0"}'
    )


def test_go_json_escapes_html_characters() -> None:
    """json.Marshal escapes <, > and & (HTMLEscape) and keeps other UTF-8 as is."""
    frame = m.token_frame("a<b>&c+/=é", request_id="r", client_id="c", client_version="v")
    assert '"TokenValue":"a\\u003cb\\u003e\\u0026c+/=é"' in frame
    assert json.loads(frame)["TokenValue"] == "a<b>&c+/=é"


def test_channel_closed_payload_and_parse() -> None:
    """The plugin's ChannelClosed struct; the client reads SessionId and Output."""
    payload = m.channel_closed_payload("sess-1", "bye", message_id="mid")
    assert payload == (
        b'{"MessageId":"mid","CreatedDate":"","DestinationId":"","SessionId":"sess-1",'
        b'"MessageType":"channel_closed","SchemaVersion":1,"Output":"bye"}'
    )
    assert m.parse_channel_closed(payload) == m.ChannelClosed("sess-1", "bye")
    assert m.parse_channel_closed(b'{"SessionId":"x"}') == m.ChannelClosed("x", "")
