"""The SSM API endpoint: AWS JSON 1.1 on ``POST /``, as boto3's ``ssm`` client sends it.

boto3 (botocore's ``json`` protocol, SSM's ``targetPrefix`` ``AmazonSSM``) posts the request
as JSON with ``X-Amz-Target: AmazonSSM.<Operation>`` and ``Content-Type:
application/x-amz-json-1.1``; the answer is JSON with the same content type, errors as in
``errors``. Signatures are not checked (moto does not check them either).

The session operations are answered here. Every other operation goes, unchanged, to the moto
server at ``moto_url`` when there is one (so one ``endpoint_url`` serves all of SSM: parameters
live in moto), and otherwise gets ``UnknownOperationException`` as from AWS.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .errors import AwsError, dumps, unknown_operation

if TYPE_CHECKING:
    from .service import SsmStandIn

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "AmazonSSM"

OPERATIONS: dict[str, str] = {
    "StartSession": "start_session",
    "TerminateSession": "terminate_session",
    "ResumeSession": "resume_session",
    "DescribeSessions": "describe_sessions",
    "DescribeInstanceInformation": "describe_instance_information",
}

# Headers that describe one hop, not the message: not copied between client and moto.
_HOP_HEADERS = frozenset(
    {"connection", "content-length", "transfer-encoding", "host", "keep-alive", "server", "date"}
)


class ApiHandler(tornado.web.RequestHandler):
    """``POST /``: dispatch on ``X-Amz-Target``."""

    def initialize(self, standin: SsmStandIn) -> None:
        self.standin = standin

    async def post(self) -> None:
        target = self.request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        method = OPERATIONS.get(operation) if prefix == TARGET_PREFIX else None
        if method is None:
            if self.standin.moto_url:
                await self._forward()
            else:
                self._reply_error(unknown_operation())
            return
        try:
            request = self._request_json()
            result = getattr(self.standin, method)(request)
        except AwsError as exc:
            log.info("%s -> %s: %s", operation, exc.code, exc.message)
            self._reply_error(exc)
            return
        self._reply(200, result)

    async def get(self) -> None:
        if self.standin.moto_url:
            await self._forward()
        else:
            self._reply_error(unknown_operation())

    def _request_json(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise AwsError("SerializationException", "The request body is not JSON.") from exc
        if not isinstance(body, dict):
            raise AwsError("SerializationException", "The request body is not a JSON object.")
        return body

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.finish(dumps(body))

    def _reply_error(self, exc: AwsError) -> None:
        self._reply(exc.status, exc.body())

    async def _forward(self) -> None:
        """Pass the request to moto and its answer back, byte for byte."""
        assert self.standin.moto_url is not None
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in _HOP_HEADERS}
        request = HTTPRequest(
            self.standin.moto_url + self.request.uri,
            method=self.request.method,
            headers=headers,
            body=self.request.body if self.request.method == "POST" else None,
            allow_nonstandard_methods=True,
            follow_redirects=False,
            request_timeout=60,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            self._reply_error(
                AwsError(
                    "InternalServerError", f"moto at {self.standin.moto_url}: {exc}", status=500
                )
            )
            return
        self.set_status(response.code, response.reason)
        self.clear_header("Content-Type")
        for name, value in response.headers.get_all():
            if name.lower() not in _HOP_HEADERS:
                self.add_header(name, value)
        self.finish(response.body or b"")
