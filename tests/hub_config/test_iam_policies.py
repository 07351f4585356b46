"""The IAM policies' key promises, evaluated with `hub_config.infrastructure.policy_eval`.

Which evaluator and what it proves: a small evaluator of identity-based policies written
from the IAM User Guide ("Policy evaluation logic", "IAM JSON policy elements: Condition
operators", "IAM policy elements: Variables and tags"); moto does not enforce IAM, so it
could not answer these questions. Each test builds the request context AWS documents for
the call (which keys, which values: named in the test) and asks for the decision. A pass
proves that the policy *text* grants and refuses what we claim under the documented rules:
e.g. no statement lets the hub terminate an instance without its ``jupyterhub:hub`` tag, tag
one after the fact, or pass its own role; and an instance role's ``Deny`` shuts it out of
another server's parameters even beside ``AmazonSSMManagedInstanceCore``'s ``Allow``.

What it does not prove: that AWS puts exactly these keys in the request (that is the
documentation's claim, cited in each test), key policies, SCPs, permission boundaries, or
anything about the other operators the evaluator does not implement. It is not AWS; the
first real deployment should still try the denied cases (README.md of the directory).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub_config.infrastructure import sources
from hub_config.infrastructure.policy_eval import Decision, Request, evaluate, is_allowed

V = sources.EXAMPLE_VALUES
ACCOUNT = V["AWS::AccountId"]
REGION = V["AWS::Region"]
HUB = V["HubId"]
PREFIX = V["ParameterPrefix"]
KEY = V["ParameterKeyArn"]
VPC_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/{V['VpcId']}"

#: Everything attached to the hub's role: hub.yaml's four policies and hub-host.yaml's two
#: (the database secret's with its optional parameter set), so each promise below must hold
#: with all of them together.
HUB_POLICY_FILES = (
    "hub-ec2.json",
    "hub-parameters.json",
    "hub-sessions.json",
    "hub-ssm-agent.json",
    "hub-secrets.json",
    "hub-database-secret.json",
)
HUB_POLICIES = [sources.rendered_policy(n) for n in HUB_POLICY_FILES]
INSTANCE_POLICY = sources.rendered_policy("notebook-instance.json")
#: The statement of the AWS managed policy AmazonSSMManagedInstanceCore that touches
#: parameters (the policy also grants ssmmessages:* and ec2messages:* for the agent): it
#: allows ssm:GetParameter and ssm:GetParameters on every resource. Modelled here because it
#: is attached to every notebook role and is the reason for the instance policy's Deny.
SSM_MANAGED_INSTANCE_CORE = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:UpdateInstanceInformation"],
            "Resource": "*",
        }
    ],
}
#: Everything a notebook role holds besides the community's own data-access policy (no
#: AmazonSSMManagedInstanceCore any more: its Allow on every parameter was the finding).
INSTANCE_POLICIES = [INSTANCE_POLICY]


def instance(instance_id: str = "i-0123456789abcdef0") -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"


def volume(volume_id: str = "vol-0123456789abcdef0") -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/{volume_id}"


def parameter(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{name.lstrip('/')}"


def hub(action: str, resource: str, **context: Any) -> Decision:
    return evaluate(HUB_POLICIES, Request(action, resource, _keys(context)))


def on_instance(action: str, resource: str, **context: Any) -> Decision:
    return evaluate(INSTANCE_POLICIES, Request(action, resource, _keys(context)))


def _keys(context: dict[str, Any]) -> dict[str, Any]:
    # keyword arguments cannot hold ':' or '/': tag__x and a__b spell them
    return {k.replace("__", ":").replace("_SLASH_", "/"): v for k, v in context.items()}


def tagged(hub_id: str | None) -> dict[str, str]:
    """The resource's tags as EC2 puts them in the context: aws:ResourceTag/<key>."""
    return {} if hub_id is None else {"aws:ResourceTag/jupyterhub:hub": hub_id}


def ctx(**items: Any) -> dict[str, Any]:
    return items


# ------------------------------------------------------------------------------------------
# The evaluator itself, on the documented rules it implements
# ------------------------------------------------------------------------------------------


def test_evaluator_explicit_deny_beats_allow_and_default_is_deny() -> None:
    """IAM User Guide, "Policy evaluation logic": explicit deny > allow > implicit deny."""
    allow = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    deny = {"Statement": [{"Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"}]}
    assert evaluate([allow, deny], Request("s3:DeleteObject", "arn:aws:s3:::b/k")) is (
        Decision.EXPLICIT_DENY
    )
    assert evaluate([allow, deny], Request("s3:GetObject", "arn:aws:s3:::b/k")) is Decision.ALLOW
    assert evaluate([deny], Request("s3:GetObject", "arn:aws:s3:::b/k")) is (Decision.IMPLICIT_DENY)


def test_evaluator_condition_rules() -> None:
    """IAM User Guide, "Condition operators": a missing key fails a positive operator,
    satisfies a negated one and an IfExists one; ForAllValues over no values holds; Null."""

    def decide(condition: dict[str, Any], context: dict[str, Any]) -> bool:
        policy = {
            "Statement": [
                {"Effect": "Allow", "Action": "x:Y", "Resource": "*", "Condition": condition}
            ]
        }
        return is_allowed([policy], Request("x:Y", "arn:aws:x:::r", context))

    assert not decide({"StringEquals": {"k": "v"}}, {})
    assert decide({"StringNotEquals": {"k": "v"}}, {})
    assert decide({"StringEqualsIfExists": {"k": "v"}}, {})
    assert not decide({"StringEqualsIfExists": {"k": "v"}}, {"k": "w"})
    assert decide({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, {"k": ["a"]})
    assert not decide({"ForAllValues:StringEquals": {"k": ["a", "b"]}}, {"k": ["a", "c"]})
    assert decide({"Null": {"k": "true"}}, {})
    assert decide({"StringLike": {"K": "a*"}}, {"k": "abc"})  # key names ignore case
    assert decide({"StringEquals": {"k": "${v}"}}, {"k": "x", "v": "x"})  # a variable
    assert not decide({"StringEquals": {"k": "${v}"}}, {"k": "x"})  # unresolved: no match
    assert decide({"StringNotEquals": {"k": "${v}"}}, {"k": "x"})


# ------------------------------------------------------------------------------------------
# The hub: only its own tagged instances
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:TerminateInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:GetConsoleOutput",
    ],
)
def test_hub_manages_only_instances_with_its_hub_tag(action: str) -> None:
    """EC2 puts the instance's tags in the request as aws:ResourceTag/<key> (EC2 User Guide,
    "Control access to EC2 resources using resource tags")."""
    assert hub(action, instance(), **tagged(HUB)) is Decision.ALLOW
    assert hub(action, instance(), **tagged("another-hub")) is Decision.IMPLICIT_DENY
    assert hub(action, instance(), **tagged(None)) is Decision.IMPLICIT_DENY


def launch_context(tags: dict[str, str], **extra: Any) -> dict[str, Any]:
    """RunInstances' context for the instance resource: aws:RequestTag/<key> and
    aws:TagKeys from TagSpecifications, ec2:MetadataHttpTokens from MetadataOptions (Service
    Authorization Reference, Amazon EC2, RunInstances)."""
    return {
        **{f"aws:RequestTag/{k}": v for k, v in tags.items()},
        "aws:TagKeys": list(tags),
        **extra,
    }


def test_hub_launches_only_instances_tagged_on_create_with_imdsv2() -> None:
    ours = launch_context({"jupyterhub:hub": HUB, "Name": "notebook-alice"})
    theirs = launch_context({"jupyterhub:hub": "another-hub"})
    untagged = launch_context({"Name": "notebook-alice"})
    ok = {"ec2:MetadataHttpTokens": "required"}
    assert hub("ec2:RunInstances", instance("*"), **ours, **ok) is Decision.ALLOW
    assert hub("ec2:RunInstances", instance("*"), **theirs, **ok) is Decision.IMPLICIT_DENY
    assert hub("ec2:RunInstances", instance("*"), **untagged, **ok) is Decision.IMPLICIT_DENY
    assert (
        hub("ec2:RunInstances", instance("*"), **ours, **{"ec2:MetadataHttpTokens": "optional"})
        is Decision.IMPLICIT_DENY
    )


def test_hub_volumes_are_tagged_on_create_and_encrypted() -> None:
    ours = launch_context({"jupyterhub:hub": HUB})
    assert hub("ec2:RunInstances", volume("*"), **ours, **{"ec2:Encrypted": True}) is (
        Decision.ALLOW
    )
    assert hub("ec2:RunInstances", volume("*"), **ours, **{"ec2:Encrypted": False}) is (
        Decision.IMPLICIT_DENY
    )
    assert hub("ec2:RunInstances", volume("*"), **{"ec2:Encrypted": True}) is (
        Decision.IMPLICIT_DENY
    )


def test_hub_tags_on_create_only_through_run_instances_and_create_snapshot() -> None:
    """EC2 User Guide, "Grant permission to tag resources during creation": CreateTags is
    authorised with ec2:CreateAction naming the creating call."""
    tags = launch_context({"jupyterhub:hub": HUB})
    for action in ("RunInstances", "CreateSnapshot"):
        assert hub("ec2:CreateTags", instance("*"), **tags, **{"ec2:CreateAction": action}) is (
            Decision.ALLOW
        )
    # A CreateTags call of its own on an instance that is not the hub's, to take it over:
    assert hub("ec2:CreateTags", instance(), **tags) is Decision.IMPLICIT_DENY
    assert hub("ec2:CreateTags", instance(), **tags, **tagged("another-hub")) is (
        Decision.IMPLICIT_DENY
    )


def test_hub_retags_own_resources_with_its_own_keys_only() -> None:
    """The image switch (jupyterhub:image) and the reaper's volume mark are allowed on the
    hub's own instances and volumes; other keys (e.g. the cost tags) and other resources
    are not."""
    image = launch_context({"jupyterhub:image": "rstudio"}, **tagged(HUB))
    assert hub("ec2:CreateTags", instance(), **image) is Decision.ALLOW
    mark = launch_context(
        {"jupyterhub:delete-after-snapshot": "snap-1", "jupyterhub:hub": HUB}, **tagged(HUB)
    )
    assert hub("ec2:CreateTags", volume(), **mark) is Decision.ALLOW
    rename = launch_context({"Name": "x"}, **tagged(HUB))
    assert hub("ec2:CreateTags", instance(), **rename) is Decision.IMPLICIT_DENY
    give_away = launch_context({"jupyterhub:hub": "another-hub"}, **tagged(HUB))
    assert hub("ec2:CreateTags", instance(), **give_away) is Decision.IMPLICIT_DENY
    assert hub("ec2:CreateTags", instance(), **launch_context({"jupyterhub:image": "x"})) is (
        Decision.IMPLICIT_DENY
    )


def test_hub_snapshots_and_deletes_only_its_own_volumes() -> None:
    snapshot = f"arn:aws:ec2:{REGION}::snapshot/*"
    assert hub("ec2:CreateSnapshot", volume(), **tagged(HUB)) is Decision.ALLOW
    assert hub("ec2:CreateSnapshot", volume(), **tagged("another-hub")) is Decision.IMPLICIT_DENY
    assert hub("ec2:CreateSnapshot", snapshot, **launch_context({"jupyterhub:hub": HUB})) is (
        Decision.ALLOW
    )
    assert hub("ec2:CreateSnapshot", snapshot) is Decision.IMPLICIT_DENY
    assert hub("ec2:DeleteVolume", volume(), **tagged(HUB)) is Decision.ALLOW
    assert hub("ec2:DeleteVolume", volume(), **tagged(None)) is Decision.IMPLICIT_DENY


def test_hub_launches_from_and_deletes_only_its_own_zone_move_snapshots() -> None:
    """A zone move (spawner/zone_move.py) launches from the hub's own snapshot and deletes
    it afterwards; a backup snapshot taken before a removal (no zone-move tag) may be the only
    copy of someone's files, and another hub's snapshots are not the hub's: both refused."""
    snapshot = f"arn:aws:ec2:{REGION}::snapshot/snap-0123456789abcdef0"
    move = {**tagged(HUB), "aws:ResourceTag/jupyterhub:zone-move": "us-east-1a"}
    assert hub("ec2:RunInstances", snapshot, **tagged(HUB)) is Decision.ALLOW
    assert hub("ec2:RunInstances", snapshot, **tagged("another-hub")) is Decision.IMPLICIT_DENY
    assert hub("ec2:DeleteSnapshot", snapshot, **move) is Decision.ALLOW
    assert hub("ec2:DeleteSnapshot", snapshot, **tagged(HUB)) is Decision.IMPLICIT_DENY
    other = {**tagged("another-hub"), "aws:ResourceTag/jupyterhub:zone-move": "us-east-1a"}
    assert hub("ec2:DeleteSnapshot", snapshot, **other) is Decision.IMPLICIT_DENY


def test_hub_launches_into_the_notebook_vpc_only() -> None:
    """Subnets, security groups and interfaces carry ec2:Vpc (Service Authorization
    Reference, Amazon EC2, RunInstances)."""
    for kind in ("subnet", "security-group", "network-interface"):
        arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/x-1"
        assert hub("ec2:RunInstances", arn, **{"ec2:Vpc": VPC_ARN}) is Decision.ALLOW
        other = VPC_ARN.rsplit("/", 1)[0] + "/vpc-other"
        assert hub("ec2:RunInstances", arn, **{"ec2:Vpc": other}) is Decision.IMPLICIT_DENY


def test_hub_passes_only_the_communities_notebook_roles_to_ec2() -> None:
    notebook_role = f"arn:aws:iam::{ACCOUNT}:role/{HUB}/notebooks/ad-portal-NotebookRole-X1"
    to_ec2 = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert hub("iam:PassRole", notebook_role, **to_ec2) is Decision.ALLOW
    assert hub(
        "iam:PassRole", notebook_role, **{"iam:PassedToService": "lambda.amazonaws.com"}
    ) is (Decision.IMPLICIT_DENY)
    for other in (
        f"arn:aws:iam::{ACCOUNT}:role/{HUB}-hub",  # its own role
        f"arn:aws:iam::{ACCOUNT}:role/another-hub/notebooks/x",
        f"arn:aws:iam::{ACCOUNT}:role/admin",
    ):
        assert hub("iam:PassRole", other, **to_ec2) is Decision.IMPLICIT_DENY, other


# ------------------------------------------------------------------------------------------
# The hub: sessions
# ------------------------------------------------------------------------------------------


def test_hub_starts_only_port_forwarding_sessions_to_its_own_instances() -> None:
    """StartSession is authorised on the target instance (its tags as ssm:resourceTag/<key>)
    and on the document (Session Manager guide, "Additional sample IAM policies for Session
    Manager"); with ssm:SessionDocumentAccessCheck the document is always checked."""
    own = {"ssm:resourceTag/jupyterhub:hub": HUB, "ssm:SessionDocumentAccessCheck": True}
    assert hub("ssm:StartSession", instance(), **own) is Decision.ALLOW
    assert hub("ssm:StartSession", instance(), **{"ssm:resourceTag/jupyterhub:hub": "x"}) is (
        Decision.IMPLICIT_DENY
    )
    assert hub("ssm:StartSession", instance()) is Decision.IMPLICIT_DENY
    document = f"arn:aws:ssm:{REGION}::document/"
    assert hub("ssm:StartSession", document + "AWS-StartPortForwardingSession") is Decision.ALLOW
    for other in (
        "SSM-SessionManagerRunShell",
        "AWS-StartSSHSession",
        "AWS-StartPortForwardingSessionToRemoteHost",
        "AWS-StartInteractiveCommand",
    ):
        assert hub("ssm:StartSession", document + other) is Decision.IMPLICIT_DENY, other


def test_hub_ends_only_its_own_sessions() -> None:
    session = f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/AROAEXAMPLE:i-0hub-0a1b2c3d"
    mine = {
        "aws:userid": "AROAEXAMPLE:i-0hub",
        "ssm:resourceTag/aws:ssmmessages:session-id": "AROAEXAMPLE:i-0hub-0a1b2c3d",
    }
    for action in ("ssm:TerminateSession", "ssm:ResumeSession"):
        assert hub(action, session, **mine) is Decision.ALLOW, action
        theirs = {**mine, "ssm:resourceTag/aws:ssmmessages:session-id": "alice-0a1b2c3d"}
        assert hub(action, session, **theirs) is Decision.IMPLICIT_DENY, action


def test_hub_opens_data_channels_of_its_own_sessions_only() -> None:
    """The official client signs the websocket upgrade of each StreamUrl, authorised as
    ``ssmmessages:OpenDataChannel`` on the session (AWS's example end-user policies grant it
    on ``arn:aws:ssm:*:*:session/${aws:userid}-*``): the hub's sessions policy lets it open
    its own sessions' channels (first open and every resume), not another principal's."""
    sessions_policy = [sources.rendered_policy("hub-sessions.json")]

    def sessions(action: str, resource: str, **context: Any) -> Decision:
        return evaluate(sessions_policy, Request(action, resource, _keys(context)))

    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/"
    me = {"aws:userid": "AROAEXAMPLE:i-0hub"}
    own = arn + "AROAEXAMPLE:i-0hub-0a1b2c3d4e5f67890"
    assert sessions("ssmmessages:OpenDataChannel", own, **me) is Decision.ALLOW
    assert hub("ssmmessages:OpenDataChannel", own, **me) is Decision.ALLOW
    for other in (
        "alice-0a1b2c3d4e5f67890",  # an IAM user's session
        "AROAOTHER:i-0hub-0a1b2c3d4e5f67890",  # another role's
        "AROAEXAMPLE:i-0hubx-0a1b2c3d",  # a role session whose name only starts like ours
    ):
        assert sessions("ssmmessages:OpenDataChannel", arn + other, **me) is (
            Decision.IMPLICIT_DENY
        ), other
    elsewhere = f"arn:aws:ssm:eu-west-1:{ACCOUNT}:session/AROAEXAMPLE:i-0hub-0a1b2c3d"
    assert sessions("ssmmessages:OpenDataChannel", elsewhere, **me) is Decision.IMPLICIT_DENY
    for action in ("ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel"):
        assert sessions(action, own, **me) is Decision.IMPLICIT_DENY, action


def test_another_principals_session_stays_closed_to_the_hub_role() -> None:
    """The hub host's role also carries its own SSM agent's permissions (operators' shells on
    the hub host), which AWS documents on "*", OpenDataChannel among them. A channel is
    opened with the session's token as well, and the only ways to a token are StartSession
    (to this hub's instances, with the port-forwarding document) and ResumeSession — which
    the role may call only on its own sessions. So another principal's session stays closed."""
    theirs = f"arn:aws:ssm:{REGION}:{ACCOUNT}:session/alice-0a1b2c3d4e5f67890"
    context = {
        "aws:userid": "AROAEXAMPLE:i-0hub",
        "ssm:resourceTag/aws:ssmmessages:session-id": "alice-0a1b2c3d4e5f67890",
    }
    for action in ("ssm:ResumeSession", "ssm:TerminateSession"):
        assert hub(action, theirs, **context) is Decision.IMPLICIT_DENY, action


# ------------------------------------------------------------------------------------------
# The hub: parameters
# ------------------------------------------------------------------------------------------


OWN_PARAMETER = parameter(f"/{PREFIX}/{HUB}/alice/_/synapse-token")


@pytest.mark.parametrize(
    "action", ["ssm:PutParameter", "ssm:DeleteParameters", "ssm:GetParameters"]
)
def test_hub_parameters_only_under_its_own_path(action: str) -> None:
    assert hub(action, OWN_PARAMETER) is Decision.ALLOW
    for other in (
        f"/{PREFIX}/another-hub/alice/_/synapse-token",
        f"/{PREFIX}/{HUB}-2/alice/_/synapse-token",  # a hub id that merely starts like ours
        f"/other/{HUB}/alice/_/synapse-token",
        "/synapse-token",
    ):
        assert hub(action, parameter(other)) is Decision.IMPLICIT_DENY, other


def test_hub_tags_parameters_with_the_instance_arn_only() -> None:
    arn_tag = {"aws:TagKeys": ["jupyterhub:instance-arn"]}
    assert hub("ssm:AddTagsToResource", OWN_PARAMETER, **arn_tag) is Decision.ALLOW
    other_key = {"aws:TagKeys": ["jupyterhub:instance-arn", "Owner"]}
    assert hub("ssm:AddTagsToResource", OWN_PARAMETER, **other_key) is Decision.IMPLICIT_DENY


def test_hub_encrypts_with_its_key_through_ssm_and_cannot_decrypt() -> None:
    """Parameter Store calls KMS for the hub with kms:ViaService ssm.<region>.amazonaws.com
    and the encryption context PARAMETER_ARN (Systems Manager guide, "How AWS Systems Manager
    Parameter Store uses AWS KMS")."""
    via = {
        "kms:ViaService": f"ssm.{REGION}.amazonaws.com",
        "kms:EncryptionContext:PARAMETER_ARN": OWN_PARAMETER,
    }
    assert hub("kms:Encrypt", KEY, **via) is Decision.ALLOW
    assert hub("kms:GenerateDataKey", KEY, **via) is Decision.ALLOW
    assert hub("kms:Encrypt", KEY, **{"kms:EncryptionContext:PARAMETER_ARN": OWN_PARAMETER}) is (
        Decision.IMPLICIT_DENY
    )
    elsewhere = {**via, "kms:EncryptionContext:PARAMETER_ARN": parameter("/other/x")}
    assert hub("kms:Encrypt", KEY, **elsewhere) is Decision.IMPLICIT_DENY
    assert hub("kms:Decrypt", KEY, **via) is Decision.IMPLICIT_DENY


# ------------------------------------------------------------------------------------------
# A notebook instance: its own server's parameters only
# ------------------------------------------------------------------------------------------


ALICE = instance("i-0a11ce00000000000")
BOB = instance("i-0b0b0000000000000")


def instance_reads(
    instance_arn: str,
    parameter_tag: str | None,
    name: str = OWN_PARAMETER,
    action: str = "ssm:GetParameter",
) -> Decision:
    """ec2:SourceInstanceARN: the instance's ARN, present whenever the request is signed
    with the instance role's credentials (IAM User Guide, "AWS global condition context
    keys"); the parameter's tags as aws:ResourceTag/<key> (Service Authorization Reference,
    AWS Systems Manager, GetParameter)."""
    context: dict[str, Any] = {"ec2:SourceInstanceARN": instance_arn}
    if parameter_tag is not None:
        context["aws:ResourceTag/jupyterhub:instance-arn"] = parameter_tag
    return on_instance(action, name, **context)


@pytest.mark.parametrize("action", ["ssm:GetParameter", "ssm:GetParameters"])
def test_instance_reads_its_own_servers_parameter(action: str) -> None:
    assert instance_reads(ALICE, ALICE, action=action) is Decision.ALLOW


@pytest.mark.parametrize(
    "action",
    ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"],
)
def test_instance_cannot_read_another_servers_parameter(action: str) -> None:
    """Explicit Deny, which would hold even beside an Allow on every parameter (such as
    AmazonSSMManagedInstanceCore's, which the role no longer has)."""
    assert instance_reads(BOB, ALICE, action=action) is Decision.EXPLICIT_DENY


def test_instance_cannot_read_an_untagged_parameter() -> None:
    """Between PutParameter and AddTagsToResource (the bootstrap waits for the tag)."""
    assert instance_reads(ALICE, None) is Decision.EXPLICIT_DENY


def test_instance_cannot_read_another_hubs_parameters_of_the_same_prefix() -> None:
    other_hub = parameter(f"/{PREFIX}/another-hub/alice/_/synapse-token")
    # The Allow is this hub's path only; the Deny covers the whole prefix.
    assert instance_reads(ALICE, BOB, name=other_hub) is Decision.EXPLICIT_DENY


def test_instance_decrypts_only_through_ssm_for_its_hubs_parameters() -> None:
    """KMS cannot tell one server from another (the parameter ARN is the only context):
    the per-server line is the GetParameter check above, which SSM makes before it asks KMS
    to decrypt."""
    via = {
        "kms:ViaService": f"ssm.{REGION}.amazonaws.com",
        "kms:EncryptionContext:PARAMETER_ARN": OWN_PARAMETER,
    }
    assert on_instance("kms:Decrypt", KEY, **via) is Decision.ALLOW
    direct = {"kms:EncryptionContext:PARAMETER_ARN": OWN_PARAMETER}
    assert on_instance("kms:Decrypt", KEY, **direct) is Decision.IMPLICIT_DENY
    other = {**via, "kms:EncryptionContext:PARAMETER_ARN": parameter("/x/other-hub/a/_/t")}
    assert on_instance("kms:Decrypt", KEY, **other) is Decision.IMPLICIT_DENY


def test_instance_cannot_write_parameters_or_start_sessions() -> None:
    assert on_instance("ssm:PutParameter", OWN_PARAMETER) is Decision.IMPLICIT_DENY
    assert on_instance("ssm:StartSession", ALICE) is Decision.IMPLICIT_DENY
    assert on_instance("ec2:TerminateInstances", ALICE) is Decision.IMPLICIT_DENY


# ------------------------------------------------------------------------------------------
# The hub's own host: a Session Manager shell for operators, its secrets
# ------------------------------------------------------------------------------------------


HUB_HOST = instance("i-0fee0000000000001")
OWN_SECRETS = (
    V["SynapseClientSecret"],
    V["CryptKeySecret"],
    V["DatabaseUrlSecretArn"],
)


def test_hub_policy_files_are_all_the_hub_roles() -> None:
    """HUB_POLICIES is what the templates attach to the hub's role, no more, no less."""
    attached = set()
    for name in ("hub", "hub-host"):
        resources = sources.load_template(name)["Resources"]
        hub_role = resources.get("HubRole", {}).get("Properties", {})
        listed_by_the_role = json.dumps(hub_role.get("ManagedPolicyArns", []))
        for logical_id, source, _ in sources.template_policies({"Resources": resources}):
            attached_to = json.dumps(resources[logical_id]["Properties"].get("Roles", []))
            if f'"{logical_id}"' in listed_by_the_role or "-HubRoleName" in attached_to:
                attached.add(source)
    assert attached == set(HUB_POLICY_FILES)


def test_hub_host_agent_registers_and_opens_session_channels() -> None:
    """The Session Manager guide's instance permissions ("Step 2: Verify or add instance
    permissions for Session Manager"): ssm:UpdateInstanceInformation and the four
    ssmmessages channel actions; ec2messages for the agent's message polling."""
    from_host = {"ec2:SourceInstanceARN": HUB_HOST}
    assert hub("ssm:UpdateInstanceInformation", HUB_HOST, **from_host) is Decision.ALLOW
    for action in (
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "ec2messages:GetMessages",
        "ec2messages:AcknowledgeMessage",
        "ec2messages:SendReply",
    ):
        assert hub(action, "*", **from_host) is Decision.ALLOW, action


@pytest.mark.parametrize(
    "action",
    ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"],
)
def test_hub_agent_permissions_read_no_parameter(action: str) -> None:
    """Unlike AmazonSSMManagedInstanceCore (modelled above), whose Allow on every parameter
    would let the hub read any parameter of the account, the agent's statements add none:
    the hub still reads no other hub's parameter and nothing outside its path, and only
    checks the existence of its own (GetParameters, without decryption, below)."""
    others = (
        f"/{PREFIX}/another-hub/alice/_/synapse-token",
        f"/other/{HUB}/alice/_/synapse-token",
        "/aws/reference/secretsmanager/anything",
        "/database/password",
    )
    for name in others:
        assert is_allowed([SSM_MANAGED_INSTANCE_CORE], Request(action, parameter(name))) is (
            action in ("ssm:GetParameter", "ssm:GetParameters")
        )
        assert hub(action, parameter(name)) is Decision.IMPLICIT_DENY, name
    own = hub(action, OWN_PARAMETER)
    assert own is (Decision.ALLOW if action == "ssm:GetParameters" else Decision.IMPLICIT_DENY)


def test_hub_still_cannot_decrypt_any_parameter() -> None:
    """A SecureString's value needs kms:Decrypt of the caller through SSM ("How AWS Systems
    Manager Parameter Store uses AWS KMS"): the hub's role has it for no key and no
    parameter, its own servers' included."""
    for name in (OWN_PARAMETER, parameter(f"/{PREFIX}/another-hub/bob/_/synapse-token")):
        via = {
            "kms:ViaService": f"ssm.{REGION}.amazonaws.com",
            "kms:EncryptionContext:PARAMETER_ARN": name,
        }
        assert hub("kms:Decrypt", KEY, **via) is Decision.IMPLICIT_DENY
        assert hub("kms:Decrypt", "*", **via) is Decision.IMPLICIT_DENY


def test_hub_agent_permissions_open_no_session_and_run_no_command() -> None:
    """The agent's channel actions are the receiving end; opening a shell on an instance
    (StartSession with the shell document) or running a command stays out of reach."""
    shell = f"arn:aws:ssm:{REGION}::document/SSM-SessionManagerRunShell"
    assert hub("ssm:StartSession", shell) is Decision.IMPLICIT_DENY
    assert hub("ssm:SendCommand", HUB_HOST) is Decision.IMPLICIT_DENY
    assert hub("ssm:SendCommand", f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript") is (
        Decision.IMPLICIT_DENY
    )


def test_hub_reads_exactly_its_own_secrets() -> None:
    """GetSecretValue is authorised on the secret's ARN (Service Authorization Reference,
    AWS Secrets Manager); hub-host.yaml names the hub's two secrets (and the database URL's,
    when given) by their full ARNs, random suffix included."""
    for secret in OWN_SECRETS:
        assert hub("secretsmanager:GetSecretValue", secret) is Decision.ALLOW, secret
    client = V["SynapseClientSecret"]
    for other in (
        client[:-6] + "ZzZzZz",  # a later secret of the same name: another ARN
        client.replace(ACCOUNT, "210987654321"),
        client.replace(REGION, "eu-west-1"),
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds-master-password-AbCdEf",
        "*",
    ):
        assert hub("secretsmanager:GetSecretValue", other) is Decision.IMPLICIT_DENY, other
    for action in (
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecret",
        "secretsmanager:DeleteSecret",
        "secretsmanager:DescribeSecret",
        "secretsmanager:ListSecrets",
        "secretsmanager:GetResourcePolicy",
    ):
        assert hub(action, client) is Decision.IMPLICIT_DENY, action


def test_notebook_instances_cannot_read_the_hubs_secrets() -> None:
    for secret in OWN_SECRETS:
        assert on_instance("secretsmanager:GetSecretValue", secret) is Decision.IMPLICIT_DENY


def test_the_notebook_role_keeps_what_its_ssm_agent_needs() -> None:
    """Session Manager guide, "Step 2: Verify or add instance permissions for Session
    Manager": registration and the four ssmmessages channel actions (and ec2messages)."""
    for action in (
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "ec2messages:GetMessages",
    ):
        assert on_instance(action, "*") is Decision.ALLOW, action
    for action in ("ssm:SendCommand", "ssm:StartSession", "ssm:PutParameter"):
        assert on_instance(action, "*") is Decision.IMPLICIT_DENY, action
