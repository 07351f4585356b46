"""What the spawner really asks AWS for, against what the templates allow.

The requests come from the spawner's own builders (`spawner.launch.run_instances_request`,
`spawner.naming.ServerParameters`, `spawner.removal.snapshot_tags`, the tunnel's default
document) for every community and image of the shipped ``hub_config/communities.yaml``; the
permissions come from the policies the templates deploy (``policies/*.json``, equal to the
templates' by tests/hub_config/test_infrastructure_lint.py), rendered with the community's
account and region.
Each request is turned into the per-resource authorisation questions the Service
Authorization Reference lists for the operation (RunInstances: instance, volume, subnet,
security-group, network-interface, image, plus iam:PassRole for the profile's role and
ec2:CreateTags with ec2:CreateAction for tags on create) and answered with the evaluator of
tests/hub_config/test_iam_policies.py. A change on either side that breaks the other fails
here, not in AWS.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.communities import Community
from hub_config.infrastructure import sources
from hub_config.infrastructure.policy_eval import Request, evaluate, is_allowed, matching_sids
from spawner import launch, naming, removal
from spawner.bootstrap import BootstrapConfig, render_user_data
from spawner.ec2spawner import EC2Spawner
from spawner.naming import INSTANCE_ARN_TAG, ServerParameters
from spawner.options import SpawnOptions
from spawner.poller import InstanceView
from spawner.ssm.datachannel import DEFAULT_DOCUMENT

REPO = Path(__file__).resolve().parents[2]
HUB_POLICY_FILES = ("hub-ec2.json", "hub-parameters.json", "hub-sessions.json")
COMMUNITIES = load_communities(DEFAULT_COMMUNITIES_PATH).communities
LOCALCLOUD_FILE = REPO / ".localcloud" / "communities.yaml"
if LOCALCLOUD_FILE.exists():  # written by `python -m localcloud serve`; optional here
    COMMUNITIES = COMMUNITIES + load_communities(LOCALCLOUD_FILE).communities

HUB_TEMPLATE = sources.load_template("hub")
COMMUNITY_TEMPLATE = sources.load_template("community")
NETWORK_TEMPLATE = sources.load_template("network")
HUB_ID = HUB_TEMPLATE["Parameters"]["HubId"]["Default"]
PARAMETER_PREFIX = HUB_TEMPLATE["Parameters"]["ParameterPrefix"]["Default"]
VPC_ID = "vpc-0feedc0ffee000001"  # the network stack's VpcId, as the hub stack imports it


def _arn_parts(community: Community) -> tuple[str, str, str]:
    """Partition, region and account of the community (those of its instance profile)."""
    _, partition, _, _, account, _ = community.instance_profile_arn.split(":", 5)
    return partition, community.region, account


def _values(community: Community) -> dict[str, str]:
    partition, region, account = _arn_parts(community)
    key = f"arn:{partition}:kms:{region}:{account}:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    return {
        **sources.EXAMPLE_VALUES,
        "AWS::Partition": partition,
        "AWS::Region": region,
        "AWS::AccountId": account,
        "HubId": HUB_ID,
        "ParameterPrefix": PARAMETER_PREFIX,
        "VpcId": VPC_ID,
        "ParameterKey.Arn": key,
        "ParameterKeyArn": key,
    }


def _hub_policies(community: Community) -> list[dict[str, Any]]:
    return [sources.rendered_policy(name, _values(community)) for name in HUB_POLICY_FILES]


def _cases() -> list[Any]:
    cases = []
    for community in COMMUNITIES:
        for image in community.images:
            for server in ("", "gpu-work"):
                cases.append(
                    pytest.param(
                        community,
                        image.id,
                        server,
                        id=f"{community.id}-{image.id}-{server or 'default'}",
                    )
                )
    return cases


def _identity(server: str) -> launch.ServerIdentity:
    return launch.ServerIdentity(
        hub_id=HUB_ID,
        user="alice",
        server=server,
        synapse_userid="3412345",
        synapse_user_name="alice.smith",
        email="alice@example.org",
    )


def _request(community: Community, image_id: str, server: str) -> dict[str, Any]:
    identity = _identity(server)
    options = SpawnOptions(community.id, image_id, community.default_instance_type, 50)
    params = ServerParameters.for_server("/" + PARAMETER_PREFIX, HUB_ID, "alice", server)
    return launch.run_instances_request(
        community,
        identity,
        options,
        subnet=launch.subnet_order(community, identity)[0],
        client_token=launch.client_token(identity, "launch-1"),
        user_data=render_user_data(BootstrapConfig(params.path, community.region)),
    )


def _tag_context(tags: list[dict[str, str]]) -> dict[str, Any]:
    """aws:RequestTag/<key> per tag and aws:TagKeys: the tag keys of a create request."""
    return {
        **{f"aws:RequestTag/{t['Key']}": t["Value"] for t in tags},
        "aws:TagKeys": [t["Key"] for t in tags],
    }


def run_instances_questions(request: dict[str, Any], community: Community) -> list[Request]:
    """The authorisation questions of one RunInstances request (Service Authorization
    Reference, Amazon EC2: RunInstances' resource types and their condition keys; EC2 User
    Guide, "Grant permission to tag resources during creation")."""
    partition, region, account = _arn_parts(community)
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    vpc = {"ec2:Vpc": f"{ec2}:vpc/{VPC_ID}"}
    specs = {s["ResourceType"]: s["Tags"] for s in request["TagSpecifications"]}
    questions = [
        Request(
            "ec2:RunInstances",
            f"{ec2}:instance/*",
            {
                **_tag_context(specs["instance"]),
                "ec2:MetadataHttpTokens": request["MetadataOptions"]["HttpTokens"],
                "ec2:InstanceProfile": request["IamInstanceProfile"]["Arn"],
                "ec2:InstanceType": request["InstanceType"],
            },
        ),
        Request("ec2:RunInstances", f"{ec2}:subnet/{request['SubnetId']}", vpc),
        Request(
            "ec2:RunInstances",
            f"{ec2}:network-interface/*",
            {**vpc, "ec2:Subnet": f"{ec2}:subnet/{request['SubnetId']}"},
        ),
        Request("ec2:RunInstances", f"arn:{partition}:ec2:{region}::image/{request['ImageId']}"),
    ]
    questions += [
        Request("ec2:RunInstances", f"{ec2}:security-group/{group}", vpc)
        for group in request["SecurityGroupIds"]
    ]
    for mapping in request["BlockDeviceMappings"]:
        ebs = mapping["Ebs"]
        questions.append(
            Request(
                "ec2:RunInstances",
                f"{ec2}:volume/*",
                {
                    **_tag_context(specs["volume"]),
                    "ec2:Encrypted": ebs["Encrypted"],
                    "ec2:VolumeSize": str(ebs["VolumeSize"]),
                    "ec2:VolumeType": ebs["VolumeType"],
                },
            )
        )
    for kind in ("instance", "volume"):
        questions.append(
            Request(
                "ec2:CreateTags",
                f"{ec2}:{kind}/*",
                {**_tag_context(specs[kind]), "ec2:CreateAction": "RunInstances"},
            )
        )
    return questions


def _denied(policies: list[dict[str, Any]], questions: list[Request]) -> list[str]:
    return [
        f"{q.action} on {q.resource} (statements applying: {matching_sids(policies, q)})"
        for q in questions
        if not is_allowed(policies, q)
    ]


@pytest.mark.parametrize(("community", "image_id", "server"), _cases())
def test_every_resource_of_the_launch_request_is_allowed(
    community: Community, image_id: str, server: str
) -> None:
    request = _request(community, image_id, server)
    policies = _hub_policies(community)
    assert not _denied(policies, run_instances_questions(request, community))


@pytest.mark.parametrize(("community", "image_id", "server"), _cases())
def test_the_launch_request_without_the_hub_tag_is_refused(
    community: Community, image_id: str, server: str
) -> None:
    """The converse: the same request with the hub tag dropped from either spec fails."""
    request = _request(community, image_id, server)
    for spec in request["TagSpecifications"]:
        spec["Tags"] = [t for t in spec["Tags"] if t["Key"] != naming.TAG_HUB]
    denied = _denied(_hub_policies(community), run_instances_questions(request, community))
    assert any("instance/*" in d for d in denied) and any("volume/*" in d for d in denied)


def _notebook_role_arn(community: Community) -> str:
    """The role the community stack puts in the community's profile: path /<HubId>/notebooks/
    (the name is CloudFormation's, unique per stack)."""
    partition, _, account = _arn_parts(community)
    path = COMMUNITY_TEMPLATE["Resources"]["NotebookRole"]["Properties"]["Path"]["Fn::Sub"]
    path = path.replace("${HubId}", HUB_ID)
    return f"arn:{partition}:iam::{account}:role{path}{community.id}-NotebookRole-0A1B2C3D"


@pytest.mark.parametrize("community", COMMUNITIES, ids=lambda c: c.id)
def test_the_instance_profile_is_the_community_stacks_and_its_role_may_be_passed(
    community: Community,
) -> None:
    """EC2 User Guide, "IAM roles for Amazon EC2": launching with a profile needs
    iam:PassRole on its role."""
    name = COMMUNITY_TEMPLATE["Resources"]["NotebookInstanceProfile"]["Properties"][
        "InstanceProfileName"
    ]["Fn::If"][1]["Fn::Sub"].replace("${CommunityId}", community.id)
    assert community.instance_profile_arn.endswith(f":instance-profile/{name}"), (
        f"{community.id}: deploy community.yaml with InstanceProfileName "
        f"{community.instance_profile_arn.rpartition('/')[2]!r}, or use its default name {name!r}"
    )
    question = Request(
        "iam:PassRole",
        _notebook_role_arn(community),
        {"iam:PassedToService": "ec2.amazonaws.com"},
    )
    assert evaluate(_hub_policies(community), question).value == "Allow"


def test_security_groups_and_subnets_come_from_the_network_stack() -> None:
    """A community's ``security_groups`` is the network stack's NotebookSecurityGroupId
    output and its ``subnets`` the NotebookSubnetIds output (README of the directory): that
    group has no inbound rule, and the subnets are the private ones."""
    resources = NETWORK_TEMPLATE["Resources"]
    outputs = NETWORK_TEMPLATE["Outputs"]
    assert outputs["NotebookSecurityGroupId"]["Value"] == {"Ref": "NotebookSecurityGroup"}
    group = resources["NotebookSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in group
    ingress_to_notebooks = [
        logical
        for logical, r in resources.items()
        if r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == {"Ref": "NotebookSecurityGroup"}
    ]
    assert not ingress_to_notebooks
    joined = outputs["NotebookSubnetIds"]["Value"]["Fn::Join"][1]
    assert joined == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    # The hub API port is the only way from notebooks into the hub.
    hub_ingress = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == {"Ref": "HubSecurityGroup"}
    ]
    assert hub_ingress == [
        {
            "Description": hub_ingress[0]["Description"],
            "GroupId": {"Ref": "HubSecurityGroup"},
            "IpProtocol": "tcp",
            "FromPort": {"Ref": "HubApiPort"},
            "ToPort": {"Ref": "HubApiPort"},
            "SourceSecurityGroupId": {"Ref": "NotebookSecurityGroup"},
        }
    ]


def test_the_network_has_the_endpoints_an_instance_without_internet_needs() -> None:
    services = {
        r["Properties"]["ServiceName"]["Fn::Sub"].rpartition(".")[2]
        if "ecr" not in r["Properties"]["ServiceName"]["Fn::Sub"]
        else r["Properties"]["ServiceName"]["Fn::Sub"].split("}.", 1)[1]
        for r in NETWORK_TEMPLATE["Resources"].values()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
    }
    assert {"ssm", "ssmmessages", "ec2messages", "ec2", "kms", "logs"} <= services


def test_the_spawners_defaults_are_the_templates_defaults() -> None:
    """Deployed with its defaults, the hub stack fits a hub left at its defaults."""
    traits = EC2Spawner.class_traits()
    assert traits["parameter_prefix"].default_value == "/" + PARAMETER_PREFIX
    assert traits["hub_id"].default_value == HUB_ID


@pytest.mark.parametrize("community", COMMUNITIES, ids=lambda c: c.id)
@pytest.mark.parametrize("server", ["", "gpu-work"])
def test_parameters_are_under_the_hub_path_and_readable_by_their_instance_only(
    community: Community, server: str
) -> None:
    partition, region, account = _arn_parts(community)
    hub_policies = _hub_policies(community)
    instance_policy = [sources.rendered_policy("notebook-instance.json", _values(community))]
    params = ServerParameters.for_server(
        traits_prefix := EC2Spawner.class_traits()["parameter_prefix"].default_value,
        HUB_ID,
        "alice",
        server,
    )
    assert traits_prefix == "/" + PARAMETER_PREFIX
    # The instance ARN exactly as the spawner writes it into the tag.
    own = EC2Spawner._instance_arn(SimpleNamespace(instance_id="i-0a11ce00000000000"), community)
    other = EC2Spawner._instance_arn(SimpleNamespace(instance_id="i-0b0b0000000000000"), community)
    assert own == f"arn:{partition}:ec2:{region}:{account}:instance/i-0a11ce00000000000"
    for name in params.names:
        arn = f"arn:{partition}:ssm:{region}:{account}:parameter{name}"
        for action in ("ssm:PutParameter", "ssm:DeleteParameters", "ssm:GetParameters"):
            assert is_allowed(hub_policies, Request(action, arn)), (action, name)
        assert is_allowed(
            hub_policies,
            Request("ssm:AddTagsToResource", arn, {"aws:TagKeys": [INSTANCE_ARN_TAG]}),
        )
        tag = {f"aws:ResourceTag/{INSTANCE_ARN_TAG}": own}
        assert is_allowed(
            instance_policy, Request("ssm:GetParameter", arn, {**tag, "ec2:SourceInstanceARN": own})
        )
        assert not is_allowed(
            instance_policy,
            Request("ssm:GetParameter", arn, {**tag, "ec2:SourceInstanceARN": other}),
        )


def test_the_instance_policy_keys_on_the_spawners_tag() -> None:
    policy = sources.load_policy("notebook-instance.json")
    keys = {
        key
        for statement in policy["Statement"]
        for block in statement.get("Condition", {}).values()
        for key in block
    }
    assert f"aws:ResourceTag/{INSTANCE_ARN_TAG}" in keys


@pytest.mark.parametrize("community", COMMUNITIES, ids=lambda c: c.id)
def test_the_tunnels_session_document_is_the_allowed_one(community: Community) -> None:
    partition, region, account = _arn_parts(community)
    policies = _hub_policies(community)
    assert DEFAULT_DOCUMENT == "AWS-StartPortForwardingSession"
    document = f"arn:{partition}:ssm:{region}::document/{DEFAULT_DOCUMENT}"
    assert is_allowed(policies, Request("ssm:StartSession", document))
    target = f"arn:{partition}:ec2:{region}:{account}:instance/i-0a11ce00000000000"
    tags = {f"ssm:resourceTag/{naming.TAG_HUB}": HUB_ID, "ssm:SessionDocumentAccessCheck": True}
    assert is_allowed(policies, Request("ssm:StartSession", target, tags))


@pytest.mark.parametrize(("community", "image_id", "server"), _cases()[:2])
def test_the_reapers_snapshot_and_tags_are_allowed(
    community: Community, image_id: str, server: str
) -> None:
    """CreateSnapshot of the home volume with the instance's tags (removal.snapshot_tags),
    the volume mark before a deferred delete, and the image switch's retag."""
    partition, region, account = _arn_parts(community)
    request = _request(community, image_id, server)
    tags = request["TagSpecifications"][0]["Tags"]
    view = InstanceView.from_api(
        {"InstanceId": "i-0a11ce00000000000", "State": {"Name": "stopped"}, "Tags": tags}
    )
    snapshot_tags = removal.snapshot_tags(view)
    policies = _hub_policies(community)
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    volume_tags = {f"aws:ResourceTag/{t['Key']}": t["Value"] for t in tags}
    questions = [
        Request("ec2:CreateSnapshot", f"{ec2}:volume/vol-1", volume_tags),
        Request(
            "ec2:CreateSnapshot",
            f"arn:{partition}:ec2:{region}::snapshot/*",
            _tag_context(snapshot_tags),
        ),
        Request(
            "ec2:CreateTags",
            f"arn:{partition}:ec2:{region}::snapshot/*",
            {**_tag_context(snapshot_tags), "ec2:CreateAction": "CreateSnapshot"},
        ),
        Request(
            "ec2:CreateTags",
            f"{ec2}:volume/vol-1",
            {
                **volume_tags,
                **_tag_context(
                    [
                        {"Key": naming.TAG_DELETE_AFTER_SNAPSHOT, "Value": "snap-1"},
                        {"Key": naming.TAG_HUB, "Value": HUB_ID},
                    ]
                ),
            },
        ),
        Request(
            "ec2:CreateTags",
            f"{ec2}:volume/vol-1",
            {
                **volume_tags,
                **_tag_context(
                    [{"Key": naming.TAG_DELETE_AFTER_SNAPSHOT, "Value": "failed:snap-1"}]
                ),
            },
        ),
        Request(
            "ec2:CreateTags",
            f"{ec2}:instance/i-0a11ce00000000000",
            {
                **volume_tags,
                **_tag_context([{"Key": naming.TAG_IMAGE, "Value": "rstudio"}]),
            },
        ),
        Request("ec2:DeleteVolume", f"{ec2}:volume/vol-1", volume_tags),
        Request("ec2:ModifyInstanceAttribute", f"{ec2}:instance/i-0a11ce00000000000", volume_tags),
        Request("ec2:TerminateInstances", f"{ec2}:instance/i-0a11ce00000000000", volume_tags),
    ]
    assert not _denied(policies, questions)


# aws.call("ec2", "x"), aws.paginate(...) and the spawner's _capacity_call(aws, "ec2", "x")
_CALL = re.compile(r'(?:\b|_)(?:call|paginate)\(\s*(?:aws,\s*)?"(\w+)",\s*"(\w+)"', re.S)
_SSM_METHOD = re.compile(r"self\._ssm\.(\w+)")


def _hub_operations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (REPO / "spawner").rglob("*.py"):
        text = path.read_text()
        found |= set(_CALL.findall(text))
        found |= {("ssm", op) for op in _SSM_METHOD.findall(text)}
    return found


def test_every_aws_operation_of_the_hub_has_a_statement() -> None:
    """Each boto3 operation in spawner/ (``aws.call``/``aws.paginate`` and the tunnel's SSM
    client) maps to an IAM action some hub statement names; a new call without a
    permission fails here."""
    operations = _hub_operations()
    assert ("ec2", "run_instances") in operations and ("ssm", "start_session") in operations
    session = botocore.session.get_session()
    policies = [sources.load_policy(n) for n in HUB_POLICY_FILES]
    named = {
        action.casefold()
        for p in policies
        for s in p["Statement"]
        if s["Effect"] == "Allow"
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    missing = []
    for service, op in sorted(operations):
        model = session.get_service_model(service)
        api = {xform_name(name): name for name in model.operation_names}.get(op)
        assert api, f"{service}.{op} is not a boto3 operation"
        if f"{service}:{api}".casefold() not in named:
            missing.append(f"{service}:{api}")
    assert not missing, f"hub operations without a permission: {missing}"
