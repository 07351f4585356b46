"""What a booting instance reads from AWS, straight from moto (blocking; run in threads).

These are the instance's own calls, not the hub's, so they go to moto directly and not
through the AWS front: they neither count in its call log nor meet its fault rules.

- user data: ``DescribeInstanceAttribute(userData)`` (cloud-init reads it from IMDS);
- the role's credentials: the instance profile's role, ``AssumeRole``'d in moto (IMDS serves
  them on AWS);
- the server's parameters, read *with those credentials* as the bootstrap does;
- and one thing an instance does to itself: ``shutdown -h now`` from inside (the idle
  backstop), which EC2 turns into a stop whose state reason is
  ``Client.InstanceInitiatedShutdown`` (``guest_shutdown``).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from .notebook import RoleCredentials
from .userdata import decode_user_data, read_server_conf

CONFIG = botocore.config.Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30
)
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class BootError(Exception):
    """The bootstrap cannot go on (what would leave a real instance without a notebook)."""


@dataclass
class ServerParameters:
    """The ``config`` and ``jupyterhub-env`` parameters of one server."""

    config: dict[str, Any]
    env: dict[str, str]


class MotoReader:
    """Clients on moto for the simulator (thread-safe once built)."""

    def __init__(self, moto_url: str, region: str) -> None:
        self.moto_url = moto_url
        self.region = region
        session = boto3.session.Session(region_name=region, **TEST_CREDENTIALS)
        # one session for every client: it keeps the service models it has loaded (a session
        # per client read botocore's JSON models again, most of the local cloud's CPU while
        # hundreds of instances booted at once)
        self.session = session
        self._session_lock = threading.Lock()  # boto3 sessions are not thread-safe; clients are
        self.ec2 = session.client("ec2", endpoint_url=moto_url, config=CONFIG)
        self.iam = session.client("iam", endpoint_url=moto_url, config=CONFIG)
        self.sts = session.client("sts", endpoint_url=moto_url, config=CONFIG)

    def describe_instances(self, instance_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every instance, or those of ``instance_ids`` (a filter: an id moto does not know
        is left out, not an error)."""
        ids = sorted(instance_ids)
        kwargs = {"Filters": [{"Name": "instance-id", "Values": ids}]} if ids else {}
        instances = []
        for page in self.ec2.get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page.get("Reservations", []):
                instances.extend(reservation.get("Instances", []))
        return instances

    def _user_data_base64(self, instance_id: str) -> str:
        answer = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        raw = (answer.get("UserData") or {}).get("Value")
        if not raw:
            raise BootError("the instance has no user data")
        return str(raw)

    def user_data(self, instance_id: str) -> bytes:
        """The user data as the instance's metadata service serves it: the bytes the launch
        gave (the API's base64 undone; compressed, if it was, for cloud-init to undo)."""
        try:
            return base64.b64decode(self._user_data_base64(instance_id), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BootError("the instance's user data is not base64") from exc

    def server_conf(self, instance_id: str) -> dict[str, str]:
        return read_server_conf(decode_user_data(self._user_data_base64(instance_id)))

    def role_credentials(self, instance_id: str, profile_arn: str) -> tuple[str, RoleCredentials]:
        """(role ARN, credentials) of the instance profile's role."""
        role_arn, creds = self.role_session(instance_id, profile_arn)
        return role_arn, RoleCredentials(
            creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
        )

    def role_session(self, instance_id: str, profile_arn: str) -> tuple[str, dict[str, Any]]:
        """(role ARN, STS's ``Credentials``, expiry included) of the instance profile's role,
        as EC2 assumes it for the instance."""
        name = profile_arn.rpartition("/")[2]
        try:
            roles = self.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"][
                "Roles"
            ]
        except botocore.exceptions.ClientError as exc:
            raise BootError(f"instance profile {name}: {exc}") from exc
        if not roles:
            raise BootError(f"instance profile {name} has no role")
        role_arn = roles[0]["Arn"]
        creds = self.sts.assume_role(RoleArn=role_arn, RoleSessionName=instance_id)["Credentials"]
        return role_arn, creds

    def read_parameters(
        self, path: str, credentials: RoleCredentials
    ) -> ServerParameters | list[str]:
        """The server's parameters, or the names still missing (the hub writes them around
        the launch)."""
        with self._session_lock:
            ssm = self.session.client(
                "ssm",
                endpoint_url=self.moto_url,
                config=CONFIG,
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token,
            )
        names = [f"{path.rstrip('/')}/config", f"{path.rstrip('/')}/jupyterhub-env"]
        answer = ssm.get_parameters(Names=names, WithDecryption=True)
        found = {p["Name"]: p["Value"] for p in answer.get("Parameters", [])}
        missing = [n for n in names if n not in found]
        if missing:
            return missing
        try:
            config = json.loads(found[names[0]])
            env = json.loads(found[names[1]])
        except ValueError as exc:
            raise BootError(f"a parameter under {path} is not JSON") from exc
        if not isinstance(config, dict) or not isinstance(env, dict):
            raise BootError(f"the parameters under {path} are not JSON objects")
        return ServerParameters(config, {str(k): str(v) for k, v in env.items()})

    def volume_exists(self, volume_id: str) -> bool:
        try:
            volumes = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidVolume.NotFound":
                return False
            raise
        return bool(volumes)

    def volume_snapshot(self, volume_id: str) -> str:
        """The snapshot the volume was created from ('' for an empty new volume)."""
        try:
            volumes = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        except botocore.exceptions.ClientError:
            return ""
        return str(volumes[0].get("SnapshotId") or "") if volumes else ""

    def guest_shutdown(self, instance_id: str) -> str:
        """What EC2 does when the guest shuts itself down and the instance's
        InstanceInitiatedShutdownBehavior is ``stop``: the instance stops, volumes attached.

        moto has no guest, so: StopInstances on moto, then the state reason EC2 documents for
        it (``Client.InstanceInitiatedShutdown``) in place of the API stop's
        ``Client.UserInitiatedShutdown`` — possible only while moto runs in this process (as
        the local cloud runs it). Returns the state reason code DescribeInstances now shows.
        """
        self.ec2.stop_instances(InstanceIds=[instance_id])
        return mark_instance_initiated_shutdown(instance_id, self.region)


INSTANCE_INITIATED = "Client.InstanceInitiatedShutdown"


def mark_instance_initiated_shutdown(instance_id: str, region: str) -> str:
    """Give a stopped instance in the in-process moto the guest shutdown's state reason."""
    try:
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.instances import StateReason
    except ImportError:  # pragma: no cover - moto is part of the local cloud's extras
        return "Client.UserInitiatedShutdown"
    for account in list(ec2_backends):
        try:
            instance = ec2_backends[account][region].get_instance(instance_id)
        except Exception:  # InvalidInstanceIdError: another account's, or moto is elsewhere
            continue
        instance.state_reason = StateReason(
            f"{INSTANCE_INITIATED}: Instance initiated shutdown", INSTANCE_INITIATED
        )
        instance._reason = ""
        return INSTANCE_INITIATED
    return "Client.UserInitiatedShutdown"
