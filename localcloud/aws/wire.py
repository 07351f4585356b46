"""What a request to the AWS front is (service, action, parameters) and how AWS says "no".

The hub's boto3 clients speak three protocols (botocore's service models):

- ``ec2`` (EC2): form-encoded ``Action=RunInstances&Version=2016-11-15&...`` in a POST body;
  errors are ``<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/>
  </Response>``;
- ``query`` (IAM, STS): the same request form; errors are ``<ErrorResponse><Error><Type/>
  <Code/><Message/></Error><RequestId/></ErrorResponse>``;
- ``json`` 1.1 (SSM): a JSON body and ``X-Amz-Target: AmazonSSM.GetParameter``; errors are
  ``{"__type": code, "message": text}`` with ``Content-Type: application/x-amz-json-1.1``.

boto3 reads the code from those bodies and the HTTP status from the response, and its retry
modes look at both: the codes of ``THROTTLING_CODES`` are retried as throttling, statuses 500,
502, 503 and 504 as transient errors. So an injected error must carry the status AWS uses for
that code (``default_status``), or boto3 would retry what AWS does not and vice versa.

The service comes from the SigV4 credential scope of ``Authorization`` (as moto does), else
from the target prefix or the API version.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_TARGET_SERVICES = {"AmazonSSM": "ssm"}
_VERSION_SERVICES = {"2016-11-15": "ec2", "2010-05-08": "iam", "2011-06-15": "sts"}
#: botocore protocol of each service the hub uses
PROTOCOLS = {"ec2": "ec2", "iam": "query", "sts": "query", "ssm": "json"}
_XMLNS = {
    "ec2": "http://ec2.amazonaws.com/doc/2016-11-15/",
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
}
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"

#: HTTP status AWS answers with, for codes whose status is not 400 (EC2 API reference
#: "Error codes": server errors are 5xx; IAM/STS/SSM model shapes' httpStatusCode).
_STATUS = {
    "InsufficientInstanceCapacity": 500,
    "InsufficientCapacity": 500,
    "InsufficientHostCapacity": 500,
    "InsufficientAddressCapacity": 500,
    "InsufficientReservedInstanceCapacity": 500,
    "InsufficientVolumeCapacity": 500,
    "InternalError": 500,
    "InternalFailure": 500,
    "InternalServerError": 500,
    "ServiceFailure": 500,
    "RequestLimitExceeded": 503,
    "ServiceUnavailable": 503,
    "Unavailable": 503,
    "UnauthorizedOperation": 403,
    "AccessDenied": 403,
    "NoSuchEntity": 404,
}

#: What AWS says with each code, when a fault rule gives no message ({InstanceType} and
#: {action} are filled from the request).
_MESSAGES = {
    "InsufficientInstanceCapacity": (
        "We currently do not have sufficient {InstanceType} capacity in the Availability Zone "
        "you requested. Our system will be working on provisioning additional capacity."
    ),
    "RequestLimitExceeded": "Request limit exceeded.",
    "ThrottlingException": "Rate exceeded",
    "Throttling": "Rate exceeded",
    "UnauthorizedOperation": "You are not authorized to perform this operation.",
    "AccessDenied": "User is not authorized to perform: {action}",
    "AccessDeniedException": "User is not authorized to perform: {action}",
    "InvalidAMIID.NotFound": "The image id '[{ImageId}]' does not exist",
    "InvalidParameterValue": (
        "Value ({IamInstanceProfile.Arn}) for parameter iamInstanceProfile.arn is invalid. "
        "Invalid IAM Instance Profile ARN"
    ),
    "InternalError": "An internal error has occurred",
    "ServiceUnavailable": "The service is unavailable. Try again later.",
}


@dataclass
class AwsRequest:
    """The parts of a request the front decides on (the body itself is forwarded as is)."""

    service: str
    action: str
    #: flattened parameters: query-protocol names (``InstanceId.1``) or dotted JSON paths
    params: dict[str, str] = field(default_factory=dict)
    protocol: str = "query"
    #: botocore's ``amz-sdk-request`` attempt number (1 for the first try)
    attempt: int = 1
    invocation_id: str = ""


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        for index, item in enumerate(value, 1):
            _flatten(item, f"{prefix}.{index}", out)
    elif value is not None:
        out[prefix] = json.dumps(value) if isinstance(value, bool) else str(value)


def parse_request(
    method: str, headers: Any, body: bytes, query: dict[str, list[bytes]] | None = None
) -> AwsRequest:
    """Service, action and parameters of a request as boto3 sends it."""
    params: dict[str, str] = {}
    target = headers.get("X-Amz-Target", "")
    content_type = headers.get("Content-Type", "")
    if target:
        prefix, _, action = target.partition(".")
        protocol = "json"
        if body:
            try:
                _flatten(json.loads(body), "", params)
            except ValueError:
                pass
    else:
        protocol = "query"
        for key, values in (query or {}).items():
            if values:
                params[key] = values[-1].decode("utf-8", "replace")
        if body and ("form-urlencoded" in content_type or method == "POST"):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.pop("Action", "")
        prefix = ""
    match = _SCOPE.search(headers.get("Authorization", ""))
    if match:
        service = match.group(2)
    elif prefix:
        service = _TARGET_SERVICES.get(prefix, prefix.lower())
    else:
        service = _VERSION_SERVICES.get(params.get("Version", ""), "unknown")
    if protocol == "query":
        params.pop("Version", None)
        protocol = PROTOCOLS.get(service, "query")
    attempt = 1
    sdk = headers.get("amz-sdk-request", "")
    found = re.search(r"attempt=(\d+)", sdk)
    if found:
        attempt = int(found.group(1))
    return AwsRequest(
        service=service,
        action=action,
        params=params,
        protocol=protocol,
        attempt=attempt,
        invocation_id=headers.get("amz-sdk-invocation-id", ""),
    )


def default_status(code: str) -> int:
    """The HTTP status AWS answers ``code`` with."""
    return _STATUS.get(code, 400)


def default_message(code: str, request: AwsRequest) -> str:
    """AWS's wording for ``code``, filled in from the request where it names something."""
    template = _MESSAGES.get(code, f"Injected by the local cloud: {code}")
    values = {"action": f"{request.service}:{request.action}", **request.params}
    values.setdefault("InstanceType", "the requested instance type")
    values.setdefault("ImageId", "")
    values.setdefault("IamInstanceProfile.Arn", values.get("IamInstanceProfile.Name", ""))
    return re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass
class ErrorResponse:
    """An error answer ready to send: status, headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def error_response(
    protocol: str, service: str, code: str, message: str, status: int
) -> ErrorResponse:
    """``code`` in the wire format of ``protocol``, as the service would send it."""
    request_id = str(uuid.uuid4())
    if protocol == "json":
        body = json.dumps({"__type": code, "message": message}, separators=(",", ":"))
        return ErrorResponse(
            status,
            {"Content-Type": JSON_CONTENT_TYPE, "x-amzn-RequestId": request_id},
            body.encode(),
        )
    code_xml, message_xml = escape(code), escape(message)
    if protocol == "ec2":
        text = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code_xml}</Code><Message>{message_xml}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    else:
        kind = "Receiver" if status >= 500 else "Sender"
        xmlns = _XMLNS.get(service, "")
        text = (
            f'<ErrorResponse xmlns="{xmlns}"><Error><Type>{kind}</Type><Code>{code_xml}</Code>'
            f"<Message>{message_xml}</Message></Error><RequestId>{request_id}</RequestId>"
            "</ErrorResponse>"
        )
    return ErrorResponse(
        status,
        {"Content-Type": "text/xml;charset=UTF-8", "x-amzn-RequestId": request_id},
        text.encode(),
    )


def console_output_response(
    instance_id: str, text: str, when: dt.datetime
) -> tuple[dict[str, str], bytes]:
    """EC2's ``GetConsoleOutput`` answer: the console's text base64-encoded in ``output``
    (botocore decodes it for its callers), with the time it was taken."""
    request_id = str(uuid.uuid4())
    output = base64.b64encode(text.encode()).decode()
    stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<GetConsoleOutputResponse xmlns="{_XMLNS["ec2"]}"><requestId>{request_id}</requestId>'
        f"<instanceId>{escape(instance_id)}</instanceId><timestamp>{stamp}</timestamp>"
        f"<output>{output}</output></GetConsoleOutputResponse>"
    )
    headers = {"Content-Type": "text/xml;charset=UTF-8", "x-amzn-RequestId": request_id}
    return headers, body.encode()


_XML_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")


def error_code_of(protocol: str, body: bytes) -> str:
    """The error code in an error body (for the call log), or ``""``."""
    if protocol == "json":
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        code = str(data.get("__type", "")) if isinstance(data, dict) else ""
        return code.rpartition("#")[2]
    found = _XML_CODE.search(body)
    return found.group(1).decode("utf-8", "replace") if found else ""
