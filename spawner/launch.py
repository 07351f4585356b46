"""The ``RunInstances`` request of a server: pure functions of community, user and options.

Everything the EC2 API is asked for when a server is launched is decided here, from frozen
inputs, so it can be read, tested and validated against botocore's model without a cloud (the
style of kubespawner's ``objects.py``). The spawner only adds the I/O: which subnet is being
tried, the user data and the client token it keeps in its state.

No secret is an input of anything in this module: tags carry names and ids only, and the user
data is the caller's (a rendering of :mod:`spawner.bootstrap`, which takes no secret either).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hub_config.communities import Community

from .naming import (
    HOME_DEVICE,
    MAX_TAGS_PER_RESOURCE,
    RESERVED_TAG_PREFIXES,
    ROOT_DEVICE,
    TAG_COMMUNITY,
    TAG_HUB,
    TAG_IMAGE,
    TAG_SERVER,
    TAG_USER,
    sanitize_tag_key,
    sanitize_tag_value,
    server_tag,
)
from .options import SpawnOptions

#: EC2's limit on ``ClientToken``.
MAX_CLIENT_TOKEN_LENGTH = 64
#: EC2's limit on user data, before base64 encoding.
MAX_USER_DATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServerIdentity:
    """Who a server belongs to: the hub's names and the Synapse account behind them."""

    hub_id: str
    #: The hub user name.
    user: str
    #: The server name; "" for the default server.
    server: str
    synapse_userid: str
    synapse_user_name: str
    email: str

    @property
    def server_tag(self) -> str:
        """The server as tags and parameter paths name it (``_`` for the default server)."""
        return server_tag(self.server)


def instance_tags(
    community: Community, identity: ServerIdentity, options: SpawnOptions
) -> list[dict[str, str]]:
    """The tags of a server's instance and volumes, in a stable order.

    First Sage's service-catalog tags (cost reports key on them), then the hub's own, then the
    community's extra tags. An extra tag never replaces one of the hub's: one whose key (after
    sanitising, compared case-insensitively, since tools such as the console treat ``Name``
    and ``name`` alike) equals a hub key, or starts with a reserved prefix, is left out, as
    is any tag past EC2's limit of 50 per resource.
    """
    name = f"notebook-{identity.user}" + (f"-{identity.server}" if identity.server else "")
    own = [
        ("Name", name),
        ("synapse:ownerId", identity.synapse_userid),
        ("synapse:userName", identity.synapse_user_name),
        ("synapse:email", identity.email),
        ("OwnerEmail", f"{identity.synapse_user_name}@synapse.org"),
        ("synapse:teamId", community.team_id),
        (TAG_HUB, identity.hub_id),
        (TAG_USER, identity.user),
        (TAG_SERVER, identity.server_tag),
        (TAG_IMAGE, options.image_id),
        (TAG_COMMUNITY, community.id),
    ]
    tags = [{"Key": key, "Value": sanitize_tag_value(value)} for key, value in own]
    taken = {key.casefold() for key, _ in own}
    for key, value in community.tags.items():
        if len(tags) >= MAX_TAGS_PER_RESOURCE:
            break
        clean_key = sanitize_tag_key(key)
        folded = clean_key.casefold()
        if folded in taken or folded.startswith(RESERVED_TAG_PREFIXES):
            continue
        taken.add(folded)
        tags.append({"Key": clean_key, "Value": sanitize_tag_value(value)})
    return tags


# --------------------------------------------------------------------------------------------
# Placement and idempotency
# --------------------------------------------------------------------------------------------


def subnet_order(community: Community, identity: ServerIdentity) -> list[str]:
    """The community's subnets in the order to try them for this server.

    The first one is picked by a hash of hub, user and server, so servers spread over the
    community's zones, and the same server always starts in the same place (a retry lands in
    the subnet of the launch it retries). The others follow in file order (wrapping around),
    for the spawner to try on ``InsufficientInstanceCapacity``.
    """
    subnets = list(community.subnets)
    if not subnets:
        return []
    start = _digest(identity.hub_id, identity.user, identity.server) % len(subnets)
    return subnets[start:] + subnets[:start]


def client_token(identity: ServerIdentity, launch_id: str) -> str:
    """The ``ClientToken`` of one launch: the same for a retry of it, new for a new launch.

    EC2 answers a repeated ``RunInstances`` with the same token with the instance it already
    launched, instead of launching a second one, so a retry after a timeout is safe. The
    caller picks ``launch_id`` (e.g. a uuid4) when it decides to launch and keeps it in the
    spawner's state until the instance id is recorded. The token is a 64-hex-digit digest of
    the server and the launch id (EC2 allows 64 ASCII characters).
    """
    if not launch_id:
        raise ValueError("launch_id must not be empty")
    return f"{_digest(identity.hub_id, identity.user, identity.server, launch_id):064x}"


def _digest(*parts: str) -> int:
    # JSON keeps the parts apart: ("a", "b/c") and ("a/b", "c") hash differently.
    encoded = json.dumps(list(parts), ensure_ascii=False).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(encoded).digest(), "big")


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------


def run_instances_request(
    community: Community,
    identity: ServerIdentity,
    options: SpawnOptions,
    *,
    subnet: str,
    client_token: str,
    user_data: str,
    root_device: str = ROOT_DEVICE,
    home_snapshot: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``ec2.run_instances`` for one server.

    ``home_snapshot``: the home volume is created from this snapshot (in the subnet's zone,
    by EC2, attached at launch): a stopped server moved to another zone
    (`spawner.zone_move`). ``options.disk_gb`` must then be at least the snapshot's size.

    ``root_device`` is the AMI's ``RootDeviceName`` (``/dev/xvda`` on Amazon Linux,
    ``/dev/sda1`` on Ubuntu): the root mapping must name it to size the root volume instead of
    adding a second disk.

    Left out on purpose: ``Monitoring`` (detailed monitoring costs per instance and nothing
    here reads one-minute metrics) and ``EbsOptimized`` (on by default and free on every
    current type; setting it would fail on the older types that lack it). The shutdown
    behaviour is ``stop``: an instance that shuts itself down (its idle backstop) must keep its
    disk, never terminate.

    Raises ValueError for inputs that only a bug can produce (options of another community,
    a subnet not in the community, an overlong token or user data), so that they fail here
    and not as an EC2 error halfway through a launch.
    """
    # Long: one request, field by field: the one place that says all EC2 is asked for.
    if options.community_id != community.id:
        raise ValueError(f"options are for {options.community_id!r}, not {community.id!r}")
    if community.instance_type(options.instance_type) is None:
        raise ValueError(f"{options.instance_type!r} is not offered to {community.id!r}")
    if community.image(options.image_id) is None:
        raise ValueError(f"{options.image_id!r} is not an image of {community.id!r}")
    if subnet not in community.subnets:
        raise ValueError(f"{subnet!r} is not a subnet of {community.id!r}")
    if (
        not client_token
        or len(client_token) > MAX_CLIENT_TOKEN_LENGTH
        or not client_token.isascii()
    ):
        raise ValueError("client_token must be 1 to 64 ASCII characters")
    if len(user_data.encode("utf-8")) > MAX_USER_DATA_BYTES:
        raise ValueError(f"user data is larger than EC2's {MAX_USER_DATA_BYTES} bytes")
    tags = instance_tags(community, identity, options)
    return {
        "ImageId": community.ami,
        "InstanceType": options.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": subnet,
        "SecurityGroupIds": list(community.security_groups),
        "IamInstanceProfile": {"Arn": community.instance_profile_arn},
        "BlockDeviceMappings": [
            _volume(root_device, community.root_volume_gb, delete_on_termination=True),
            _volume(
                HOME_DEVICE,
                options.disk_gb,
                delete_on_termination=community.volume_policy.delete_on_termination,
                snapshot_id=home_snapshot,
            ),
        ],
        "MetadataOptions": {
            "HttpTokens": "required",
            # 2, not 1: the container reads the Synapse token with the instance role through
            # docker's bridge, one hop further than the host.
            "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled",
            "InstanceMetadataTags": "disabled",
        },
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [dict(t) for t in tags]},
            {"ResourceType": "volume", "Tags": [dict(t) for t in tags]},
        ],
        "UserData": user_data,
        "ClientToken": client_token,
        "InstanceInitiatedShutdownBehavior": "stop",
    }


def _volume(
    device: str, size_gb: int, *, delete_on_termination: bool, snapshot_id: str | None = None
) -> dict[str, Any]:
    ebs: dict[str, Any] = {
        "VolumeSize": size_gb,
        "VolumeType": "gp3",
        "Encrypted": True,
        "DeleteOnTermination": delete_on_termination,
    }
    if snapshot_id:
        ebs["SnapshotId"] = snapshot_id
    return {"DeviceName": device, "Ebs": ebs}
