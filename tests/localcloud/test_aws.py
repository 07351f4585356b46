"""The local cloud's AWS side: moto behind the AWS front, the SSM stand-in, fault rules, the
call log and the resources made for the communities.

boto3 is driven exactly as the hub drives it (one ``endpoint_url`` for every service, in a
thread, since the front runs on this test's event loop). Where moto differs from AWS and the
front corrects it, the test names the AWS behaviour it checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.config
import pytest
import pytest_asyncio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hub_config import load_communities
from localcloud.aws.moto_setup import parameter_policy
from localcloud.launcher import hub_environment
from localcloud.ssm import fixed_resolver
from localcloud.ssm.sigv4 import SignatureError
from localcloud.stack import LocalAws, start_aws

pytestmark = pytest.mark.asyncio(loop_scope="module")

# botocore's "max_attempts" counts retries; "total_max_attempts" counts the first try too.
NO_RETRIES = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1})
STANDARD = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 3})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def aws(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalAws]:
    # A long boot delay: these tests launch instances without user data and do not need the
    # simulator to try booting them.
    local = await start_aws(tmp_path_factory.mktemp("aws"), boot_delay=300)
    yield local
    await local.close()


@pytest.fixture(autouse=True)
def _fresh_rules(aws: LocalAws) -> None:
    aws.front.clear_faults()


async def call(client: Any, operation: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(getattr(client, operation), **kwargs)


async def error(client: Any, operation: str, **kwargs: Any) -> tuple[dict[str, str], int]:
    with pytest.raises(ClientError) as info:
        await call(client, operation, **kwargs)
    response = info.value.response
    return response["Error"], response["ResponseMetadata"]["HTTPStatusCode"]


async def control(aws: LocalAws, method: str, path: str, body: Any = None) -> Any:
    response = await AsyncHTTPClient().fetch(
        f"{aws.front_url}/_control{path}",
        method=method,
        body=None if body is None else json.dumps(body),
        allow_nonstandard_methods=True,
    )
    return json.loads(response.body) if response.body else None


def launch_kwargs(aws: LocalAws, **extra: Any) -> dict[str, Any]:
    return {
        "ImageId": aws.ids.ami,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": "t3.large",
        "SubnetId": aws.ids.subnets[0],
        "SecurityGroupIds": [aws.ids.security_group_id],
        **extra,
    }


# --- routing ---------------------------------------------------------------------------------


async def test_ec2_iam_sts_and_parameters_reach_moto(aws: LocalAws) -> None:
    since = aws.front.calls.last_seq
    vpcs = await call(aws.client("ec2"), "describe_vpcs", VpcIds=[aws.ids.vpc_id])
    assert vpcs["Vpcs"][0]["CidrBlock"] == "10.42.0.0/16"
    profile = aws.ids.communities["ad-portal"]
    got = await call(
        aws.client("iam"), "get_instance_profile", InstanceProfileName=profile.instance_profile_name
    )
    assert got["InstanceProfile"]["Arn"] == profile.instance_profile_arn
    identity = await call(aws.client("sts"), "get_caller_identity")
    assert identity["Account"] == "123456789012"
    ssm = aws.client("ssm")
    await call(ssm, "put_parameter", Name="/t/route/secret", Value="s3cr3t", Type="SecureString")
    value = await call(ssm, "get_parameter", Name="/t/route/secret", WithDecryption=True)
    assert value["Parameter"]["Value"] == "s3cr3t"

    records = aws.front.calls.records(since=since)
    assert [(r.service, r.action, r.backend) for r in records] == [
        ("ec2", "DescribeVpcs", "moto"),
        ("iam", "GetInstanceProfile", "moto"),
        ("sts", "GetCallerIdentity", "moto"),
        ("ssm", "PutParameter", "moto"),
        ("ssm", "GetParameter", "moto"),
    ]
    put = records[3]
    assert put.params["Name"] == "/t/route/secret" and put.params["Value"] == "<redacted>"
    assert "s3cr3t" not in json.dumps([r.to_json() for r in records])


async def test_session_manager_calls_reach_the_ssm_standin(aws: LocalAws) -> None:
    ssm = aws.client("ssm")
    instance = "i-0aaaaaaaaaaaaaaaa"
    err, _ = await error(
        ssm,
        "start_session",
        Target=instance,
        DocumentName="AWS-StartPortForwardingSession",
        Parameters={"portNumber": ["8888"], "localPortNumber": ["0"]},
    )
    assert err["Code"] == "TargetNotConnected"
    aws.ssm.register(instance, fixed_resolver("127.0.0.1", 9))
    try:
        info = await call(ssm, "describe_instance_information")
        assert [i["InstanceId"] for i in info["InstanceInformationList"]] == [instance]
        session = await call(
            ssm,
            "start_session",
            Target=instance,
            DocumentName="AWS-StartPortForwardingSession",
            Parameters={"portNumber": ["8888"], "localPortNumber": ["0"]},
        )
        # The data channel is the stand-in's own URL, as ssmmessages is not the SSM endpoint.
        assert session["StreamUrl"].startswith(aws.ssm_url.replace("http", "ws", 1))
        await call(ssm, "terminate_session", SessionId=session["SessionId"])
        active = await call(ssm, "describe_sessions", State="Active")
        assert active["Sessions"] == []
    finally:
        aws.ssm.deregister(instance)
    backends = {r.action: r.backend for r in aws.front.calls.records(service="ssm")}
    assert backends["StartSession"] == backends["DescribeSessions"] == "ssm"


async def test_data_channel_upgrades_are_verified_against_the_keys_moto_issued(
    aws: LocalAws,
) -> None:
    """The stand-in checks each upgrade's SigV4 signature against the principals moto's IAM
    and STS issued keys to: the hub's IAM user (its key is in endpoints.json) and an assumed
    role's temporary key with its session token are accepted; moto's blanket "testing" key,
    which moto itself accepts for anything, is not a principal, and a role key without its
    token is refused."""
    sts = aws.client("sts")
    role_arn = next(iter(aws.ids.communities.values())).role_arn
    role = (await call(sts, "assume_role", RoleArn=role_arn, RoleSessionName="i-0hub"))[
        "Credentials"
    ]
    url = f"{aws.ssm_url.replace('http', 'ws', 1)}/v1/data-channel/x-1?role=publish_subscribe"
    host = aws.ssm_url.split("//", 1)[1]

    def signed(key: str, secret: str, token: str | None) -> dict[str, str]:
        request = AWSRequest(method="GET", url=url)
        SigV4Auth(ReadOnlyCredentials(key, secret, token), "ssmmessages", aws.region).add_auth(
            request
        )
        return {**request.headers, "Host": host}

    hub = aws.ssm.verify_upgrade(url, signed(aws.access_key_id, aws.secret_access_key, None))
    assert hub is not None and hub.arn.endswith(":user/notebook-hub")
    assert aws.access_key_id != "testing"
    assumed = aws.ssm.verify_upgrade(
        url, signed(role["AccessKeyId"], role["SecretAccessKey"], role["SessionToken"])
    )
    assert assumed is not None and assumed.arn.endswith("/i-0hub")
    for headers, code in (
        (signed("testing", "testing", None), "InvalidClientTokenId"),
        (signed(role["AccessKeyId"], role["SecretAccessKey"], None), "InvalidClientTokenId"),
        (signed(aws.access_key_id, "wrong", None), "SignatureDoesNotMatch"),
    ):
        with pytest.raises(SignatureError) as info:
            aws.ssm.verify_upgrade(url, headers)
        assert info.value.code == code


# --- faults ----------------------------------------------------------------------------------

FAULTS = [
    # (service, action, code, HTTP status AWS uses, client, operation, kwargs-maker)
    ("ec2", "RunInstances", "InsufficientInstanceCapacity", 500),
    ("ec2", "RunInstances", "UnauthorizedOperation", 403),
    ("ec2", "RunInstances", "InvalidAMIID.NotFound", 400),
    ("ec2", "RunInstances", "InvalidParameterValue", 400),
    ("ec2", "DescribeInstances", "RequestLimitExceeded", 503),
    ("ssm", "GetParameter", "ThrottlingException", 400),
    ("ssm", "PutParameter", "AccessDeniedException", 400),
    ("ssm", "StartSession", "TargetNotConnected", 400),
    ("iam", "GetInstanceProfile", "AccessDenied", 403),
    ("sts", "AssumeRole", "AccessDenied", 403),
]


def _operation(aws: LocalAws, service: str, action: str) -> tuple[str, dict[str, Any]]:
    profile = aws.ids.communities["ad-portal"]
    return {
        "RunInstances": ("run_instances", launch_kwargs(aws)),
        "DescribeInstances": ("describe_instances", {}),
        "GetParameter": ("get_parameter", {"Name": "/t/x"}),
        "PutParameter": ("put_parameter", {"Name": "/t/x", "Value": "v", "Type": "String"}),
        "StartSession": ("start_session", {"Target": "i-0123456789abcdef0"}),
        "GetInstanceProfile": (
            "get_instance_profile",
            {"InstanceProfileName": profile.instance_profile_name},
        ),
        "AssumeRole": ("assume_role", {"RoleArn": profile.role_arn, "RoleSessionName": "test"}),
    }[action]


@pytest.mark.parametrize(("service", "action", "code", "status"), FAULTS)
async def test_each_fault_is_the_services_own_error(
    aws: LocalAws, service: str, action: str, code: str, status: int
) -> None:
    rule = aws.front.inject(code, service=service, action=action)
    operation, kwargs = _operation(aws, service, action)
    err, got_status = await error(aws.client(service, config=NO_RETRIES), operation, **kwargs)
    assert err["Code"] == code
    assert got_status == status
    assert err["Message"]  # AWS's wording, or the rule's
    assert rule.fired == 1
    record = aws.front.calls.records(service=service, action=action)[-1]
    assert (record.fault, record.error, record.status) == (rule.rule_id, code, status)


async def test_fault_matches_parameters_subnet_by_subnet(aws: LocalAws) -> None:
    """ "The next RunInstances in subnet A has no capacity": the other subnet still works."""
    first, second = aws.ids.subnets
    aws.front.inject(
        "InsufficientInstanceCapacity",
        service="ec2",
        action="RunInstances",
        params={"SubnetId": first},
        count=None,
    )
    ec2 = aws.client("ec2", config=NO_RETRIES)
    err, status = await error(ec2, "run_instances", **launch_kwargs(aws, SubnetId=first))
    assert (err["Code"], status) == ("InsufficientInstanceCapacity", 500)
    assert "t3.large capacity" in err["Message"]
    done = await call(ec2, "run_instances", **launch_kwargs(aws, SubnetId=second))
    assert done["Instances"][0]["SubnetId"] == second
    tried = [r.params["SubnetId"] for r in aws.front.calls.records(action="RunInstances")[-2:]]
    assert tried == [first, second]


async def test_throttling_is_retried_by_boto3_standard_mode(aws: LocalAws) -> None:
    since = aws.front.calls.last_seq
    await control(
        aws,
        "POST",
        "/faults",
        {
            "service": "ec2",
            "action": "DescribeInstances",
            "code": "RequestLimitExceeded",
            "count": 2,
        },
    )
    await call(aws.client("ec2", config=STANDARD), "describe_instances")
    aws.front.inject("ThrottlingException", service="ssm", action="GetParameters", count=1)
    await call(aws.client("ssm", config=STANDARD), "get_parameters", Names=["/t/none"])

    calls = (await control(aws, "GET", f"/calls?since={since}"))["calls"]
    described = [c for c in calls if c["action"] == "DescribeInstances"]
    assert [(c["attempt"], c["status"], c["error"]) for c in described] == [
        (1, 503, "RequestLimitExceeded"),
        (2, 503, "RequestLimitExceeded"),
        (3, 200, ""),
    ]
    assert len({c["invocationId"] for c in described}) == 1  # one boto3 call, three attempts
    params = [c for c in calls if c["action"] == "GetParameters"]
    assert [(c["attempt"], c["error"]) for c in params] == [(1, "ThrottlingException"), (2, "")]


async def test_capacity_errors_are_retried_too_because_aws_answers_them_with_500(
    aws: LocalAws,
) -> None:
    """EC2 answers InsufficientInstanceCapacity with HTTP 500, which botocore's standard mode
    retries as a transient error: the spawner sees it only after max_attempts tries."""
    aws.front.inject("InsufficientInstanceCapacity", service="ec2", action="RunInstances", count=3)
    err, _ = await error(aws.client("ec2", config=STANDARD), "run_instances", **launch_kwargs(aws))
    assert err["Code"] == "InsufficientInstanceCapacity"
    attempts = [r.attempt for r in aws.front.calls.records(action="RunInstances")[-3:]]
    assert attempts == [1, 2, 3]


async def test_faults_control_api(aws: LocalAws) -> None:
    rule = await control(
        aws,
        "POST",
        "/faults",
        {"service": "ec2", "action": "Describe*", "code": "UnauthorizedOperation", "count": None},
    )
    assert rule["status"] is None and rule["count"] is None
    listed = (await control(aws, "GET", "/faults"))["faults"]
    assert [r["id"] for r in listed] == [rule["id"]]
    err, status = await error(aws.client("ec2", config=NO_RETRIES), "describe_vpcs")
    assert (err["Code"], status) == ("UnauthorizedOperation", 403)
    await control(aws, "DELETE", f"/faults/{rule['id']}")
    await call(aws.client("ec2"), "describe_vpcs")
    with pytest.raises(HTTPClientError) as bad:
        await control(aws, "POST", "/faults", {"service": "ec2", "count": 0, "code": "X"})
    assert bad.value.code == 400


async def test_delay_rule_slows_calls_without_failing_them(aws: LocalAws) -> None:
    aws.front.inject(service="ec2", action="DescribeVpcs", delay=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await call(aws.client("ec2"), "describe_vpcs")
    assert loop.time() - started >= 0.3


# --- moto's behaviour, and where the front corrects it -----------------------------------------


async def test_client_token_makes_run_instances_idempotent(aws: LocalAws) -> None:
    """EC2: the same ClientToken and parameters return the first launch; other parameters
    are IdempotentParameterMismatch (moto would launch again)."""
    ec2 = aws.client("ec2", config=NO_RETRIES)
    first = await call(ec2, "run_instances", **launch_kwargs(aws, ClientToken="token-1"))
    again = await call(ec2, "run_instances", **launch_kwargs(aws, ClientToken="token-1"))
    assert first["Instances"][0]["InstanceId"] == again["Instances"][0]["InstanceId"]
    assert aws.front.calls.records(action="RunInstances")[-1].replayed
    err, status = await error(
        ec2, "run_instances", **launch_kwargs(aws, ClientToken="token-1", InstanceType="m5.large")
    )
    assert (err["Code"], status) == ("IdempotentParameterMismatch", 400)
    # A launch refused by a fault records nothing: the same token works afterwards.
    aws.front.inject("InsufficientInstanceCapacity", service="ec2", action="RunInstances")
    await error(ec2, "run_instances", **launch_kwargs(aws, ClientToken="token-2"))
    third = await call(ec2, "run_instances", **launch_kwargs(aws, ClientToken="token-2"))
    assert third["Instances"][0]["InstanceId"] != first["Instances"][0]["InstanceId"]


async def test_launch_as_the_spawner_does_it(aws: LocalAws) -> None:
    """States without transitions, volumes per mapping with their tags, user data, profile."""
    ec2 = aws.client("ec2")
    profile = aws.ids.communities["nf-osc"].instance_profile_arn
    launched = await call(
        ec2,
        "run_instances",
        **launch_kwargs(
            aws,
            UserData="#cloud-config\n",
            IamInstanceProfile={"Arn": profile},
            BlockDeviceMappings=[
                {
                    "DeviceName": "/dev/xvda",
                    "Ebs": {
                        "VolumeSize": 30,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                    },
                },
                {
                    "DeviceName": "/dev/sdf",
                    "Ebs": {
                        "VolumeSize": 50,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": False,
                    },
                },
            ],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "jupyterhub:user", "Value": "a"}]},
                {"ResourceType": "volume", "Tags": [{"Key": "jupyterhub:user", "Value": "a"}]},
            ],
        ),
    )
    instance = launched["Instances"][0]
    assert instance["State"]["Name"] == "pending"
    iid = instance["InstanceId"]
    described = (await call(ec2, "describe_instances", InstanceIds=[iid]))["Reservations"][0][
        "Instances"
    ][0]
    assert described["State"]["Name"] == "running"
    assert described["IamInstanceProfile"]["Arn"] == profile
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"]}
    assert set(devices) == {"/dev/xvda", "/dev/sdf"}
    volumes = (await call(ec2, "describe_volumes", VolumeIds=[devices["/dev/sdf"]]))["Volumes"]
    assert volumes[0]["Size"] == 50 and volumes[0]["Encrypted"]
    assert {"Key": "jupyterhub:user", "Value": "a"} in volumes[0]["Tags"]
    user_data = await call(ec2, "describe_instance_attribute", InstanceId=iid, Attribute="userData")
    assert user_data["UserData"]["Value"] == "I2Nsb3VkLWNvbmZpZwo="  # base64("#cloud-config\n")
    stopping = await call(ec2, "stop_instances", InstanceIds=[iid])
    assert stopping["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    state = (await call(ec2, "describe_instances", InstanceIds=[iid]))["Reservations"][0][
        "Instances"
    ][0]["State"]["Name"]
    assert state == "stopped"
    await call(ec2, "terminate_instances", InstanceIds=[iid])
    # DeleteOnTermination: the root volume goes, the home volume stays (available).
    left = (await call(ec2, "describe_volumes", VolumeIds=[devices["/dev/sdf"]]))["Volumes"]
    assert left[0]["State"] == "available"
    err, _ = await error(ec2, "describe_volumes", VolumeIds=[devices["/dev/xvda"]])
    assert err["Code"] == "InvalidVolume.NotFound"


async def test_launch_errors_are_ec2s(aws: LocalAws) -> None:
    ec2 = aws.client("ec2", config=NO_RETRIES)
    missing = "arn:aws:iam::123456789012:instance-profile/no-such-profile"
    err, status = await error(
        ec2, "run_instances", **launch_kwargs(aws, IamInstanceProfile={"Arn": missing})
    )
    assert (err["Code"], status) == ("InvalidParameterValue", 400)  # moto: NoSuchEntity, 404
    assert missing in err["Message"]
    err, status = await error(
        ec2, "run_instances", **launch_kwargs(aws, ImageId="ami-0123456789abcdef0")
    )
    assert (err["Code"], status) == ("InvalidAMIID.NotFound", 400)
    err, _ = await error(ec2, "run_instances", **launch_kwargs(aws, InstanceType="t3.gigantic"))
    assert err["Code"] == "InvalidParameterValue"
    err, _ = await error(
        ec2, "run_instances", **launch_kwargs(aws, SubnetId="subnet-0a1b2c3d4e5f60718")
    )
    assert err["Code"] == "InvalidSubnetID.NotFound"
    err, _ = await error(
        ec2, "run_instances", **launch_kwargs(aws, SecurityGroupIds=["sg-0a1b2c3d4e5f60718"])
    )
    assert err["Code"] == "InvalidGroup.NotFound"


async def test_more_than_200_filter_values_are_refused_as_ec2_refuses_them(aws: LocalAws) -> None:
    """EC2's error codes: ``FilterLimitExceeded``, "The request uses too many filters or too
    many filter values" (200 values in one call); moto answers any number."""
    ec2 = aws.client("ec2", config=NO_RETRIES)
    ids = [f"i-{n:017x}" for n in range(201)]
    err, status = await error(
        ec2, "describe_instances", Filters=[{"Name": "instance-id", "Values": ids}]
    )
    assert (err["Code"], status) == ("FilterLimitExceeded", 400)
    split = [{"Name": "instance-id", "Values": ids[:150]}, {"Name": "tag:a", "Values": ids[150:]}]
    err, _ = await error(ec2, "describe_instances", Filters=split)  # counted over all filters
    assert err["Code"] == "FilterLimitExceeded"
    answer = await call(
        ec2, "describe_instances", Filters=[{"Name": "instance-id", "Values": ids[:200]}]
    )
    assert answer["Reservations"] == []


async def test_a_real_consoles_output_is_what_get_console_output_answers(aws: LocalAws) -> None:
    """EC2 API reference, GetConsoleOutput: ``output`` is the console's text in base64
    (botocore decodes it), with the instance id and a timestamp. An instance with a real
    console (a real-boot machine) answers its own; the others moto's canned text."""
    ec2 = aws.client("ec2")
    launch = {"ImageId": aws.ids.ami, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro"}
    launched = await call(ec2, "run_instances", **launch)
    iid = launched["Instances"][0]["InstanceId"]
    console = "notebook-bootstrap: <3>parameter not found é\n"
    aws.front.consoles = {iid: console}.get
    try:
        answer = await call(ec2, "get_console_output", InstanceId=iid, Latest=True)
        assert (answer["InstanceId"], answer["Output"]) == (iid, console)
        assert answer["Timestamp"].tzinfo is not None
        other = (await call(ec2, "run_instances", **launch))["Instances"][0]["InstanceId"]
        canned = await call(ec2, "get_console_output", InstanceId=other)
        assert canned["Output"].startswith("Linux version")
        await call(ec2, "terminate_instances", InstanceIds=[other])
    finally:
        aws.front.consoles = None
        await call(ec2, "terminate_instances", InstanceIds=[iid])


# --- what the communities get ------------------------------------------------------------------


async def test_generated_communities_file_loads_and_names_what_exists(aws: LocalAws) -> None:
    config = load_communities(aws.communities_file)
    text = aws.communities_file.read_text()
    assert "# Communities of the Synapse Notebook Hub" in text  # the admin's comments kept
    assert "subnet-0a1b2c3d4e5f60718" not in text  # no fake id left
    ec2, iam = aws.client("ec2"), aws.client("iam")
    for community in config.communities:
        subnets = (await call(ec2, "describe_subnets", SubnetIds=list(community.subnets)))[
            "Subnets"
        ]
        assert len({s["AvailabilityZone"] for s in subnets}) == 2
        assert {s["VpcId"] for s in subnets} == {aws.ids.vpc_id}
        images = (await call(ec2, "describe_images", ImageIds=[community.ami]))["Images"]
        assert images[0]["Architecture"] == "x86_64"
        name = community.instance_profile_arn.rpartition("/")[2]
        profile = (await call(iam, "get_instance_profile", InstanceProfileName=name))[
            "InstanceProfile"
        ]
        assert profile["Arn"] == community.instance_profile_arn
        role = profile["Roles"][0]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
        policy = await call(
            iam,
            "get_role_policy",
            RoleName=role["RoleName"],
            PolicyName="read-own-server-parameters",
        )
        document = policy["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        assert document == parameter_policy("/synapse-notebook-hub")
        assert "ssm:GetParameter" in document["Statement"][0]["Action"]


async def test_security_group_has_no_inbound_rule(aws: LocalAws) -> None:
    config = load_communities(aws.communities_file)
    groups = {g for c in config.communities for g in c.security_groups}
    assert groups == {aws.ids.security_group_id}
    described = await call(aws.client("ec2"), "describe_security_groups", GroupIds=list(groups))
    group = described["SecurityGroups"][0]
    assert group["IpPermissions"] == []
    rules = await call(
        aws.client("ec2"),
        "describe_security_group_rules",
        Filters=[{"Name": "group-id", "Values": list(groups)}],
    )
    assert not [r for r in rules["SecurityGroupRules"] if not r["IsEgress"]]


async def test_hub_environment_points_the_hub_at_the_front(aws: LocalAws, tmp_path: Path) -> None:
    endpoints = {
        "synapse": {
            "client_id": "c",
            "client_secret": "s",
            "issuer": "http://127.0.0.1:1/auth/v1",
            "signin_url": "http://127.0.0.1:1/signin",
        },
        "hub": {"public_url": "http://127.0.0.1:8000"},
        "aws": aws.endpoints(),
    }
    (tmp_path / "crypt_key").write_text("00" * 32)
    env = hub_environment(endpoints, tmp_path)
    assert env["SNH_AWS_ENDPOINT_URL"] == aws.front_url
    assert env["SNH_COMMUNITIES_FILE"] == str(aws.communities_file)
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert aws.endpoints()["control_url"] == f"{aws.front_url}/_control"
