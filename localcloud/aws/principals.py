"""The principals moto's IAM and STS issued keys to, for services that check signatures.

moto does not check SigV4 (``moto_server``); the SSM stand-in's data channel does, as the
service does, and so needs the secret of each access key the local cloud handed out: long-term
keys of IAM users (``CreateAccessKey``, ``AKIA…``) and temporary ones of assumed roles
(``AssumeRole``, ``ASIA…``, with their session token and expiry). Both live in moto's
in-process backends; moto runs in this process (``start_moto``), so they are read directly,
the way moto's own ``iam.access_control`` finds them when its IAM enforcement is on.
"""

from __future__ import annotations

import calendar
from typing import Any

from ..ssm.sigv4 import Principal

DEFAULT_ACCOUNT = "123456789012"


class MotoPrincipals:
    """A `localcloud.ssm.sigv4.CredentialStore` over moto's IAM users and assumed roles."""

    def __init__(self, account: str = DEFAULT_ACCOUNT, partition: str = "aws") -> None:
        self.account = account
        self.partition = partition

    def lookup(self, access_key_id: str) -> Principal | None:
        from moto.iam.models import iam_backends
        from moto.sts.models import sts_backends

        # moto's server thread may add keys meanwhile: iterate over copies
        iam = iam_backends[self.account][self.partition]
        for user in list(iam.users.values()):
            for key in list(user.access_keys):
                if key.access_key_id == access_key_id and key.status == "Active":
                    return Principal(access_key_id, key.secret_access_key, user.arn)
        sts = sts_backends[self.account][self.partition]
        for role in list(sts.assumed_roles):
            if role.access_key_id == access_key_id:
                return Principal(
                    access_key_id,
                    role.secret_access_key,
                    role.arn,
                    session_token=role.session_token,
                    expires=_timestamp(role.expiration),
                )
        return None


def _timestamp(value: Any) -> float:
    """moto keeps expirations as naive UTC datetimes."""
    return float(calendar.timegm(value.utctimetuple()))


def issue_user_keys(iam: Any, user_name: str) -> tuple[str, str]:
    """An IAM user with one access key (created once): the identity of a local hub.

    Blocking (boto3 on moto).
    """
    try:
        iam.create_user(UserName=user_name)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    key = iam.create_access_key(UserName=user_name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
