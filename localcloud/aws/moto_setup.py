"""What the communities need in moto, and the communities file that names it.

moto makes up its own ids (``subnet-…``, ``sg-…``), so the shipped demo file's fake ids do not
exist in it. At every start the local cloud creates, in moto:

- a VPC (10.42.0.0/16) with two private subnets in two availability zones (the spawner tries
  the next subnet when one zone has no capacity);
- one security group with **no inbound rule** (the hub reaches instances through Session
  Manager only; moto's default egress rule stays, as on AWS, for the SSM endpoints);
- per community, the IAM role of its instances (trusted by ``ec2.amazonaws.com``, allowed
  ``ssm:GetParameter*`` on the hub's parameters, and only on those tagged with the instance's
  own ARN, and ``ec2:DescribeInstances``) and an instance profile holding it, named as in the
  shipped file;
- and it picks an AMI moto knows (Amazon Linux 2023, x86_64), since moto validates AMIs here.

Then it writes ``.localcloud/communities.yaml``: the shipped file, comments and all, with those
ids in place of the fake ones, checked with ``hub_config.parse_communities`` before it is
written. moto does not enforce IAM policies; the policy is there so the setup reads like the
real one (``hub_config`` infrastructure templates) and tests can inspect it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from hub_config import DEFAULT_COMMUNITIES_PATH, parse_communities
from hub_config._yaml_source import parse_yaml

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
#: the default ``EC2Spawner.parameter_prefix``; the role may read what lies under it
DEFAULT_PARAMETER_PREFIX = "/synapse-notebook-hub"
VPC_CIDR = "10.42.0.0/16"
SUBNETS = (("10.42.1.0/24", "a"), ("10.42.2.0/24", "b"))
#: Subnets for hundreds of light instances (benchmarks): a /24 holds 251 instances (AWS and
#: moto keep five addresses), too few for 500 servers spread over two zones by a hash.
LIGHT_SUBNETS = (("10.42.16.0/20", "a"), ("10.42.32.0/20", "b"))
SECURITY_GROUP_NAME = "notebook-hub-instances"
#: moto's AMI to launch: the newest Amazon Linux 2023 (kernel 6.1, x86_64) it ships
AMI_NAME_PATTERN = "al2023-ami-2023.*-kernel-6.1-x86_64"
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def parameter_policy(prefix: str, region: str = REGION, account: str = ACCOUNT) -> dict[str, Any]:
    """What an instance role may do: read its own server's parameters (and find its home
    volume's device, as docs/spawner.md asks)."""
    path = prefix.strip("/")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadOwnServerParameters",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
                "Resource": f"arn:aws:ssm:{region}:{account}:parameter/{path}/*",
                "Condition": {
                    "StringEquals": {
                        "ssm:resourceTag/jupyterhub:instance-arn": "${ec2:SourceInstanceARN}"
                    }
                },
            },
            {
                "Sid": "FindTheHomeVolume",
                "Effect": "Allow",
                "Action": "ec2:DescribeInstances",
                "Resource": "*",
            },
            {
                "Sid": "DecryptWithTheSsmKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"}},
            },
        ],
    }


@dataclass
class CommunityIds:
    """The IAM objects of one community."""

    community_id: str
    role_name: str
    role_arn: str
    instance_profile_name: str
    instance_profile_arn: str


@dataclass
class CloudIds:
    """Everything ``provision`` created, by the names the communities file uses."""

    region: str
    vpc_id: str
    subnets: list[str]
    availability_zones: list[str]
    security_group_id: str
    ami: str
    communities: dict[str, CommunityIds] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CloudIds:
        """Back from ``to_json`` (e.g. ``endpoints.json``'s ``aws.resources``)."""
        return cls(
            region=data["region"],
            vpc_id=data["vpc_id"],
            subnets=list(data["subnets"]),
            availability_zones=list(data["availability_zones"]),
            security_group_id=data["security_group_id"],
            ami=data["ami"],
            communities={k: CommunityIds(**v) for k, v in data["communities"].items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "vpc_id": self.vpc_id,
            "subnets": self.subnets,
            "availability_zones": self.availability_zones,
            "security_group_id": self.security_group_id,
            "ami": self.ami,
            "communities": {k: vars(v) for k, v in self.communities.items()},
        }


def _client(service: str, moto_url: str, region: str) -> Any:
    return boto3.client(service, endpoint_url=moto_url, region_name=region, **TEST_CREDENTIALS)


def _profile_name(arn: str) -> str:
    return arn.rpartition("/")[2]


def pick_ami(ec2: Any) -> str:
    """The newest image moto ships matching ``AMI_NAME_PATTERN``."""
    images = ec2.describe_images(
        Owners=["amazon"],
        Filters=[
            {"Name": "name", "Values": [AMI_NAME_PATTERN]},
            {"Name": "architecture", "Values": ["x86_64"]},
        ],
    )["Images"]
    if not images:
        raise RuntimeError(f"moto ships no AMI named {AMI_NAME_PATTERN}")
    return max(images, key=lambda image: image["Name"])["ImageId"]


def _ensure_role(iam: Any, name: str, prefix: str, region: str) -> tuple[str, str]:
    """Role and instance profile ``name`` (both), created if missing; their ARNs."""
    try:
        role_arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role_arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description="Notebook instances of one community: read their own parameters",
        )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name,
        PolicyName="read-own-server-parameters",
        PolicyDocument=json.dumps(parameter_policy(prefix, region)),
    )
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    if not any(role["RoleName"] == name for role in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return role_arn, profile["Arn"]


def provision(
    moto_url: str,
    *,
    source: Path = DEFAULT_COMMUNITIES_PATH,
    region: str = REGION,
    parameter_prefix: str = DEFAULT_PARAMETER_PREFIX,
    subnet_cidrs: tuple[tuple[str, str], ...] = SUBNETS,
) -> CloudIds:
    """Create the network, the AMI choice and every community's role and profile in moto.

    Blocking (boto3): call it in a thread from an event loop.
    """
    ec2 = _client("ec2", moto_url, region)
    iam = _client("iam", moto_url, region)
    vpc_id = ec2.create_vpc(
        CidrBlock=VPC_CIDR,
        TagSpecifications=[
            {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "notebook-hub"}]}
        ],
    )["Vpc"]["VpcId"]
    subnets, zones = [], []
    for cidr, zone_letter in subnet_cidrs:
        zone = f"{region}{zone_letter}"
        subnet = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=cidr,
            AvailabilityZone=zone,
            TagSpecifications=[
                {
                    "ResourceType": "subnet",
                    "Tags": [{"Key": "Name", "Value": f"notebook-hub-private-{zone_letter}"}],
                }
            ],
        )["Subnet"]
        subnets.append(subnet["SubnetId"])
        zones.append(zone)
    group_id = ec2.create_security_group(
        GroupName=SECURITY_GROUP_NAME,
        Description="Notebook instances: no inbound rule, reached through Session Manager",
        VpcId=vpc_id,
    )["GroupId"]
    ids = CloudIds(
        region=region,
        vpc_id=vpc_id,
        subnets=subnets,
        availability_zones=zones,
        security_group_id=group_id,
        ami=pick_ami(ec2),
    )
    data = parse_yaml(source.read_text(encoding="utf-8")).data
    for community in data.get("communities") or []:
        name = _profile_name(str(community["instance_profile_arn"]))
        role_arn, profile_arn = _ensure_role(iam, name, parameter_prefix, region)
        ids.communities[str(community["id"])] = CommunityIds(
            community_id=str(community["id"]),
            role_name=name,
            role_arn=role_arn,
            instance_profile_name=name,
            instance_profile_arn=profile_arn,
        )
    return ids


def render_communities(
    ids: CloudIds,
    source: Path = DEFAULT_COMMUNITIES_PATH,
    images: dict[str, str] | None = None,
) -> str:
    """The text of ``source`` with ``ids`` in place of its AWS ids (comments kept).

    Each value is replaced on its own line (the YAML loader records where every value is),
    so comments, order and layout stay as the admin wrote them. ``images``: image kind ->
    a locally built image for every choice of that kind (real-boot machines, which reach no
    registry); such an image has no registry digest, so it is marked ``allow_unpinned``.
    """
    text = source.read_text(encoding="utf-8")
    doc = parse_yaml(text)
    lines = text.splitlines(keepends=True)

    def replace(path: tuple[str | int, ...], old: str, new: str) -> None:
        line_no = doc.lines.get(path)
        if line_no is None or old not in lines[line_no - 1]:
            raise ValueError(f"{source}: cannot find {old!r} at {'.'.join(map(str, path))}")
        lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)

    for index, community in enumerate(doc.data.get("communities") or []):
        base: tuple[str | int, ...] = ("communities", index)
        profile = ids.communities[str(community["id"])]
        replace(
            (*base, "instance_profile_arn"),
            community["instance_profile_arn"],
            profile.instance_profile_arn,
        )
        replace((*base, "ami"), str(community["ami"]), ids.ami)
        for i, subnet in enumerate(community.get("subnets") or []):
            replace((*base, "subnets", i), subnet, ids.subnets[i % len(ids.subnets)])
        for i, group in enumerate(community.get("security_groups") or []):
            replace((*base, "security_groups", i), group, ids.security_group_id)
        choices = (community.get("images") or {}).get("choices") or {}
        for image_id, choice in choices.items():
            local = (images or {}).get(str(choice.get("kind")))
            if local is None:
                continue
            path = (*base, "images", "choices", image_id, "image")
            line = lines[doc.lines[path] - 1]
            indent = line[: len(line) - len(line.lstrip())]
            replace(path, choice["image"], f"{local}\n{indent}allow_unpinned: true")
    header = (
        "# GENERATED by `python -m localcloud serve` from "
        f"{_display(source)}: the ids below exist in the local\n"
        "# cloud's moto (regenerated at every start). Edit the shipped file, not this one.\n\n"
    )
    return header + "".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_communities(
    ids: CloudIds,
    dest: Path,
    source: Path = DEFAULT_COMMUNITIES_PATH,
    images: dict[str, str] | None = None,
) -> Path:
    """Write the generated file after checking it as the hub will (``CommunitiesError`` if
    it would not load)."""
    text = render_communities(ids, source, images)
    parse_communities(text, source=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(dest)
    return dest


def setup(
    moto_url: str,
    state_dir: Path,
    *,
    source: Path = DEFAULT_COMMUNITIES_PATH,
    region: str = REGION,
    parameter_prefix: str = DEFAULT_PARAMETER_PREFIX,
    subnet_cidrs: tuple[tuple[str, str], ...] = SUBNETS,
    images: dict[str, str] | None = None,
) -> tuple[CloudIds, Path]:
    """``provision`` and ``write_communities`` to ``<state_dir>/communities.yaml``."""
    ids = provision(
        moto_url,
        source=source,
        region=region,
        parameter_prefix=parameter_prefix,
        subnet_cidrs=subnet_cidrs,
    )
    return ids, write_communities(ids, state_dir / "communities.yaml", source, images)
