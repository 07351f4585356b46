"""``ClientToken`` idempotency for RunInstances, which moto does not implement.

The spawner launches with a client token so that a retried RunInstances (boto3 retrying after
a timeout, or the hub restarting mid-launch) cannot start a second instance. EC2's rule
("Ensuring idempotency in Amazon EC2 API requests"): a repeated request with the same token
and the same parameters returns the original result and launches nothing; the same token with
different parameters is ``IdempotentParameterMismatch``. moto launches again every time, so
the front remembers each token's first successful answer and replays it. A request that
arrives while the first one with its token is still in flight waits for it. A failed launch
records nothing, so it can be retried with the same token, as on EC2.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

#: EC2 actions whose ``ClientToken`` makes them idempotent (those the hub uses)
IDEMPOTENT_ACTIONS = frozenset({"RunInstances"})
MISMATCH_CODE = "IdempotentParameterMismatch"
MISMATCH_MESSAGE = (
    "The client token you have provided is associated with a request that had different "
    "parameters. Use a new client token or the same parameters."
)


@dataclass
class Recorded:
    """The first successful answer given to a token."""

    params: dict[str, str]
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class ClientTokens:
    """Answers by (service, action, token); see the module docstring."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str, str], Recorded] = {}
        self._in_flight: dict[tuple[str, str, str], asyncio.Future[None]] = {}

    @staticmethod
    def key(service: str, action: str, params: dict[str, str]) -> tuple[str, str, str] | None:
        token = params.get("ClientToken")
        if service != "ec2" or action not in IDEMPOTENT_ACTIONS or not token:
            return None
        return service, action, token

    async def begin(self, key: tuple[str, str, str]) -> Recorded | None:
        """The recorded answer for ``key``, or None after claiming it (call ``end``)."""
        while True:
            if key in self._answers:
                return self._answers[key]
            pending = self._in_flight.get(key)
            if pending is None:
                self._in_flight[key] = asyncio.get_running_loop().create_future()
                return None
            await asyncio.shield(pending)

    def end(self, key: tuple[str, str, str], answer: Recorded | None) -> None:
        """Release ``key``, recording ``answer`` when the launch succeeded."""
        if answer is not None:
            self._answers[key] = answer
        pending = self._in_flight.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    @staticmethod
    def same_request(recorded: Recorded, params: dict[str, str]) -> bool:
        return recorded.params == params
