"""Attacks from inside a notebook, with the instance role every member of a community holds.

Whatever the community's instance role may do, every member may do from a notebook: the
container reaches the role through IMDSv2 (hop limit 2) on purpose, so that ``synapseclient``
can read the user's token. The attacks below are decided by the project's policy evaluator
(``hub_config.infrastructure.policy_eval``, written from the IAM User Guide's "Policy
evaluation logic") over the role's policy file, the one the community stack attaches
(``tests/hub_config/test_infrastructure_lint.py`` holds file and template to the same
text). Each test first shows the attack succeeding against the role as it was, then refused
as it is.
"""

from __future__ import annotations

from typing import Any

import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.infrastructure import sources
from hub_config.infrastructure.policy_eval import Decision, Request, evaluate
from spawner.bootstrap import BootstrapConfig, render_user_data
from spawner.launch import ServerIdentity, client_token, run_instances_request
from spawner.options import SpawnOptions

V = sources.EXAMPLE_VALUES
REGION, ACCOUNT = V["AWS::Region"], V["AWS::AccountId"]
PREFIX, HUB = V["ParameterPrefix"], V["HubId"]
ROLE = sources.rendered_policy("notebook-instance.json")
ALICE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0a11ce00000000000"
BOB = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0b0b0000000000000"

#: The statement the role had until this review: the bootstrap asked EC2 for its own home
#: volume's id, and the permission (which supports no resource-level condition) let every
#: notebook list every instance of the account with its tags.
FIND_THE_HOME_VOLUME = {
    "Sid": "FindTheHomeVolume",
    "Effect": "Allow",
    "Action": "ec2:DescribeInstances",
    "Resource": "*",
}
#: AmazonSSMManagedInstanceCore's statement on parameters (Allow GetParameter(s) on ``*``),
#: attached to the role until this review.
MANAGED_INSTANCE_CORE = {
    "Effect": "Allow",
    "Action": ["ssm:GetParameter", "ssm:GetParameters"],
    "Resource": "*",
}


def _with(*statements: dict[str, Any]) -> list[dict[str, Any]]:
    return [ROLE, {"Version": "2012-10-17", "Statement": list(statements)}]


def _from_alice(action: str, resource: str, **context: Any) -> Request:
    """ec2:SourceInstanceARN is present on every request signed with an instance role's
    credentials (IAM User Guide, "AWS global condition context keys")."""
    return Request(action, resource, {"ec2:SourceInstanceARN": ALICE, **context})


@pytest.mark.parametrize(
    "action",
    [
        "ec2:DescribeInstances",
        "ec2:DescribeTags",
        "ec2:DescribeVolumes",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstanceAttribute",
    ],
)
def test_a_notebook_cannot_list_other_users_instances_or_their_tags(action: str) -> None:
    """Trust review, finding 3: ``DescribeInstances`` on ``*`` showed every notebook the
    ``synapse:email`` and ``synapse:userName`` tags of every user's instance. The bootstrap
    now reads its home volume's attachment name from the NVMe controller, and the role has
    no ``ec2:Describe*`` at all (tags are not in the instance metadata either: below)."""
    if action == "ec2:DescribeInstances":
        before = evaluate(_with(FIND_THE_HOME_VOLUME), _from_alice(action, "*"))
        assert before is Decision.ALLOW  # the attack, as it was
    for resource in ("*", BOB):
        assert evaluate([ROLE], _from_alice(action, resource)) is Decision.IMPLICIT_DENY


def test_no_statement_of_the_role_grants_any_ec2_action() -> None:
    """Not even a harmless-looking one: any ec2 read would list what other users run."""
    for statement in ROLE["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        assert not any(a.lower().startswith("ec2:") for a in actions), statement["Sid"]


def test_tags_do_not_reach_the_notebook_through_the_instance_metadata() -> None:
    """The other way a notebook could read its (only its own) tags: IMDS ``tags/instance``,
    off unless ``InstanceMetadataTags`` is enabled at launch."""
    communities = load_communities(DEFAULT_COMMUNITIES_PATH).communities
    community = communities[0]
    identity = ServerIdentity("hub-prod", "alice", "", "3412345", "alice.smith", "a@example.org")
    options = SpawnOptions(
        community.id, community.default_image, community.default_instance_type, 20
    )
    request = run_instances_request(
        community,
        identity,
        options,
        subnet=community.subnets[0],
        client_token=client_token(identity, "launch-1"),
        user_data=render_user_data(BootstrapConfig("/notebook-hub/hub-prod/alice/_", REGION)),
    )
    assert request["MetadataOptions"]["InstanceMetadataTags"] == "disabled"
    assert "a@example.org" not in request["UserData"]


@pytest.mark.parametrize(
    "name", ["/prod/database-password", "/aws/reference/secretsmanager/db", "/other-app/key"]
)
def test_a_notebook_reads_no_other_parameter_of_the_account(name: str) -> None:
    """Trust review, finding 3: with AmazonSSMManagedInstanceCore attached, a notebook read
    any parameter outside the hub's prefix (the role's explicit Deny covers the prefix only).
    The role now holds the agent's own permissions instead."""
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"
    tagged = {"aws:ResourceTag/jupyterhub:instance-arn": ALICE}
    before = evaluate(_with(MANAGED_INSTANCE_CORE), _from_alice("ssm:GetParameter", arn))
    assert before is Decision.ALLOW  # the attack, as it was
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"):
        assert evaluate([ROLE], _from_alice(action, arn)) is Decision.IMPLICIT_DENY
        # Not even if someone tags it with this instance's ARN: the Allow is the hub's path.
        assert evaluate([ROLE], _from_alice(action, arn, **tagged)) is Decision.IMPLICIT_DENY


def test_a_notebook_reads_another_users_server_parameters_never() -> None:
    """Bob's server's Synapse token parameter, from Alice's notebook: explicitly denied, so
    no other policy the community attaches (its data-access policy) can open it."""
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{PREFIX}/{HUB}/bob/_/synapse-token"
    bobs = {"aws:ResourceTag/jupyterhub:instance-arn": BOB}
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory"):
        decision = evaluate(_with(MANAGED_INSTANCE_CORE), _from_alice(action, arn, **bobs))
        assert decision is Decision.EXPLICIT_DENY
