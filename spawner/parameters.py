"""The server's secrets and settings in SSM Parameter Store, where only its instance reads them.

Secrets never travel in user data, tags, command parameters or process arguments: the hub
writes them here as ``SecureString`` before the instance boots, the instance's bootstrap reads
them with the instance role at every boot, and stop deletes them. The Synapse token has its
own parameter because it changes while the server runs: the hub refreshes it (Synapse access
tokens live 24 h) and rewrites just that parameter; the notebook reads it on demand through
``SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME``.
"""

from __future__ import annotations

import json
from typing import Any

from .aws import Aws, AwsError, ErrorKind
from .naming import INSTANCE_ARN_TAG, ServerParameters


class ParameterStore:
    """Writes and deletes a server's parameters; ``kms_key_id`` None uses ``alias/aws/ssm``."""

    def __init__(self, aws: Aws, kms_key_id: str | None = None) -> None:
        self.aws = aws
        self.kms_key_id = kms_key_id

    async def _put(self, name: str, value: str, *, secure: bool) -> None:
        kwargs: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": "SecureString" if secure else "String",
            "Overwrite": True,
            "Tier": "Standard" if len(value.encode()) <= 4096 else "Advanced",
        }
        if secure and self.kms_key_id:
            kwargs["KeyId"] = self.kms_key_id
        await self.aws.call("ssm", "put_parameter", **kwargs)

    async def write(
        self,
        params: ServerParameters,
        *,
        config: dict[str, Any],
        env: dict[str, str],
        synapse_token: str,
    ) -> None:
        await self._put(params.config, json.dumps(config, sort_keys=True), secure=False)
        await self._put(params.env, json.dumps(env, sort_keys=True), secure=True)
        await self._put(params.synapse_token, synapse_token, secure=True)

    async def write_synapse_token(self, params: ServerParameters, token: str) -> None:
        await self._put(params.synapse_token, token, secure=True)

    async def tag_for_instance(self, params: ServerParameters, instance_arn: str) -> None:
        """The IAM condition that lets an instance read only its own parameters keys on this."""
        for name in params.names:
            await self.aws.call(
                "ssm",
                "add_tags_to_resource",
                ResourceType="Parameter",
                ResourceId=name,
                Tags=[{"Key": INSTANCE_ARN_TAG, "Value": instance_arn}],
            )

    async def delete(self, params: ServerParameters) -> None:
        """Idempotent: parameters already gone are fine."""
        try:
            await self.aws.call("ssm", "delete_parameters", Names=params.names)
        except AwsError as e:
            if e.kind is not ErrorKind.NOT_FOUND:
                raise

    async def exists(self, params: ServerParameters) -> list[str]:
        """Which of the server's parameters exist (for tests and the admin view)."""
        answer = await self.aws.call("ssm", "get_parameters", Names=params.names)
        return sorted(p["Name"] for p in answer.get("Parameters", []))
