"""boto3 for the hub: every call in a thread pool, every failure a typed error.

boto3 blocks, and the hub serves every user from one event loop, so no boto3 call may run on
it: `Aws.call` runs each in a shared pool. Throttling (``RequestLimitExceeded`` and friends)
is retried by botocore's *standard* retry mode with exponential backoff and jitter; what is
still failing after that reaches the spawner as an `AwsError` whose `kind` says what the hub
can do about it (try another subnet, tell the user, tell the admin).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

log = logging.getLogger(__name__)

#: One pool for every AWS call of the hub. Calls are short (they wait on the network); the
#: size bounds how many are in flight at once, e.g. when 20 users start together.
EXECUTOR = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aws")


class ErrorKind(Enum):
    CAPACITY = "capacity"  # try elsewhere or later
    THROTTLED = "throttled"  # still throttled after botocore's retries: back off longer
    PERMISSION = "permission"  # the hub's IAM role lacks something: the admin must act
    CONFIGURATION = "configuration"  # a community setting names something that does not exist
    NOT_FOUND = "not_found"  # the resource is gone (e.g. a terminated instance)
    TRANSIENT = "transient"  # network or 5xx: retrying may help
    OTHER = "other"


_KINDS: dict[str, ErrorKind] = {
    **dict.fromkeys(
        (
            "InsufficientInstanceCapacity",
            "InsufficientCapacity",
            "InsufficientHostCapacity",
            "InsufficientReservedInstanceCapacity",
            "InsufficientFreeAddressesInSubnet",
            "Unsupported",  # the type is not offered in this subnet's zone
        ),
        ErrorKind.CAPACITY,
    ),
    **dict.fromkeys(
        (
            "RequestLimitExceeded",
            "Throttling",
            "ThrottlingException",
            "ThrottledException",
            "TooManyRequestsException",
            "ServiceUnavailable",
        ),
        ErrorKind.THROTTLED,
    ),
    **dict.fromkeys(
        ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure"),
        ErrorKind.PERMISSION,
    ),
    **dict.fromkeys(
        (
            "InvalidAMIID.NotFound",
            "InvalidAMIID.Malformed",
            "InvalidAMIID.Unavailable",
            "InvalidSubnetID.NotFound",
            "InvalidGroup.NotFound",
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "InvalidKeyPair.NotFound",
            "VPCIdNotSpecified",
        ),
        ErrorKind.CONFIGURATION,
    ),
    **dict.fromkeys(
        ("InvalidInstanceID.NotFound", "ParameterNotFound", "InvalidVolume.NotFound"),
        ErrorKind.NOT_FOUND,
    ),
}


class AwsError(Exception):
    """A failed AWS call: which operation, AWS's error code and message, and its kind."""

    def __init__(self, operation: str, code: str, message: str, kind: ErrorKind) -> None:
        super().__init__(f"{operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message
        self.kind = kind


def classify(operation: str, error: BaseException) -> AwsError:
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", "Unknown"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        kind = _KINDS.get(code)
        if kind is None:
            kind = ErrorKind.TRANSIENT if status >= 500 else ErrorKind.OTHER
        return AwsError(operation, code, str(info.get("Message", "")), kind)
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return AwsError(operation, "NoCredentials", str(error), ErrorKind.PERMISSION)
    if isinstance(error, botocore.exceptions.BotoCoreError | OSError):
        return AwsError(operation, type(error).__name__, str(error), ErrorKind.TRANSIENT)
    raise error


class Aws:
    """Clients of one region (and endpoint), shared by every spawner of the hub through its
    `spawner.region.Region`.

    ``endpoint_url`` points every service at one endpoint (the local cloud's AWS front); in a
    real deployment it is None and boto3 finds AWS's endpoints and credentials as usual.
    """

    def __init__(
        self, region: str, endpoint_url: str | None = None, *, total_max_attempts: int = 8
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.configs = {
            retry: botocore.config.Config(
                region_name=region,
                retries={"mode": "standard", "total_max_attempts": attempts},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=EXECUTOR._max_workers,
            )
            for retry, attempts in ((True, total_max_attempts), (False, 1))
        }
        self._session = boto3.session.Session()
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()
        #: calls and errors by (service, operation) and (service, operation, code): metrics
        self.calls: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str, str]] = Counter()

    def client(self, service: str, *, retry: bool = True) -> Any:
        """boto3 clients are thread-safe once built; building one is not, hence the lock."""
        key = (service, retry)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    service, endpoint_url=self.endpoint_url, config=self.configs[retry]
                )
            return self._clients[key]

    async def call(
        self, service: str, operation: str, *, retry: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        """``client.<operation>(**kwargs)`` in the pool; raises `AwsError`.

        ``retry=False`` makes exactly one attempt: for ``RunInstances``, whose capacity
        errors come as HTTP 500, which botocore would retry in place when the right move is
        the next subnet; the caller retries throttling itself, with the same client token.
        """
        return await self._run(
            service, operation, lambda c: getattr(c, operation)(**kwargs), retry=retry
        )

    async def paginate(self, service: str, operation: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every page of a paginated call, fetched in the pool."""
        return await self._run(
            service,
            operation,
            lambda c: list(c.get_paginator(operation).paginate(**kwargs)),
        )

    async def _run(
        self, service: str, operation: str, fn: Callable[[Any], Any], *, retry: bool = True
    ) -> Any:
        self.calls[(service, operation)] += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                EXECUTOR, functools.partial(self._in_thread, service, fn, retry)
            )
        except Exception as e:
            error = classify(operation, e)
            self.errors[(service, operation, error.code)] += 1
            raise error from None

    def _in_thread(self, service: str, fn: Callable[[Any], Any], retry: bool) -> Any:
        return fn(self.client(service, retry=retry))
