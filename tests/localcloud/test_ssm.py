"""The SSM stand-in (localcloud.ssm) against Session Manager's documented behaviour.

The API is driven with real boto3 (in a thread, as the hub does); the data channel with a
minimal websocket client written here from the wire facts (tornado's websocket client and the
``spawner.ssm.messages`` codec, which golden-byte tests pin to the specification), so the
stand-in is checked against the documented behaviour rather than against the project's own
client. Each docstring names the rule and where it comes from: botocore's SSM service model
(``botocore/data/ssm/2014-11-06/service-2.json``), the AWS docs, aws/amazon-ssm-agent
(``agent/session/...``) or aws/session-manager-plugin (``src/...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from localcloud.ssm import SsmStandIn, fixed_resolver, serve, shutdown
from localcloud.ssm.agent import IDLE_TIMEOUT_MESSAGE
from localcloud.ssm.sigv4 import StaticCredentials
from spawner.ssm import messages as m
from tests.polling import until

INSTANCE = "i-0123456789abcdef0"
KEYS = {"testing": "testing"}  # the principal the tests sign with
OTHER_INSTANCE = "i-0fedcba9876543210"
PORT_DOC = "AWS-StartPortForwardingSession"
SYN, FIN, PSH = 0, 1, 2  # smux v1 commands


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class Aws:
    standin: SsmStandIn
    url: str
    ssm: Any

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(getattr(self.ssm, operation), **kwargs)

    async def error(self, operation: str, **kwargs: Any) -> dict[str, str]:
        with pytest.raises(ClientError) as info:
            await self.call(operation, **kwargs)
        return info.value.response["Error"]

    async def start(self, instance: str = INSTANCE, port: int = 8888) -> dict[str, Any]:
        return await self.call(
            "start_session",
            Target=instance,
            DocumentName=PORT_DOC,
            Parameters={"portNumber": [str(port)], "localPortNumber": ["0"]},
        )


def signed(
    url: str, key: str = "testing", secret: str = "testing", region: str = "us-east-1"
) -> HTTPRequest:
    """The upgrade request as the plugin sends it: SigV4 for ``ssmmessages`` (botocore's
    signer, websocketchannel.go getV4SignatureHeader)."""
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(ReadOnlyCredentials(key, secret, None), "ssmmessages", region).add_auth(request)
    return HTTPRequest(url, headers=dict(request.headers.items()))


def ssm_client(url: str) -> Any:
    return boto3.client(
        "ssm",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.start()
    yield server
    server.close()


@pytest.fixture
async def aws(echo: Echo) -> AsyncIterator[Aws]:
    standin, server, url = await serve(credentials=StaticCredentials(KEYS))
    standin.register(INSTANCE, fixed_resolver("127.0.0.1", echo.port))
    yield Aws(standin, url, ssm_client(url))
    await shutdown(standin, server)


class Echo:
    """A TCP echo server that counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def stop_listening(self) -> None:
        assert self.server is not None
        self.server.close()  # existing connections stay open

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()


# --- a minimal client of the data channel, from the wire facts -----------------------------------


def smux_frame(cmd: int, sid: int, data: bytes = b"") -> bytes:
    """smux v1: version 1, cmd, length (LE u16), stream id (LE u32), then the data."""
    return struct.pack("<BBHI", 1, cmd, len(data), sid) + data


def parse_smux(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Take every complete frame off the front of ``buffer``."""
    frames = []
    while len(buffer) >= 8:
        version, cmd, length, sid = struct.unpack_from("<BBHI", buffer)
        assert version == 1
        if len(buffer) < 8 + length:
            break
        frames.append((cmd, sid, bytes(buffer[8 : 8 + length])))
        del buffer[: 8 + length]
    return frames


@dataclass
class Wire:
    """The client end of one websocket, speaking the protocol by hand.

    Like the official client it acknowledges every stream-data message it receives except
    duplicates, and hands them on in sequence order (``streaming.go`` HandleOutputMessage).
    """

    ws: WebSocketClientConnection
    next_seq: int = 0  # our next outgoing sequence number
    expected: int = 0  # the agent's next sequence number we wait for
    acks: list[int] = field(default_factory=list)  # sequence numbers the agent acknowledged
    arrivals: list[m.ClientMessage] = field(default_factory=list)  # stream data, as it came
    inbox: list[m.ClientMessage] = field(default_factory=list)  # stream data, in order, once
    closed: list[m.ClientMessage] = field(default_factory=list)  # channel_closed messages
    ended: bool = False
    smux_buffer: bytearray = field(default_factory=bytearray)
    _ahead: dict[int, m.ClientMessage] = field(default_factory=dict)

    @classmethod
    async def open(
        cls, stream_url: str, token: str | None, *, first: Any = None, after: Wire | None = None
    ) -> Wire:
        """Dial and send the token frame (or ``first`` instead); ``after``: carry on the
        sequence state of an earlier websocket of the same session."""
        ws = await websocket_connect(signed(stream_url))
        if first is not None:
            await ws.write_message(first, binary=isinstance(first, bytes))
        elif token is not None:
            await ws.write_message(
                m.token_frame(
                    token,
                    request_id=str(uuid.uuid4()),
                    client_id=str(uuid.uuid4()),
                    client_version="1.2.0.0",
                )
            )
        wire = cls(ws)
        if after is not None:
            wire.next_seq, wire.expected = after.next_seq, after.expected
            wire.smux_buffer = after.smux_buffer
        return wire

    def send(self, payload_type: int, payload: bytes, *, seq: int | None = None) -> int:
        if seq is None:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        frame = m.encode(
            m.ClientMessage(
                message_type="input_stream_data",
                sequence_number=seq,
                flags=1 if seq == 0 else 0,
                message_id=uuid.uuid4(),
                payload_type=payload_type,
                payload=payload,
                created_date=int(time.time() * 1000),
            )
        )
        self.ws.write_message(frame, binary=True)
        return seq

    def ack(self, msg: m.ClientMessage) -> None:
        ack = m.ack_for(msg, message_id=uuid.uuid4(), now_ms=int(time.time() * 1000))
        with contextlib.suppress(WebSocketClosedError):
            self.ws.write_message(m.encode(ack), binary=True)

    async def pump(self, timeout: float = 2.0) -> bool:
        """Read one websocket message; False once the socket has closed."""
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            self.ended = True
            return False
        assert isinstance(raw, bytes), raw
        msg = m.decode(raw)
        if msg.message_type == "acknowledge":
            self.acks.append(m.parse_ack(msg).sequence_number)
        elif msg.message_type == "channel_closed":
            self.closed.append(msg)
        elif msg.message_type == "output_stream_data":
            self.arrivals.append(msg)
            if msg.sequence_number < self.expected or msg.sequence_number in self._ahead:
                return True  # a duplicate: dropped without an ack, as the plugin does
            self.ack(msg)
            self._ahead[msg.sequence_number] = msg
            while self.expected in self._ahead:
                self.inbox.append(self._ahead.pop(self.expected))
                self.expected += 1
        return True

    async def until(self, done: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await self.pump(left):
                break
        assert done(), "condition not reached"

    async def next_data(self, timeout: float = 3.0) -> m.ClientMessage:
        """The next stream-data message in sequence order."""
        await self.until(lambda: bool(self.inbox), timeout)
        return self.inbox.pop(0)

    async def handshake(self) -> m.HandshakeRequest:
        """Answer the agent's HandshakeRequest and wait for HandshakeComplete."""
        request_msg = await self.next_data()
        assert request_msg.payload_type == m.PayloadType.HANDSHAKE_REQUEST
        request = m.parse_handshake_request(request_msg.payload)
        self.send(m.PayloadType.HANDSHAKE_RESPONSE, m.handshake_response("1.2.0.0", "Port"))
        complete = await self.next_data()
        assert complete.payload_type == m.PayloadType.HANDSHAKE_COMPLETE
        return request

    async def smux_frames(self, count: int, timeout: float = 3.0) -> list[tuple[int, int, bytes]]:
        """The next ``count`` smux frames the agent sends (acking every message)."""
        frames: list[tuple[int, int, bytes]] = []
        while len(frames) < count:
            msg = await self.next_data(timeout)
            if msg.payload_type == m.PayloadType.OUTPUT:
                self.smux_buffer += msg.payload
                frames.extend(parse_smux(self.smux_buffer))
            else:
                frames.append((-1, -1, msg.payload))  # a Flag, in stream order
        return frames

    async def wait_closed(self, timeout: float = 3.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.ended:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, "websocket still open"
            await self.pump(left)


async def connect(aws: Aws, **start: Any) -> tuple[dict[str, Any], Wire]:
    session = await aws.start(**start)
    wire = await Wire.open(session["StreamUrl"], session["TokenValue"])
    return session, wire


async def http(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = HTTPRequest(
        url,
        method=method,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/x-amz-json-1.1", **(headers or {})},
        allow_nonstandard_methods=True,
    )
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    return response.code, json.loads(response.body) if response.body else None


# --- the API -----------------------------------------------------------------------------------


async def test_start_session_shape_and_describe_sessions(aws: Aws) -> None:
    """StartSession returns SessionId, TokenValue and StreamUrl
    (``wss://ssmmessages.<region>.amazonaws.com/v1/data-channel/<id>?role=publish_subscribe``,
    here ws:// on the stand-in's port); ids look like ``<caller>-<17 hex>`` (AWS CLI examples).
    DescribeSessions (service-2.json: ``State`` Active|History, ``Filters``, Session fields)
    lists it as active until TerminateSession, then in History as ``Terminated`` with EndDate.
    """
    session = await aws.start()
    sid = session["SessionId"]
    assert re.fullmatch(r"localcloud-[0-9a-f]{17}", sid)
    assert session["TokenValue"]
    assert session["StreamUrl"] == (
        f"ws://{aws.url.split('://', 1)[1]}/v1/data-channel/{sid}?role=publish_subscribe"
    )
    active = await aws.call(
        "describe_sessions", State="Active", Filters=[{"key": "Target", "value": INSTANCE}]
    )
    [item] = active["Sessions"]
    assert item["SessionId"] == sid and item["Target"] == INSTANCE
    assert item["DocumentName"] == PORT_DOC
    assert item["Owner"] == "arn:aws:iam::123456789012:user/localcloud"
    assert "EndDate" not in item

    assert (await aws.call("terminate_session", SessionId=sid))["SessionId"] == sid
    assert (await aws.call("describe_sessions", State="Active"))["Sessions"] == []
    [ended] = (await aws.call("describe_sessions", State="History"))["Sessions"]
    assert ended["Status"] == "Terminated" and ended["EndDate"] >= ended["StartDate"]

    for _ in range(3):
        await aws.start()
    pages = aws.ssm.get_paginator("describe_sessions").paginate(
        State="Active", PaginationConfig={"PageSize": 2}
    )
    sizes = await asyncio.to_thread(lambda: [len(p["Sessions"]) for p in pages])
    assert sizes == [2, 1]
    error = await aws.error("describe_sessions", State="Active", NextToken="bogus")
    assert error["Code"] == "InvalidNextToken"
    error = await aws.error(
        "describe_sessions", State="Active", Filters=[{"key": "Flavour", "value": "x"}]
    )
    assert error["Code"] == "InvalidFilterKey"


async def test_start_session_errors(aws: Aws) -> None:
    """StartSession's errors (service-2.json): ``InvalidDocument`` when the document does not
    exist; ``TargetNotConnected`` ("<id> is not connected.", as the CLI prints it) for a target
    without an online agent. Parameters outside the document's allowed pattern are refused
    (ValidationException in the stand-in)."""
    error = await aws.error("start_session", Target=INSTANCE, DocumentName="AWS-NoSuchDocument")
    assert error["Code"] == "InvalidDocument"
    error = await aws.error("start_session", Target=OTHER_INSTANCE, DocumentName=PORT_DOC)
    assert error == {"Code": "TargetNotConnected", "Message": f"{OTHER_INSTANCE} is not connected."}
    aws.standin.set_online(INSTANCE, False)
    error = await aws.error("start_session", Target=INSTANCE, DocumentName=PORT_DOC)
    assert error["Code"] == "TargetNotConnected"
    aws.standin.set_online(INSTANCE, True)
    error = await aws.error(
        "start_session",
        Target=INSTANCE,
        DocumentName=PORT_DOC,
        Parameters={"portNumber": ["99999"]},
    )
    assert error["Code"] == "ValidationException"


async def test_resume_and_terminate(aws: Aws) -> None:
    """ResumeSession: ``DoesNotExistException`` for an unknown id (its only modelled error);
    a new token for an active session; a terminated session cannot be resumed, and the
    official plugin reads a response without TokenValue as "timed out"
    (``sessionhandler.go`` ResumeSessionHandler). TerminateSession has no not-found error in
    the model: terminating again succeeds."""
    error = await aws.error("resume_session", SessionId="localcloud-00000000000000000")
    assert error["Code"] == "DoesNotExistException"
    session = await aws.start()
    sid = session["SessionId"]
    resumed = await aws.call("resume_session", SessionId=sid)
    assert resumed["SessionId"] == sid and resumed["TokenValue"] != session["TokenValue"]
    assert resumed["StreamUrl"] == session["StreamUrl"]
    await aws.call("terminate_session", SessionId=sid)
    await aws.call("terminate_session", SessionId=sid)
    after = await aws.call("resume_session", SessionId=sid)
    assert after["SessionId"] == sid and "TokenValue" not in after


async def test_describe_instance_information(aws: Aws) -> None:
    """DescribeInstanceInformation (service-2.json, API reference): InstanceInformation with
    PingStatus Online/ConnectionLost, AgentVersion, PlatformType Linux, ResourceType
    EC2Instance; filters by ``InstanceInformationFilterList`` or ``Filters`` (not both);
    MaxResults 5..50 with NextToken paging; ``InvalidInstanceId``, ``InvalidFilterKey``,
    ``InvalidInstanceInformationFilterValue`` errors."""
    for n in range(6):
        aws.standin.register(f"i-{n:017x}", fixed_resolver("127.0.0.1", 1), agent_version="3.2.1.0")
    aws.standin.set_online("i-00000000000000000", False)
    everything = await aws.call("describe_instance_information")
    by_id = {i["InstanceId"]: i for i in everything["InstanceInformationList"]}
    assert len(by_id) == 7
    demo = by_id[INSTANCE]
    assert demo["PingStatus"] == "Online" and demo["AgentVersion"] == "3.3.1142.0"
    assert demo["PlatformType"] == "Linux" and demo["ResourceType"] == "EC2Instance"
    assert by_id["i-00000000000000000"]["PingStatus"] == "ConnectionLost"

    one = await aws.call(
        "describe_instance_information", Filters=[{"Key": "InstanceIds", "Values": [INSTANCE]}]
    )
    assert [i["InstanceId"] for i in one["InstanceInformationList"]] == [INSTANCE]
    lost = await aws.call(
        "describe_instance_information",
        InstanceInformationFilterList=[{"key": "PingStatus", "valueSet": ["ConnectionLost"]}],
    )
    assert [i["InstanceId"] for i in lost["InstanceInformationList"]] == ["i-00000000000000000"]
    unknown = await aws.call(
        "describe_instance_information",
        Filters=[{"Key": "InstanceIds", "Values": [OTHER_INSTANCE]}],
    )
    assert unknown["InstanceInformationList"] == []

    pages = aws.ssm.get_paginator("describe_instance_information").paginate(
        PaginationConfig={"PageSize": 5}
    )
    sizes = await asyncio.to_thread(lambda: [len(p["InstanceInformationList"]) for p in pages])
    assert sizes == [5, 2]

    error = await aws.error(
        "describe_instance_information", Filters=[{"Key": "InstanceIds", "Values": ["nope"]}]
    )
    assert error["Code"] == "InvalidInstanceId"
    error = await aws.error(
        "describe_instance_information", Filters=[{"Key": "Colour", "Values": ["red"]}]
    )
    assert error["Code"] == "InvalidFilterKey"
    error = await aws.error(
        "describe_instance_information", Filters=[{"Key": "PingStatus", "Values": ["Asleep"]}]
    )
    assert error["Code"] == "InvalidInstanceInformationFilterValue"
    error = await aws.error(
        "describe_instance_information",
        Filters=[{"Key": "PingStatus", "Values": ["Online"]}],
        InstanceInformationFilterList=[{"key": "PingStatus", "valueSet": ["Online"]}],
    )
    assert error["Code"] == "ValidationException"
    # botocore checks the lower bound itself; the upper bound is the service's job
    code, body = await http(
        aws.url,
        "POST",
        {"MaxResults": 51},
        headers={"X-Amz-Target": "AmazonSSM.DescribeInstanceInformation"},
    )
    assert code == 400 and body["__type"] == "ValidationException"


async def test_other_operations_go_to_moto() -> None:
    """Operations other than the session ones are moto's (moto 5 implements Parameter Store
    but not StartSession): one endpoint_url serves all of SSM. Without moto, an unknown
    operation is answered ``UnknownOperationException`` as by AWS."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        standin, server, url = await serve(moto_url=f"http://{host}:{port}")
        try:
            ssm = ssm_client(url)
            await asyncio.to_thread(
                ssm.put_parameter, Name="/hub/token", Value="s3cret", Type="SecureString"
            )
            got = await asyncio.to_thread(ssm.get_parameter, Name="/hub/token", WithDecryption=True)
            assert got["Parameter"]["Value"] == "s3cret"
            with pytest.raises(ClientError) as info:
                await asyncio.to_thread(ssm.get_parameter, Name="/hub/missing")
            assert info.value.response["Error"]["Code"] == "ParameterNotFound"
        finally:
            await shutdown(standin, server)
    finally:
        moto.stop()
    standin, server, url = await serve()
    try:
        with pytest.raises(ClientError) as info:
            await asyncio.to_thread(ssm_client(url).get_parameter, Name="/x")
        assert info.value.response["Error"]["Code"] == "UnknownOperationException"
    finally:
        await shutdown(standin, server)


# --- the data channel --------------------------------------------------------------------------


async def test_token_frame_is_checked(aws: Aws) -> None:
    """The first frame must be the text token frame (plugin ``FinalizeDataChannelHandshake``:
    JSON with TokenValue). A wrong token, a binary first frame, an unknown session, or a token
    replaced by ResumeSession gets the websocket closed (stand-in: code 1008)."""
    session = await aws.start()
    url = session["StreamUrl"]
    for wire in [
        await Wire.open(url, "not-the-token"),
        await Wire.open(url, None, first=b"\x00" * 130),
        await Wire.open(
            url.replace(session["SessionId"], "localcloud-1234"), session["TokenValue"]
        ),
    ]:
        await wire.wait_closed()
        assert wire.ws.close_code == 1008
    resumed = await aws.call("resume_session", SessionId=session["SessionId"])
    stale = await Wire.open(url, session["TokenValue"])
    await stale.wait_closed()
    assert stale.ws.close_code == 1008
    wire = await Wire.open(resumed["StreamUrl"], resumed["TokenValue"])
    request = await wire.next_data()
    assert request.payload_type == m.PayloadType.HANDSHAKE_REQUEST


async def test_handshake(aws: Aws) -> None:
    """Agent handshake (``datachannel.go`` PerformHandshake, ``sessionplugin.go``): the first
    output message, seq 0 with SYN, is a HandshakeRequest with the agent's version and a
    SessionType action ``Port`` whose Properties are the document's properties; after the
    client's HandshakeResponse the agent acknowledges it and sends HandshakeComplete, seq 1.
    The session is then ``Connected`` (DescribeSessions)."""
    _, wire = await connect(aws)
    first = await wire.next_data()
    assert (first.sequence_number, first.flags) == (0, 1)
    assert first.payload_type == m.PayloadType.HANDSHAKE_REQUEST
    request = m.parse_handshake_request(first.payload)
    assert request.agent_version == "3.3.1142.0" and request.session_type == "Port"
    assert request.properties == {
        "localPortNumber": "0",
        "portNumber": "8888",
        "type": "LocalPortForwarding",
    }
    seq = wire.send(m.PayloadType.HANDSHAKE_RESPONSE, m.handshake_response("1.2.0.0", "Port"))
    complete = await wire.next_data()
    assert seq in wire.acks
    assert (complete.sequence_number, complete.payload_type) == (
        1,
        m.PayloadType.HANDSHAKE_COMPLETE,
    )
    assert m.parse_handshake_complete(complete.payload).time_to_complete_ns > 0
    [item] = (await aws.call("describe_sessions", State="Active"))["Sessions"]
    assert item["Status"] == "Connected"


async def test_smux_round_trip(aws: Aws, echo: Echo) -> None:
    """Port session over smux v1 (``port_mux.go``; xtaci/smux 1.5): a SYN makes the agent dial
    the target port, PSH bytes reach it and its bytes come back as PSH, FIN closes the TCP
    connection and is answered with FIN (no half-close). Output payloads are at most 1024
    bytes (``StreamDataPayloadSize``) and are cut without regard to smux frame boundaries."""
    _, wire = await connect(aws)
    await wire.handshake()
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"hello"))
    assert await wire.smux_frames(1) == [(PSH, 3, b"hello")]

    blob = bytes(range(256)) * 800  # 200 KiB, echoed back in several PSH frames
    for i in range(0, len(blob), 30000):
        wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, blob[i : i + 30000]))
    got = bytearray()
    sizes: list[int] = []
    straddling = 0  # payloads that end inside an smux frame
    while len(got) < len(blob):
        msg = await wire.next_data()
        sizes.append(len(msg.payload))
        wire.smux_buffer += msg.payload
        for cmd, sid, data in parse_smux(wire.smux_buffer):
            assert (cmd, sid) == (PSH, 3)
            got += data
        straddling += bool(wire.smux_buffer)
    assert bytes(got) == blob
    assert max(sizes) <= 1024 and sizes.count(1024) > 100 and straddling > 100
    wire.send(m.PayloadType.OUTPUT, smux_frame(FIN, 3))
    assert await wire.smux_frames(1) == [(FIN, 3, b"")]
    assert echo.connections == 1


async def test_connect_to_port_error_leaves_other_streams(aws: Aws, echo: Echo) -> None:
    """When the agent cannot dial the port for a new stream it sends Flag ConnectToPortError
    (3) and a FIN for that stream, and the other streams go on (``port_mux.go``
    handleServerConnections; ``contracts/model.go`` PayloadTypeFlag)."""
    _, wire = await connect(aws)
    await wire.handshake()
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"one"))
    assert await wire.smux_frames(1) == [(PSH, 3, b"one")]
    echo.stop_listening()
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 5) + smux_frame(PSH, 5, b"lost"))
    flag, fin = await wire.smux_frames(2)
    assert flag == (-1, -1, m.flag_payload(m.Flag.CONNECT_TO_PORT_ERROR))
    assert fin == (FIN, 5, b"")
    wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"two"))
    assert await wire.smux_frames(1) == [(PSH, 3, b"two")]


async def test_agent_reacks_duplicates(aws: Aws) -> None:
    """The agent acknowledges a message it has already processed again (``datachannel.go``
    handleStreamDataMessage: "Resending acknowledge for already processed message"), and acks
    a message ahead of the expected one while keeping it for later."""
    _, wire = await connect(aws)
    await wire.handshake()
    seq = wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3))
    await wire.until(lambda: wire.acks.count(seq) == 1)
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3), seq=seq)
    await wire.until(lambda: wire.acks.count(seq) == 2)
    ahead = wire.next_seq + 1
    wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"second"), seq=ahead)
    await wire.until(lambda: ahead in wire.acks)
    wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"first"))
    wire.next_seq = ahead + 1
    frames = await wire.smux_frames(1)
    got = frames[0][2]
    while got != b"firstsecond":
        got += (await wire.smux_frames(1))[0][2]


async def test_no_ack_before_port_is_ready(aws: Aws) -> None:
    """Data that arrives before the port session is initialised is neither acknowledged nor
    delivered (``port.go`` InputStreamMessageHandler returns ErrHandlerNotReady, and
    ``datachannel.go`` then sends no ack), so the client must retransmit it."""
    aws.standin.settings.ready_delay = 0.6
    _, wire = await connect(aws)
    await wire.handshake()
    seq = wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"early"))
    with pytest.raises(TimeoutError):
        await wire.pump(0.3)
    assert seq not in wire.acks
    await asyncio.sleep(0.4)
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"early"), seq=seq)
    await wire.until(lambda: seq in wire.acks)
    assert await wire.smux_frames(1) == [(PSH, 3, b"early")]


async def test_basic_mode_with_old_agent(aws: Aws, echo: Echo) -> None:
    """Agents up to 3.0.196.0 have no smux (the plugin compares versions; ``port_basic.go``):
    raw bytes of one TCP connection; DisconnectToPort from the client closes it and the next
    data dials again."""
    aws.standin.register(
        OTHER_INSTANCE, fixed_resolver("127.0.0.1", echo.port), agent_version="3.0.196.0"
    )
    _, wire = await connect(aws, instance=OTHER_INSTANCE)
    request = await wire.handshake()
    assert request.agent_version == "3.0.196.0"
    wire.send(m.PayloadType.OUTPUT, b"raw bytes")
    assert (await wire.next_data()).payload == b"raw bytes"
    wire.send(m.PayloadType.FLAG, m.flag_payload(m.Flag.DISCONNECT_TO_PORT))
    wire.send(m.PayloadType.OUTPUT, b"again")
    assert (await wire.next_data()).payload == b"again"
    assert echo.connections == 2


async def test_idle_timeout(aws: Aws) -> None:
    """After the idle timeout the service ends the session: ``channel_closed`` whose Output is
    "Your session timed out due to inactivity and has been terminated." (as users see it,
    aws/amazon-ssm-agent#261), then the websocket closes; a timed-out session cannot be
    resumed (user guide, "End a session")."""
    aws.standin.set_idle_timeout(0.5)
    session, wire = await connect(aws)
    await wire.handshake()
    started = time.monotonic()
    await wire.wait_closed(3)
    assert time.monotonic() - started >= 0.4
    [closed] = wire.closed
    assert m.parse_channel_closed(closed.payload).output == IDLE_TIMEOUT_MESSAGE
    assert m.parse_channel_closed(closed.payload).session_id == session["SessionId"]
    assert wire.ws.close_code == 1000
    resumed = await aws.call("resume_session", SessionId=session["SessionId"])
    assert "TokenValue" not in resumed


async def test_terminate_session_api_and_flag_close_the_channel(aws: Aws) -> None:
    """TerminateSession "permanently ends a session and closes the data connection"
    (service-2.json): the client gets ``channel_closed`` and the websocket closes. The client's
    TerminateSession flag ends the session the same way (``port_mux.go`` HandleStreamMessage)."""
    session, wire = await connect(aws)
    await wire.handshake()
    await aws.call("terminate_session", SessionId=session["SessionId"])
    await wire.wait_closed()
    assert m.parse_channel_closed(wire.closed[0].payload).output == ""
    assert wire.ws.close_code == 1000

    session, wire = await connect(aws)
    await wire.handshake()
    wire.send(m.PayloadType.FLAG, m.flag_payload(m.Flag.TERMINATE_SESSION))
    await wire.wait_closed()
    assert len(wire.closed) == 1
    [ended] = (
        await aws.call(
            "describe_sessions",
            State="History",
            Filters=[{"key": "SessionId", "value": session["SessionId"]}],
        )
    )["Sessions"]
    assert ended["Status"] == "Terminated"


async def test_agent_restart_drops_sessions_abruptly(aws: Aws) -> None:
    """An agent restart drops every session of the instance at once: the websockets close with
    no close frame and no ``channel_closed``; the sessions are over."""
    (s1, w1), (s2, w2) = await connect(aws), await connect(aws)
    await w1.handshake()
    await w2.handshake()
    dropped = aws.standin.restart_agent(INSTANCE)
    assert sorted(dropped) == sorted([s1["SessionId"], s2["SessionId"]])
    for wire in (w1, w2):
        await wire.wait_closed()
        assert wire.ws.close_code is None and wire.closed == []
    assert (await aws.call("describe_sessions", State="Active"))["Sessions"] == []


async def test_close_session_trigger(aws: Aws) -> None:
    """``close_session`` ends a session from the service side with a reason, as
    ``channel_closed`` Output (plugin HandleChannelClosedMessage prints it)."""
    session, wire = await connect(aws)
    await wire.handshake()
    aws.standin.close_session(session["SessionId"], "Session terminated by operator.")
    await wire.wait_closed()
    closed = m.parse_channel_closed(wire.closed[0].payload)
    assert closed.output == "Session terminated by operator."


# --- fault injection ------------------------------------------------------------------------------


async def test_fault_drop_and_duplicate(aws: Aws) -> None:
    """Dropped agent output is retransmitted (``datachannel.go`` ResendStreamDataMessageScheduler,
    RTO from 200 ms); a duplicated message arrives twice with the same sequence number and id,
    and the client drops the copy."""
    _, wire = await connect(aws)
    await wire.handshake()
    aws.standin.inject_fault(
        "drop", direction="to_client", message_types={"output_stream_data"}, count=1
    )
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"x"))
    started = time.monotonic()
    msg = await wire.next_data()
    assert time.monotonic() - started >= 0.15  # came by retransmission
    assert msg.sequence_number == 2

    aws.standin.inject_fault(
        "duplicate", direction="to_client", message_types={"output_stream_data"}
    )
    before = len(wire.arrivals)
    wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"y"))
    await wire.until(lambda: len(wire.arrivals) == before + 2)
    first, second = wire.arrivals[-2:]
    assert first.sequence_number == second.sequence_number == 3
    assert first.message_id == second.message_id
    assert [msg.sequence_number for msg in wire.inbox] == [3]


async def test_fault_reorder_and_delay(aws: Aws) -> None:
    """A reordered message arrives after its successor; a delayed one arrives late. Rules may
    be set through the loopback control API (``POST /_control/faults``).

    "b" goes only once the echo of "a" is held (the one-shot rule has fired and left the
    list): sent earlier, on a loaded machine both echoes came back as one message, which
    had no successor to be reordered behind. The hold is long, so that nothing depends on
    how soon the echo of "b" follows."""
    session, wire = await connect(aws)
    await wire.handshake()
    sid = session["SessionId"]
    code, rule = await http(
        f"{aws.url}/_control/faults",
        "POST",
        {
            "kind": "reorder",
            "direction": "to_client",
            "sessionId": sid,
            "messageTypes": ["output_stream_data"],
            "hold": 60.0,
        },
    )
    assert code == 201 and rule["kind"] == "reorder"
    seq = wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, b"a"))
    await wire.until(lambda: seq in wire.acks, timeout=30)
    await until(lambda: not aws.standin.faults.rules, timeout=30)
    wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"b"))
    await wire.until(lambda: len(wire.inbox) == 2, timeout=30)
    assert [msg.sequence_number for msg in wire.arrivals[-2:]] == [3, 2]
    assert [msg.sequence_number for msg in wire.inbox] == [2, 3]

    aws.standin.inject_fault(
        "delay", direction="to_agent", delay=0.4, message_types={"input_stream_data"}
    )
    started = time.monotonic()
    seq = wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, b"c"))
    await wire.until(lambda: seq in wire.acks, timeout=30)
    assert time.monotonic() - started >= 0.35
    code, _ = await http(f"{aws.url}/_control/faults", "DELETE")
    assert code == 204 and aws.standin.faults.rules == []


async def test_fault_close_mid_transfer_and_resume(aws: Aws) -> None:
    """A websocket that drops mid-transfer leaves the session ``Disconnected``; ResumeSession
    gives a new token and the same session continues on a new websocket, the agent resending
    what was not acknowledged (service-2.json ResumeSession: "Reconnects a session ... after
    it has been disconnected")."""
    session, wire = await connect(aws)
    await wire.handshake()
    aws.standin.inject_fault(
        "close", direction="to_client", message_types={"output_stream_data"}, after=2
    )
    payload = bytes(range(256)) * 12  # 3 KiB: four output messages, the third never arrives
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3) + smux_frame(PSH, 3, payload))
    await wire.wait_closed()
    assert wire.ws.close_code is None
    [item] = (await aws.call("describe_sessions", State="Active"))["Sessions"]
    assert item["Status"] == "Disconnected"

    resumed = await aws.call("resume_session", SessionId=session["SessionId"])
    again = await Wire.open(resumed["StreamUrl"], resumed["TokenValue"], after=wire)
    got = bytearray()
    for msg in wire.inbox:
        again.smux_buffer += msg.payload
    for _cmd, _sid, data in parse_smux(again.smux_buffer):
        got += data
    while len(got) < len(payload):
        for cmd, _sid, data in await again.smux_frames(1):
            assert cmd == PSH
            got += data
    assert bytes(got) == payload
    [item] = (await aws.call("describe_sessions", State="Active"))["Sessions"]
    assert item["Status"] == "Connected"


def test_fault_probability_is_seeded() -> None:
    """Random faults are reproducible: the same seed makes the same decisions, ``after`` lets
    the first messages through, ``count`` bounds how often a rule fires."""
    from localcloud.ssm import FaultRule

    def decisions(seed: int) -> list[bool]:
        rule = FaultRule(kind="drop", probability=0.3, count=None, after=2, seed=seed)
        return [rule.decide() for _ in range(200)]

    assert decisions(7) == decisions(7) != decisions(8)
    assert decisions(7)[:2] == [False, False] and 30 < sum(decisions(7)) < 90
    rule = FaultRule(kind="duplicate", count=3)
    assert [rule.decide() for _ in range(5)] == [True, True, True, False, False]
    with pytest.raises(ValueError):
        FaultRule(kind="explode")


# --- control API and CLI --------------------------------------------------------------------------


async def test_control_api(aws: Aws, echo: Echo) -> None:
    """The loopback control API (not AWS): register an instance, see it online, restart its
    agent, and read the state."""
    code, body = await http(
        f"{aws.url}/_control/instances",
        "POST",
        {"instanceId": OTHER_INSTANCE, "forwardTo": f"127.0.0.1:{echo.port}"},
    )
    assert code == 201 and body["PingStatus"] == "Online"
    session, wire = await connect(aws, instance=OTHER_INSTANCE)
    await wire.handshake()
    code, body = await http(f"{aws.url}/_control/instances/{OTHER_INSTANCE}/restart", "POST")
    assert code == 200 and body["dropped"] == [session["SessionId"]]
    await wire.wait_closed()
    code, state = await http(f"{aws.url}/_control/state")
    assert code == 200 and {i["InstanceId"] for i in state["instances"]} == {
        INSTANCE,
        OTHER_INSTANCE,
    }
    code, _ = await http(
        f"{aws.url}/_control/instances/{OTHER_INSTANCE}/online", "PUT", {"online": False}
    )
    assert code == 200
    error = await aws.error("start_session", Target=OTHER_INSTANCE, DocumentName=PORT_DOC)
    assert error["Code"] == "TargetNotConnected"


async def test_cli_serves_demo_instance(echo: Echo) -> None:
    """``python -m localcloud.ssm --port 0 --forward-to HOST:PORT`` prints its URL first and
    has the demo instance online."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localcloud.ssm",
        "--port",
        "0",
        "--forward-to",
        f"127.0.0.1:{echo.port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        info = await asyncio.to_thread(ssm_client(url).describe_instance_information)
        assert [i["InstanceId"] for i in info["InstanceInformationList"]] == [INSTANCE]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0  # SIGTERM: a clean exit


# --- signed upgrades, resume window, message rate ----------------------------------------------


async def _upgrade(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Dial the data channel with exactly these headers; (HTTP status, error body)."""
    try:
        ws = await websocket_connect(HTTPRequest(url, headers=headers))
    except Exception as exc:  # tornado's HTTPClientError for a non-101 answer
        body = exc.response.body if getattr(exc, "response", None) is not None else b"{}"
        return exc.code, json.loads(body)
    ws.close()
    return 101, {}


async def test_unsigned_and_wrongly_signed_upgrades_are_refused_with_403(aws: Aws) -> None:
    """websocketchannel.go Open signs the upgrade with SigV4 (service ``ssmmessages``, the
    session's region); an upgrade the service cannot verify is refused with HTTP 403 and no
    websocket. Each refusal names the AWS error code of the SigV4 troubleshooting page: no
    signature, a signature made with the wrong secret, an unknown key, a temporary key without
    its session token, and a signature scoped to another service or region."""
    session = await aws.start()
    url = session["StreamUrl"]

    def headers(**options: Any) -> dict[str, str]:
        return dict(signed(url, **options).headers)

    cases = {
        "unsigned": ({}, "MissingAuthenticationToken"),
        "wrong secret": (headers(secret="not-the-secret"), "SignatureDoesNotMatch"),
        "unknown key": (headers(key="AKIAUNKNOWN", secret="x"), "InvalidClientTokenId"),
        "other region": (headers(region="eu-west-1"), "SignatureDoesNotMatch"),
    }
    other_service = AWSRequest(method="GET", url=url)
    SigV4Auth(ReadOnlyCredentials("testing", "testing", None), "ssm", "us-east-1").add_auth(
        other_service
    )
    cases["other service"] = (dict(other_service.headers.items()), "SignatureDoesNotMatch")
    tampered = headers()
    signed_at = tampered["X-Amz-Date"]
    # not what was signed: another second (a signature made at :00 would otherwise pass)
    tampered["X-Amz-Date"] = signed_at[:-3] + ("01Z" if signed_at.endswith("00Z") else "00Z")
    cases["date changed after signing"] = (tampered, "SignatureDoesNotMatch")
    for name, (sent, code) in cases.items():
        status, body = await _upgrade(url, sent)
        assert (status, body.get("__type")) == (403, code), name
    # nothing was opened: the session still waits for its first (signed) websocket
    [item] = (await aws.call("describe_sessions", State="Active"))["Sessions"]
    assert item["Status"] == "Connecting"
    wire = await Wire.open(url, session["TokenValue"])
    assert (await wire.next_data()).payload_type == m.PayloadType.HANDSHAKE_REQUEST


def test_signature_checks_clock_skew_and_temporary_credentials() -> None:
    """SigV4 rules no live test can reach in time: X-Amz-Date more than 5 minutes from the
    service's clock is "Signature expired"; temporary (ASIA…) keys must present their own
    session token, and stop working when they expire (ExpiredToken)."""
    from localcloud.ssm.sigv4 import Principal, SignatureError, verify

    url = "ws://127.0.0.1:1/v1/data-channel/s-1?role=publish_subscribe"

    class Store:
        def lookup(self, key: str) -> Principal | None:
            return {
                "ASIATEMP": Principal("ASIATEMP", "s", "arn:role", "tok", expires=2_000_000_000.0)
            }.get(key)

    def sign(token: str | None) -> dict[str, str]:
        request = AWSRequest(method="GET", url=url)
        creds = ReadOnlyCredentials("ASIATEMP", "s", token)
        SigV4Auth(creds, "ssmmessages", "us-east-1").add_auth(request)
        return {**request.headers, "Host": "127.0.0.1:1"}  # as the HTTP client sends it

    now = time.time()
    good = sign("tok")
    assert verify("GET", url, good, store=Store(), region="us-east-1", now=now).arn == "arn:role"
    for headers, when, code in [
        (good, now + 301, "InvalidSignatureException"),
        (sign(None), now, "InvalidClientTokenId"),
        (sign("other"), now, "InvalidClientTokenId"),
        (good, 2_000_000_000.0, None),  # skew first: expiry is checked on a fresh signature
    ]:
        with pytest.raises(SignatureError) as info:
            verify("GET", url, headers, store=Store(), region="us-east-1", now=when)
        if code is not None:
            assert info.value.code == code


async def test_allow_unsigned_accepts_an_unsigned_upgrade(echo: Echo) -> None:
    """``--allow-unsigned`` (``require_signature=False``) keeps the old behaviour for whoever
    needs it; a signature that is present is still checked."""
    standin, server, url = await serve(require_signature=False)
    standin.register(INSTANCE, fixed_resolver("127.0.0.1", echo.port))
    try:
        aws = Aws(standin, url, ssm_client(url))
        session = await aws.start()
        status, _ = await _upgrade(session["StreamUrl"], {})
        assert status == 101
        bad = dict(signed(session["StreamUrl"], secret="wrong").headers)
        assert (await _upgrade(session["StreamUrl"], bad))[0] == 403
    finally:
        await shutdown(standin, server)


async def test_disconnected_session_ends_after_the_reconnect_window(aws: Aws) -> None:
    """A session whose client websocket is gone stays ``Disconnected`` for a bounded time
    (``reconnect_timeout``); then the service ends it and ResumeSession hands out no token
    (what the plugin reads as "timed out", sessionhandler.go)."""
    aws.standin.settings.reconnect_timeout = 0.3
    session, wire = await connect(aws)
    await wire.handshake()
    assert aws.standin.drop_connection(session["SessionId"])
    await wire.wait_closed()
    record = aws.standin.sessions[session["SessionId"]]
    for _ in range(200):  # 0.3 s is the window; 10 s is the deadline on a loaded machine
        if not record.active:
            break
        await asyncio.sleep(0.05)
    assert record.status.value == "Terminated"
    answer = await aws.call("resume_session", SessionId=session["SessionId"])
    assert "TokenValue" not in answer


async def test_message_rate_model_holds_back_what_exceeds_it(aws: Aws, echo: Echo) -> None:
    """With the service's per-session rate on, stream data beyond the burst is held back and
    passed on at the rate, in order, nothing lost; the websocket is not read meanwhile."""
    aws.standin.settings.message_rate = 20.0
    aws.standin.settings.message_burst = 5
    _session, wire = await connect(aws)
    await wire.handshake()
    wire.send(m.PayloadType.OUTPUT, smux_frame(SYN, 3))
    first = wire.next_seq
    for i in range(40):
        wire.send(m.PayloadType.OUTPUT, smux_frame(PSH, 3, bytes([i]) * 10))
    sent = set(range(first, wire.next_seq))
    # at 20 a second after a burst of 5, 41 messages need about 2 s: early on, not all of them
    # can have been acknowledged (a slow machine only makes fewer of them acknowledged)
    await wire.until(lambda: bool(sent & set(wire.acks)), timeout=10)
    assert not sent <= set(wire.acks)
    await wire.until(lambda: sent <= set(wire.acks), timeout=30)
    got = bytearray()
    while len(got) < 400:
        for _cmd, _sid, data in await wire.smux_frames(1, timeout=30):
            got += data
    assert bytes(got) == b"".join(bytes([i]) * 10 for i in range(40))
