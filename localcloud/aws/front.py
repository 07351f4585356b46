"""The AWS front: one endpoint URL for every AWS service the hub uses.

The hub is configured with a single ``endpoint_url`` (``SNH_AWS_ENDPOINT_URL``) for EC2, SSM,
IAM and STS, as a real deployment would use AWS's. Behind it:

- Session Manager operations (``X-Amz-Target: AmazonSSM.StartSession``, ``TerminateSession``,
  ``ResumeSession``, ``DescribeSessions``, ``DescribeInstanceInformation``) go to the SSM
  stand-in (``localcloud.ssm``), which moto does not replace;
- everything else goes to moto, bodies and headers unchanged (SigV4 is not checked; moto finds
  the service in the credential scope). Answers are streamed back as they arrive.

Before forwarding, the front applies its fault rules (``localcloud.aws.faults``), records the
call (``localcloud.aws.calls``; ``GET /_control/calls``), implements RunInstances'
``ClientToken`` idempotency (``localcloud.aws.idempotency``), refuses what AWS refuses and moto
would answer, and rewrites the few moto errors that differ from AWS's
(``localcloud.aws.corrections``). Listeners on the call log (the
instance simulator) hear about every answered call.

Typical use::

    front, server, url = await serve_front(moto_url=moto.url, ssm_url=ssm_url)
    front.inject("InsufficientInstanceCapacity", service="ec2", action="RunInstances",
                 params={"SubnetId": subnet})
    front.inject("RequestLimitExceeded", service="ec2", action="*", count=3)
    front.calls.count("ec2", "DescribeInstances")
    await shutdown_front(server)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import tornado.web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, parse_response_start_line
from tornado.netutil import bind_sockets
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .calls import CallLog, CallRecord
from .control import control_routes
from .corrections import correct, refusal
from .faults import AwsFaultRule, AwsFaults
from .idempotency import MISMATCH_CODE, MISMATCH_MESSAGE, ClientTokens, Recorded
from .wire import (
    AwsRequest,
    console_output_response,
    error_code_of,
    error_response,
    parse_request,
)

log = logging.getLogger(__name__)

#: what the SSM stand-in answers; every other SSM operation is moto's (Parameter Store)
SESSION_ACTIONS = frozenset(
    {
        "StartSession",
        "TerminateSession",
        "ResumeSession",
        "DescribeSessions",
        "DescribeInstanceInformation",
    }
)
#: answers read whole before they are sent, so they can be corrected or recorded
BUFFERED_ACTIONS = frozenset({("ec2", "RunInstances"), ("ec2", "CreateSnapshot")})
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)
_ERROR_CAPTURE = 64 * 1024


class AwsFront:
    """State of the front: where it forwards, its fault rules, its call log, client tokens."""

    def __init__(self, moto_url: str, ssm_url: str | None = None) -> None:
        self.moto_url = moto_url.rstrip("/")
        self.ssm_url = ssm_url.rstrip("/") if ssm_url else None
        self.faults = AwsFaults()
        self.calls = CallLog()
        self.tokens = ClientTokens()
        self.base_url = ""
        self.http = SimpleAsyncHTTPClient(force_instance=True, max_clients=64)
        #: An instance's console where the local cloud has a real one (real-boot machines),
        #: for ``GetConsoleOutput``; None (or None for an instance): moto's canned text.
        self.consoles: Callable[[str], str | None] | None = None

    def inject(
        self,
        code: str | None = None,
        *,
        service: str = "*",
        action: str = "*",
        params: dict[str, str] | None = None,
        count: int | None = 1,
        after: int = 0,
        message: str | None = None,
        status: int | None = None,
        delay: float = 0.0,
    ) -> AwsFaultRule:
        """Add a fault rule (see ``localcloud.aws.faults``)."""
        return self.faults.add(
            AwsFaultRule(
                service=service,
                action=action,
                code=code,
                message=message,
                status=status,
                params=params or {},
                count=count,
                after=after,
                delay=delay,
            )
        )

    def clear_faults(self) -> None:
        self.faults.clear()

    def backend_for(self, request: AwsRequest) -> tuple[str, str]:
        """(name, base URL) of the service that answers ``request``."""
        if request.service == "ssm" and request.action in SESSION_ACTIONS and self.ssm_url:
            return "ssm", self.ssm_url
        return "moto", self.moto_url

    def close(self) -> None:
        self.http.close()


class ForwardHandler(tornado.web.RequestHandler):
    """Every non-control request: faults, idempotency, then the backend."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")  # type: ignore[assignment]

    def initialize(self, front: AwsFront) -> None:
        self.front = front

    def compute_etag(self) -> None:
        return None

    async def get(self, *_args: str) -> None:
        await self._handle()

    post = put = delete = head = get

    async def _handle(self) -> None:
        front = self.front
        request = parse_request(
            self.request.method or "POST",
            self.request.headers,
            self.request.body,
            self.request.query_arguments,
        )
        record = front.calls.start(request)
        try:
            rule = front.faults.fire(request)
            if rule is not None:
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                answer = rule.answer(request)
                if answer is not None:
                    record.fault = rule.rule_id
                    record.backend = "front"
                    code, message, status = answer
                    log.info(
                        "fault %s: %s %s -> %s", rule.rule_id, request.service, request.action, code
                    )
                    self._send_error(request, record, code, message, status)
                    return
            refused = refusal(request)
            if refused is not None:
                record.backend = "front"
                self._send_error(request, record, *refused)
                return
            if self._answer_console(request, record):
                return
            key = ClientTokens.key(request.service, request.action, request.params)
            if key is None:
                if (request.service, request.action) in BUFFERED_ACTIONS:
                    await self._forward_buffered(request, record)
                else:
                    await self._forward_streaming(request, record)
                return
            recorded = await front.tokens.begin(key)
            if recorded is not None:
                record.backend = "front"
                if ClientTokens.same_request(recorded, request.params):
                    record.replayed = True
                    self._send(recorded.status, recorded.headers, recorded.body)
                    front.calls.finish(record, recorded.status)
                else:
                    self._send_error(request, record, MISMATCH_CODE, MISMATCH_MESSAGE, 400)
                return
            answer_to_keep: Recorded | None = None
            try:
                answer_to_keep = await self._forward_buffered(request, record)
            finally:
                front.tokens.end(key, answer_to_keep)
        finally:
            if record.status == 0:  # the client went away, or we failed: still log it
                front.calls.finish(record, 499, "ClientClosedRequest")

    def _answer_console(self, request: AwsRequest, record: CallRecord) -> bool:
        """GetConsoleOutput of a real-boot instance: its machine's console, the newest 64 KB
        (what EC2 keeps; the latest output, as with ``Latest=true``)."""
        if self.front.consoles is None or (request.service, request.action) != (
            "ec2",
            "GetConsoleOutput",
        ):
            return False
        instance_id = request.params.get("InstanceId", "")
        text = self.front.consoles(instance_id)
        if text is None:
            return False
        record.backend = "front"
        headers, body = console_output_response(instance_id, text, dt.datetime.now(dt.UTC))
        self._send(200, headers.items(), body)
        self.front.calls.finish(record, 200)
        return True

    # -- answers ----------------------------------------------------------------------------
    def _send_error(
        self, request: AwsRequest, record: CallRecord, code: str, message: str, status: int
    ) -> None:
        error = error_response(request.protocol, request.service, code, message, status)
        self._send(error.status, list(error.headers.items()), error.body)
        self.front.calls.finish(record, status, code)

    def _send(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        self._start(status, headers)
        self.finish(body)

    def _start(self, status: int, headers: Iterable[tuple[str, str]], reason: str = "") -> None:
        self.set_status(status, reason or None)
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS:
                self.add_header(name, value)

    def _upstream(self, base: str, **kwargs: Any) -> HTTPRequest:
        headers = {
            k: v
            for k, v in self.request.headers.get_all()
            if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"
        }
        method = self.request.method or "POST"
        return HTTPRequest(
            base + self.request.uri,
            method=method,
            headers=headers,
            body=self.request.body if method in ("POST", "PUT") else None,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            decompress_response=False,
            request_timeout=120,
            **kwargs,
        )

    async def _forward_buffered(self, request: AwsRequest, record: CallRecord) -> Recorded | None:
        """Forward, read the whole answer, correct moto's wording; the answer if it is a 200."""
        backend, base = self.front.backend_for(request)
        record.backend = backend
        try:
            response = await self.front.http.fetch(self._upstream(base), raise_error=False)
        except (OSError, HTTPClientError) as exc:
            self._backend_down(request, record, backend, exc)
            return None
        body = response.body or b""
        if response.code >= 400:
            code = error_code_of(request.protocol, body)
            fixed = correct(request, response.code, code)
            if fixed is not None:
                self._send_error(request, record, *fixed)
                return None
            self._send(response.code, response.headers.get_all(), body)
            self.front.calls.finish(record, response.code, code)
            return None
        headers = list(response.headers.get_all())
        self._send(response.code, headers, body)
        record.answer = body
        try:
            self.front.calls.finish(record, response.code)
        finally:
            record.answer = b""
        return Recorded(dict(request.params), response.code, headers, body)

    async def _forward_streaming(self, request: AwsRequest, record: CallRecord) -> None:
        """Forward and pass the answer on chunk by chunk."""
        backend, base = self.front.backend_for(request)
        record.backend = backend
        state: dict[str, Any] = {"code": 0, "reason": "", "started": False}
        headers = HTTPHeaders()
        captured = bytearray()

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                start = parse_response_start_line(line.strip())
                state["code"], state["reason"] = start.code, start.reason
                headers.clear()
            elif line.strip():
                headers.parse_line(line)

        def start_once() -> None:
            if not state["started"]:
                state["started"] = True
                self._start(state["code"], headers.get_all(), state["reason"])

        def on_chunk(chunk: bytes) -> None:
            start_once()
            if state["code"] >= 400 and len(captured) < _ERROR_CAPTURE:
                captured.extend(chunk[: _ERROR_CAPTURE - len(captured)])
            self.write(chunk)
            self.flush()

        upstream = self._upstream(base, header_callback=on_header, streaming_callback=on_chunk)
        try:
            response = await self.front.http.fetch(upstream, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            if state["started"]:
                self.finish()
                self.front.calls.finish(record, state["code"], "BackendFailed")
            else:
                self._backend_down(request, record, backend, exc)
            return
        if not state["code"]:
            state["code"], state["reason"] = response.code, response.reason or ""
        if response.code == 599 and not state["started"]:
            self._backend_down(request, record, backend, response.error)
            return
        start_once()
        self.finish()
        code = error_code_of(request.protocol, bytes(captured)) if state["code"] >= 400 else ""
        self.front.calls.finish(record, state["code"], code)

    def _backend_down(
        self, request: AwsRequest, record: CallRecord, backend: str, exc: object
    ) -> None:
        log.warning("%s did not answer %s %s: %s", backend, request.service, request.action, exc)
        self._send_error(
            request, record, "ServiceUnavailable", f"{backend} did not answer: {exc}", 503
        )


def make_app(
    front: AwsFront, extra_routes: Iterable[tuple[str, type, dict[str, Any]]] = ()
) -> tornado.web.Application:
    """Control routes (the front's and ``extra_routes``, e.g. the simulator's), then AWS."""
    return tornado.web.Application(
        [
            *control_routes(front),
            *extra_routes,
            (r"/(.*)", ForwardHandler, {"front": front}),
        ],
        log_function=_log_request,
    )


#: Paths of the stand-ins' own APIs behind the front (moto's ``/moto-api`` can reset or dump
#: every resource; the SSM stand-in's and the front's ``/_control``): no AWS service has them.
_NOT_AWS = re.compile(r"/+(moto-api|_control)(/|$)", re.IGNORECASE)


class InstanceForwardHandler(ForwardHandler):
    """The front as an instance reaches it: AWS calls only."""

    async def get(self, *args: str) -> None:
        path = urllib.parse.unquote(self.request.path)
        if _NOT_AWS.match(path) or _NOT_AWS.match(posixpath.normpath(path)):
            self.set_status(404)
            self.finish("Not Found")
            return
        await super().get(*args)

    post = put = delete = head = get


def instance_app(front: AwsFront) -> tornado.web.Application:
    """What an instance reaches at AWS's names (a real-boot machine's link,
    ``localcloud.machines.links``): AWS only, never the stand-ins' own APIs (moto's
    ``/moto-api``, the ``/_control/`` routes), which would let an instance reset or change the
    local cloud."""
    return tornado.web.Application(
        [(r"/(.*)", InstanceForwardHandler, {"front": front})], log_function=_log_request
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """AWS errors are everyday answers (a parameter not written yet, an agent not online yet):
    they are in the call log; the access log gets them at DEBUG only."""
    log.debug(
        "%d %s %s %.1fms",
        handler.get_status(),
        handler.request.method,
        handler.request.uri,
        1000.0 * handler.request.request_time(),
    )


async def serve_front(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    moto_url: str,
    ssm_url: str | None = None,
    extra_routes: Iterable[tuple[str, type, dict[str, Any]]] = (),
) -> tuple[AwsFront, HTTPServer, str]:
    """Start the front on the running loop; returns it, its server and its URL (the
    ``endpoint_url`` for boto3). Stop it with ``await shutdown_front(front, server)``."""
    front = AwsFront(moto_url, ssm_url)
    sockets = bind_sockets(port, host)
    server = HTTPServer(make_app(front, extra_routes), idle_connection_timeout=300)
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    front.base_url = f"http://{url_host}:{bound_port}"
    return front, server, front.base_url


async def shutdown_front(front: AwsFront, server: HTTPServer) -> None:
    server.stop()
    await server.close_all_connections()
    front.close()
