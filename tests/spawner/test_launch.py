"""The RunInstances request: every community setting reaches it, in a shape botocore accepts."""

from __future__ import annotations

import copy
import dataclasses
import json
import unicodedata
from collections import Counter
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from botocore.session import get_session
from botocore.validate import ParamValidator
from hypothesis import given, settings
from hypothesis import strategies as st

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities, parse_communities
from hub_config.communities import Community
from spawner.bootstrap import BootstrapConfig, render_user_data
from spawner.launch import (
    ServerIdentity,
    client_token,
    instance_tags,
    run_instances_request,
    subnet_order,
)
from spawner.naming import (
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS_PER_RESOURCE,
    sanitize_tag_key,
    sanitize_tag_value,
)
from spawner.options import SpawnOptions

DEMO = load_communities(DEFAULT_COMMUNITIES_PATH)
AD, NF = DEMO.communities
BASE: dict[str, Any] = yaml.safe_load(DEFAULT_COMMUNITIES_PATH.read_text(encoding="utf-8"))
ALICE = ServerIdentity(
    hub_id="hub-prod",
    user="alice",
    server="",
    synapse_userid="3412345",
    synapse_user_name="alice.smith",
    email="alice@example.org",
)
USER_DATA = render_user_data(BootstrapConfig("/notebook-hub/hub-prod/alice/_", "us-east-1"))


@pytest.fixture(scope="module")
def run_instances_shape() -> Any:
    model = get_session().get_service_model("ec2")
    return model.operation_model("RunInstances").input_shape


def _assert_botocore_accepts(request: dict[str, Any], shape: Any) -> None:
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()


def _defaults(community: Community) -> SpawnOptions:
    return SpawnOptions(community.id, community.default_image, community.default_instance_type, 77)


def _request(community: Community, identity: ServerIdentity = ALICE, **kwargs: Any) -> dict:
    args: dict[str, Any] = {
        "subnet": community.subnets[0],
        "client_token": client_token(identity, "launch-1"),
        "user_data": USER_DATA,
    }
    args.update(kwargs)
    options = args.pop("options", _defaults(community))
    return run_instances_request(community, identity, options, **args)


def _parsed(mutate) -> Community:
    data = copy.deepcopy(BASE)
    mutate(data["communities"][0], data)
    return parse_communities(yaml.safe_dump(data), source="test.yaml").communities[0]


def _three_subnets(entry: dict[str, Any], data: dict[str, Any]) -> None:
    entry["subnets"] = ["subnet-00000000000000001", "subnet-00000000000000002", "subnet-0000000c"]
    entry["security_groups"] = ["sg-0a1b2c3d4e5f60718", "sg-0123abcd"]
    entry["tags"] = {"CostCenter": "AD-9", "Team": "Data Science", "Billing:Code": "x/y=z+1@a"}
    entry["root_volume_gb"] = 40
    entry["ami"] = (
        "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    )
    data["defaults"]["volume_policy"] = {"delete_on_termination": False}
    entry["volume_policy"] = {"delete_on_termination": True, "snapshot_before_delete": True}


THREE = _parsed(_three_subnets)


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("community", [AD, NF, THREE], ids=lambda c: c.id + str(len(c.subnets)))
def test_request_reflects_the_community(community: Community, run_instances_shape: Any) -> None:
    options = SpawnOptions(
        community.id, community.images[-1].id, community.instance_types[-1].name, 123
    )
    subnet = community.subnets[-1]
    token = client_token(ALICE, "abc")
    request = _request(community, options=options, subnet=subnet, client_token=token)
    _assert_botocore_accepts(request, run_instances_shape)
    tags = instance_tags(community, ALICE, options)
    assert request == {
        "ImageId": community.ami,
        "InstanceType": community.instance_types[-1].name,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": subnet,
        "SecurityGroupIds": list(community.security_groups),
        "IamInstanceProfile": {"Arn": community.instance_profile_arn},
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "VolumeSize": community.root_volume_gb,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            },
            {
                "DeviceName": "/dev/sdf",
                "Ebs": {
                    "VolumeSize": 123,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": community.volume_policy.delete_on_termination,
                },
            },
        ],
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled",
            "InstanceMetadataTags": "disabled",
        },
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "UserData": USER_DATA,
        "ClientToken": token,
        "InstanceInitiatedShutdownBehavior": "stop",
    }


def test_demo_settings_differ_where_the_file_says() -> None:
    ad, nf = _request(AD), _request(NF)
    assert (ad["ImageId"], nf["ImageId"]) == ("ami-0123456789abcdef0", "ami-0fedcba9876543210")
    assert ad["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 30
    assert nf["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 60
    assert ad["BlockDeviceMappings"][1]["Ebs"]["DeleteOnTermination"] is True
    assert nf["BlockDeviceMappings"][1]["Ebs"]["DeleteOnTermination"] is False
    assert ad["IamInstanceProfile"]["Arn"].endswith("/ad-portal-notebook")
    assert nf["SecurityGroupIds"] == ["sg-0b2c3d4e5f6071829"]


def test_parsed_community_with_three_subnets_and_policies() -> None:
    assert len(THREE.subnets) == 3
    assert THREE.ami.startswith("resolve:ssm:")
    request = _request(THREE, subnet="subnet-0000000c")
    assert request["SubnetId"] == "subnet-0000000c"
    assert request["SecurityGroupIds"] == ["sg-0a1b2c3d4e5f60718", "sg-0123abcd"]
    assert request["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 40
    assert request["BlockDeviceMappings"][1]["Ebs"]["DeleteOnTermination"] is True
    kept = _parsed(lambda entry, data: entry.update(volume_policy={"delete_on_termination": False}))
    assert _request(kept)["BlockDeviceMappings"][1]["Ebs"]["DeleteOnTermination"] is False
    extra = {t["Key"]: t["Value"] for t in request["TagSpecifications"][0]["Tags"][-4:]}
    assert extra == {
        "Project": "synapse-notebook-hub-demo",
        "CostCenter": "AD-9",
        "Team": "Data Science",
        "Billing:Code": "x/y=z+1@a",
    }


def test_user_data_is_passed_through_untouched() -> None:
    assert _request(AD, user_data="#cloud-config\n{}\n")["UserData"] == "#cloud-config\n{}\n"


def test_request_carries_no_secret() -> None:
    """Identity fields full of token-like text: none of it reaches the user data."""
    secrets = [
        "syn_pat_" + "Q" * 40,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "jupyterhub-api-token-0123456789abcdef0123456789abcdef",
    ]
    identity = ServerIdentity(
        hub_id=secrets[2],
        user=secrets[0],
        server=secrets[1],
        synapse_userid=secrets[0],
        synapse_user_name=secrets[1],
        email=f"{secrets[2]}@example.org",
    )
    user_data = render_user_data(BootstrapConfig("/notebook-hub/hub/user/_", "us-east-1"))
    request = _request(AD, identity, user_data=user_data)
    for secret in secrets:
        assert secret not in request["UserData"]
        for fragment in (secret[:12], secret[-12:]):
            assert fragment not in request["UserData"]
    # Apart from tags (names, not secrets) nothing of the identity is in the request.
    without_tags = {k: v for k, v in request.items() if k != "TagSpecifications"}
    flat = json.dumps(without_tags)
    for secret in secrets:
        assert secret[:12] not in flat


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": SpawnOptions("nf-osc", "jupyter", "m5.large", 50)}, "options are for"),
        ({"options": SpawnOptions("ad-portal", "jupyter", "m5.large", 50)}, "not offered"),
        ({"options": SpawnOptions("ad-portal", "vscode", "t3.large", 50)}, "not an image"),
        ({"subnet": "subnet-0c3d4e5f607182930"}, "not a subnet"),
        ({"client_token": "x" * 65}, "client_token"),
        ({"client_token": ""}, "client_token"),
        ({"client_token": "é"}, "client_token"),
        ({"user_data": "x" * (16 * 1024 + 1)}, "user data"),
    ],
)
def test_request_refuses_inputs_only_a_bug_produces(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _request(AD, **change)


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------


def test_tags_in_the_documented_order() -> None:
    options = SpawnOptions("ad-portal", "rstudio", "t3.large", 50)
    assert instance_tags(AD, ALICE, options) == [
        {"Key": "Name", "Value": "notebook-alice"},
        {"Key": "synapse:ownerId", "Value": "3412345"},
        {"Key": "synapse:userName", "Value": "alice.smith"},
        {"Key": "synapse:email", "Value": "alice@example.org"},
        {"Key": "OwnerEmail", "Value": "alice.smith@synapse.org"},
        {"Key": "synapse:teamId", "Value": "3500001"},
        {"Key": "jupyterhub:hub", "Value": "hub-prod"},
        {"Key": "jupyterhub:user", "Value": "alice"},
        {"Key": "jupyterhub:server", "Value": "_"},
        {"Key": "jupyterhub:image", "Value": "rstudio"},
        {"Key": "jupyterhub:community", "Value": "ad-portal"},
        {"Key": "Project", "Value": "synapse-notebook-hub-demo"},
        {"Key": "CostCenter", "Value": "AD-123"},
    ]


def test_named_server_tags() -> None:
    named = dataclasses.replace(ALICE, server="gpu-work")
    tags = {t["Key"]: t["Value"] for t in instance_tags(NF, named, _defaults(NF))}
    assert tags["Name"] == "notebook-alice-gpu-work"
    assert tags["jupyterhub:server"] == "gpu-work"
    assert named.server_tag == "gpu-work" and ALICE.server_tag == "_"


def test_tag_values_are_sanitised() -> None:
    odd = dataclasses.replace(ALICE, user="bob#1", synapse_user_name="aws:bob", email="b<b>@x.org")
    tags = {t["Key"]: t["Value"] for t in instance_tags(AD, odd, _defaults(AD))}
    assert tags["jupyterhub:user"] == "bob_1"
    assert tags["Name"] == "notebook-bob_1"
    assert tags["synapse:userName"] == "aws_bob"
    assert tags["OwnerEmail"] == "aws_bob@synapse.org"
    assert tags["synapse:email"] == "b_b_@x.org"


def test_extra_tags_never_override_the_hubs() -> None:
    forged = dataclasses.replace(
        AD,
        tags=MappingProxyType(
            {
                "name": "someone-else",
                "OwnerEmail": "boss@synapse.org",
                "jupyterhub:user": "mallory",
                "Synapse:ownerId": "1",
                "aws:createdBy": "me",
                "Team": "ok",
                "Team ": "kept too: a different key",
            }
        ),
    )
    tags = instance_tags(forged, ALICE, _defaults(AD))
    keys = [t["Key"] for t in tags]
    assert len(keys) == len(set(keys))
    by_key = {t["Key"]: t["Value"] for t in tags}
    assert by_key["Name"] == "notebook-alice"
    assert by_key["OwnerEmail"] == "alice.smith@synapse.org"
    assert by_key["jupyterhub:user"] == "alice"
    assert "name" not in by_key and "Synapse:ownerId" not in by_key
    assert by_key["aws_createdBy"] == "me"  # sanitised into a key of its own
    assert keys[-3:] == ["aws_createdBy", "Team", "Team "]


def test_tags_stop_at_ec2s_limit() -> None:
    many = _parsed(
        lambda entry, data: (
            data["defaults"].pop("tags"),
            entry.update(tags={f"Extra{i:02d}": str(i) for i in range(40)}),
        )
    )
    tags = instance_tags(many, ALICE, _defaults(many))
    assert len(tags) == MAX_TAGS_PER_RESOURCE
    assert tags[-1] == {"Key": "Extra38", "Value": "38"}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("alice", "alice"),
        ("a#b$c", "a_b_c"),
        ("aws:thing", "aws_thing"),
        ("AwS:thing", "AwS_thing"),
        ("awsome:x", "awsome:x"),
        ("x aws:y", "x aws:y"),
        ("Jose\u0301", "Jos\u00e9"),  # decomposed é becomes the letter
        ("Zoë Müller 李", "Zoë Müller 李"),
        ("a\u00a0b\u2003c", "a b c"),
        ("line\nbreak\ttab", "line_break_tab"),
        ("emoji 🙂", "emoji _"),
        ("x" * 300, "x" * 256),
        ("", ""),
    ],
)
def test_sanitize_tag_value_examples(raw: str, clean: str) -> None:
    assert sanitize_tag_value(raw) == clean


def test_sanitize_tag_key_examples() -> None:
    assert sanitize_tag_key("") == "_"
    assert sanitize_tag_key("aws:x") == "aws_x"
    assert sanitize_tag_key("k" * 200) == "k" * 128
    assert sanitize_tag_key("Cost Center/Team=1") == "Cost Center/Team=1"


def _ec2_accepts(text: str, limit: int) -> bool:
    # EC2's documented pattern [\p{L}\p{Z}\p{N}_.:/=+\-@]*, narrowed as in the module.
    ok = all(ch in "_.:/=+-@ " or unicodedata.category(ch)[0] in "LN" for ch in text)
    return ok and len(text) <= limit and not text[:4].casefold() == "aws:"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=400))
def test_any_value_sanitises_to_an_accepted_idempotent_value(text: str) -> None:
    value = sanitize_tag_value(text)
    assert _ec2_accepts(value, MAX_TAG_VALUE_LENGTH)
    assert sanitize_tag_value(value) == value
    key = sanitize_tag_key(text)
    assert key and _ec2_accepts(key, MAX_TAG_KEY_LENGTH)
    assert sanitize_tag_key(key) == key


# --------------------------------------------------------------------------------------------
# Subnets and client tokens
# --------------------------------------------------------------------------------------------


def test_subnet_order_is_a_stable_rotation() -> None:
    order = subnet_order(THREE, ALICE)
    assert sorted(order) == sorted(THREE.subnets)
    start = THREE.subnets.index(order[0])
    assert order == list(THREE.subnets[start:] + THREE.subnets[:start])
    assert subnet_order(THREE, ALICE) == order
    assert subnet_order(THREE, dataclasses.replace(ALICE, email="other")) == order


def test_subnet_order_spreads_servers_over_zones() -> None:
    firsts = Counter(
        subnet_order(THREE, dataclasses.replace(ALICE, user=f"user{i}"))[0] for i in range(600)
    )
    assert set(firsts) == set(THREE.subnets)
    assert min(firsts.values()) > 120
    servers = {
        subnet_order(THREE, dataclasses.replace(ALICE, server=f"s{i}"))[0] for i in range(30)
    }
    assert servers == set(THREE.subnets)


def test_subnet_order_of_one_subnet() -> None:
    single = _parsed(lambda entry, data: entry.update(subnets=["subnet-0a1b2c3d"]))
    assert subnet_order(single, ALICE) == ["subnet-0a1b2c3d"]


def test_client_token_is_stable_per_launch() -> None:
    token = client_token(ALICE, "launch-1")
    assert len(token) <= 64 and token.isascii() and token.isalnum()
    assert client_token(ALICE, "launch-1") == token
    assert client_token(ALICE, "launch-2") != token
    assert client_token(dataclasses.replace(ALICE, server="x"), "launch-1") != token
    assert client_token(dataclasses.replace(ALICE, user="bob"), "launch-1") != token
    # Parts are kept apart: moving a character between them changes the token.
    a = ServerIdentity("h", "ab", "c", "1", "u", "e")
    b = ServerIdentity("h", "a", "bc", "1", "u", "e")
    assert client_token(a, "l") != client_token(b, "l")
    with pytest.raises(ValueError):
        client_token(ALICE, "")


@settings(max_examples=100, deadline=None)
@given(user=st.text(), server=st.text(), launch=st.text(min_size=1))
def test_client_token_length_for_any_names(user: str, server: str, launch: str) -> None:
    token = client_token(dataclasses.replace(ALICE, user=user, server=server), launch)
    assert 1 <= len(token) <= 64 and token.isascii()
