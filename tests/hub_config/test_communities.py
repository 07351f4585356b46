"""The communities file: the shipped demo loads, and every kind of mistake is reported well.

"Reported well" means: the hub would stop with a message naming the file, the community (with
its team) and the key, and all mistakes of one file are listed together.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub_config import (
    COMMUNITIES_SCHEMA_PATH,
    DEFAULT_COMMUNITIES_PATH,
    DEFAULT_INSTANCE_TYPES_PATH,
    INSTANCE_TYPES_SCHEMA_PATH,
    CommunitiesConfig,
    CommunitiesError,
    ImageKind,
    load_communities,
    load_instance_types,
    parse_communities,
)
from operations.check import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_TEXT = DEFAULT_COMMUNITIES_PATH.read_text(encoding="utf-8")
BASE: dict[str, Any] = yaml.safe_load(SHIPPED_TEXT)

JUPYTER = BASE["communities"][0]["images"]["choices"]["jupyter"]["image"]


def _write(tmp_path: Path, data: Any, name: str = "communities.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _mutated(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    mutate(data)
    return data


def _ad(data: dict[str, Any]) -> dict[str, Any]:
    return data["communities"][0]


def _nf(data: dict[str, Any]) -> dict[str, Any]:
    return data["communities"][1]


# --------------------------------------------------------------------------------------------
# The shipped files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> CommunitiesConfig:
    return load_communities(DEFAULT_COMMUNITIES_PATH)


def test_shipped_file_loads(shipped: CommunitiesConfig) -> None:
    assert [c.id for c in shipped.communities] == ["ad-portal", "nf-osc"]
    assert [c.team_id for c in shipped.communities] == ["3500001", "3500002"]
    assert [(t.team_id, t.name) for t in shipped.admin_teams] == [
        ("3500000", "Notebook Hub Admins (demo)")
    ]
    assert shipped.source_path == DEFAULT_COMMUNITIES_PATH
    assert shipped.warnings == ()
    for community in shipped.communities:
        assert {i.kind for i in community.images} == {ImageKind.JUPYTER, ImageKind.RSTUDIO}
        assert all(i.pinned for i in community.images)
        assert community.instance_type(community.default_instance_type) is not None
        assert community.image(community.default_image) is not None
        assert community.disk_gb.default in community.disk_gb
        assert community.instance_profile_arn.startswith("arn:aws:iam::123456789012:")


def test_shipped_communities_differ(shipped: CommunitiesConfig) -> None:
    ad, nf = shipped.communities
    assert [t.name for t in ad.instance_types] != [t.name for t in nf.instance_types]
    assert ad.disk_gb != nf.disk_gb


def test_defaults_are_applied_and_overridden(shipped: CommunitiesConfig) -> None:
    ad, nf = shipped.communities
    assert (ad.max_servers_per_user, ad.idle_timeout_minutes, ad.dormancy_days) == (2, 60, 30)
    assert (nf.max_servers_per_user, nf.idle_timeout_minutes, nf.dormancy_days) == (1, 120, 60)
    assert (ad.root_volume_gb, nf.root_volume_gb) == (30, 60)
    assert ad.volume_policy.snapshot_before_delete and ad.volume_policy.delete_on_termination
    # nf-osc overrides one key of volume_policy; the other comes from defaults.
    assert nf.volume_policy.snapshot_before_delete
    assert not nf.volume_policy.delete_on_termination
    # tags: defaults merged, community wins per key; read-only.
    assert dict(ad.tags) == {"Project": "synapse-notebook-hub-demo", "CostCenter": "AD-123"}
    with pytest.raises(TypeError):
        ad.tags["X"] = "y"


def test_builtin_defaults_without_defaults_section(tmp_path: Path) -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["defaults"]
        for c in data["communities"]:
            for key in ("max_servers_per_user", "idle_timeout_minutes", "dormancy_days"):
                c.pop(key, None)
            c.pop("root_volume_gb", None)
            c.pop("volume_policy", None)
            del c["instance_types"]["default"], c["images"]["default"]

    config = load_communities(_write(tmp_path, _mutated(drop)))
    ad = config.by_id("ad-portal")
    assert ad is not None
    assert (ad.max_servers_per_user, ad.idle_timeout_minutes, ad.dormancy_days) == (1, 60, 30)
    assert ad.root_volume_gb == 30
    assert ad.default_instance_type == "t3.large"  # first allowed
    assert ad.default_image == "jupyter"  # first choice
    assert config.by_id("nf-osc").default_image == "rstudio"


def test_helpers(shipped: CommunitiesConfig) -> None:
    ad, nf = shipped.communities
    assert shipped.by_team_id("3500001") is ad
    assert shipped.by_team_id(3500002) is nf
    assert shipped.by_team_id("3500000") is None
    assert shipped.by_id("nf-osc") is nf
    assert shipped.by_id("nope") is None
    assert shipped.for_teams(["3500002", "3500001", "999"]) == [ad, nf]  # file order
    assert shipped.for_teams([3500002]) == [nf]
    assert shipped.for_teams([]) == []
    assert shipped.allowed_team_ids == ("3500001", "3500002", "3500000")
    assert shipped.admin_team_ids == ("3500000",)
    assert shipped.team_names == {
        "3500000": "Notebook Hub Admins (demo)",
        "3500001": "AD Knowledge Portal (demo)",
        "3500002": "NF Open Science Initiative (demo)",
    }
    assert ad.instance_type("t3.large").vcpu == 2
    assert ad.instance_type("g4dn.xlarge") is None  # nf-osc only
    assert nf.instance_type("g4dn.xlarge").gpus == 1
    assert ad.image("rstudio").kind is ImageKind.RSTUDIO
    assert ad.image("vscode") is None
    assert ad.arch == "x86_64"
    assert 20 in ad.disk_gb and 500 in ad.disk_gb
    assert 19 not in ad.disk_gb and 501 not in ad.disk_gb and True not in ad.disk_gb
    assert hash(ad)  # frozen objects can be used as dict keys / in sets


def test_team_overlap_admin_and_community_allowed(tmp_path: Path) -> None:
    def overlap(data: dict[str, Any]) -> None:
        data["admin_teams"].append({"team_id": 3500001, "name": "Portal admins"})

    config = load_communities(_write(tmp_path, _mutated(overlap)))
    assert config.admin_team_ids == ("3500000", "3500001")
    assert config.allowed_team_ids == ("3500001", "3500002", "3500000")
    assert config.team_names["3500001"] == "AD Knowledge Portal (demo)"


def test_integer_team_ids_are_normalised(tmp_path: Path) -> None:
    def ints(data: dict[str, Any]) -> None:
        _ad(data)["team_id"] = 3500001
        data["admin_teams"][0]["team_id"] = 3500000

    config = load_communities(_write(tmp_path, _mutated(ints)))
    assert config.communities[0].team_id == "3500001"
    assert config.admin_teams[0].team_id == "3500000"


def test_region_prices_and_ssm_ami(tmp_path: Path) -> None:
    def eu(data: dict[str, Any]) -> None:
        _ad(data)["region"] = "eu-west-1"
        _ad(data)["ami"] = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-x86_64"

    config = load_communities(_write(tmp_path, _mutated(eu)))
    ad, nf = config.communities
    table = load_instance_types()
    ad_t3, nf_m5 = ad.instance_type("t3.large"), nf.instance_type("m5.large")
    assert ad_t3 is not None and nf_m5 is not None
    assert ad_t3.price_per_hour == table["t3.large"].region_prices["eu-west-1"]
    assert nf_m5.price_per_hour == table["m5.large"].price_per_hour
    assert ad.ami.startswith("resolve:ssm:")


def test_unpinned_image_allowed_explicitly_gives_warning(tmp_path: Path) -> None:
    def unpinned(data: dict[str, Any]) -> None:
        choice = _ad(data)["images"]["choices"]["jupyter"]
        choice["image"] = "quay.io/jupyter/scipy-notebook:2024-05-27"
        choice["allow_unpinned"] = True

    path = _write(tmp_path, _mutated(unpinned))
    config = load_communities(path)
    assert not config.communities[0].image("jupyter").pinned
    (warning,) = config.warnings
    assert (
        str(path) in warning
        and "'ad-portal'" in warning
        and "images.choices.jupyter.image" in warning
    )
    assert cli_main(["check", str(path)]) == 0
    assert cli_main(["check", "--strict", str(path)]) == 1


def test_instance_type_table() -> None:
    table = load_instance_types()
    required = (
        "t3.medium t3.large t3.xlarge t3.2xlarge m5.large m5.xlarge m5.2xlarge m5.4xlarge "
        "m6i.large m6i.xlarge m6i.2xlarge r5.large r5.xlarge r5.2xlarge r5.4xlarge "
        "c5.xlarge c5.2xlarge g4dn.xlarge g4dn.2xlarge"
    ).split()
    assert set(required) <= set(table)
    assert table["t3.large"].price_per_hour == pytest.approx(0.0832)
    assert table["m5.xlarge"].memory_gib == 16 and table["m5.xlarge"].vcpu == 4
    assert table["g4dn.xlarge"].gpus == 1
    assert table["m7g.large"].arch == "arm64"
    assert table["t3.large"].price_in("eu-west-1") > table["t3.large"].price_in("us-east-1")
    assert table["t3a.large"].price_in("ap-south-1") == table["t3a.large"].price_per_hour
    assert "0.083" in table["t3.large"].label
    assert load_instance_types(DEFAULT_INSTANCE_TYPES_PATH) == table


def test_bad_instance_type_table_names_the_table(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_INSTANCE_TYPES_PATH.read_text(encoding="utf-8"))
    data["instance_types"]["t3.large"]["vcpu"] = "two"
    table = _write(tmp_path, data, "instance_types.yaml")
    with pytest.raises(CommunitiesError) as info:
        load_communities(DEFAULT_COMMUNITIES_PATH, instance_types_path=table)
    assert str(table) in str(info.value)
    assert 'instance_types["t3.large"].vcpu' in str(info.value)
    with pytest.raises(CommunitiesError, match="file not found"):
        load_instance_types(tmp_path / "missing.yaml")


def test_custom_table_makes_shipped_types_unknown(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_INSTANCE_TYPES_PATH.read_text(encoding="utf-8"))
    data["instance_types"] = {"t3.large": data["instance_types"]["t3.large"]}
    table = _write(tmp_path, data, "instance_types.yaml")
    with pytest.raises(CommunitiesError) as info:
        load_communities(DEFAULT_COMMUNITIES_PATH, instance_types_path=table)
    assert "unknown instance type 'm5.xlarge'" in str(info.value)
    assert str(table) in str(info.value)


# --------------------------------------------------------------------------------------------
# The schema is the admin's reference
# --------------------------------------------------------------------------------------------


def _properties_without_description(schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    missing = []

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref:
            target = root
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        node = resolve(node)
        for name, sub in node.get("properties", {}).items():
            if "description" not in resolve(sub):
                missing.append(f"{where}.{name}")
            walk(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{where}[]")

    walk(schema, "$")
    return missing


@pytest.mark.parametrize("schema_path", [COMMUNITIES_SCHEMA_PATH, INSTANCE_TYPES_SCHEMA_PATH])
def test_schema_is_valid_and_fully_described(schema_path: Path) -> None:
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert _properties_without_description(schema, schema) == []


def test_shipped_files_validate_with_plain_jsonschema() -> None:
    """The schema alone (as an editor plug-in would use it) accepts the shipped files."""
    for data_path, schema_path in [
        (DEFAULT_COMMUNITIES_PATH, COMMUNITIES_SCHEMA_PATH),
        (DEFAULT_INSTANCE_TYPES_PATH, INSTANCE_TYPES_SCHEMA_PATH),
    ]:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
        data = yaml.safe_load(data_path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema).validate(data)


# --------------------------------------------------------------------------------------------
# One test per kind of mistake
# --------------------------------------------------------------------------------------------

AD = ("ad-portal", "3500001")
NF = ("nf-osc", "3500002")
TOP = (None, None)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``communities.0.disk_gb.min``-style paths (ints index lists)."""
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]

    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]

    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in parts[:-1]:
            target = target[part]
        del target[parts[-1]]

    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]

    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in parts[:-1]:
            target = target[part]
        target[new] = target.pop(parts[-1])

    return mutate


def _mixed_arch(data: dict[str, Any]) -> None:
    _ad(data)["instance_types"]["allowed"].append("m7g.large")


def _too_many_tags(data: dict[str, Any]) -> None:
    _ad(data)["tags"] = {f"Key{i}": "v" for i in range(38)}  # + Project from defaults = 39
    _ad(data)["tags"]["OneTooMany"] = "v"


# (id, mutation, (community, team), key, fragment of the message)
MISTAKES: list[tuple[str, Callable[[dict[str, Any]], None], tuple[Any, Any], str, str]] = [
    ("unknown-top-key", _set("comunities", []), TOP, "comunities", "did you mean 'communities'"),
    ("typo-key", _rename("communities.0.instance_types", "instance_type"), AD,
     "instance_type", "unknown key 'instance_type'; did you mean 'instance_types'"),
    ("unknown-defaults-key", _set("defaults.idle_minutes", 5), TOP, "defaults.idle_minutes",
     "unknown key"),
    ("missing-key", _delete("communities.1.ami"), NF, "ami", "required key is missing"),
    ("no-communities", _set("communities", []), TOP, "communities", "no communities"),
    ("communities-not-list", _set("communities", {"ad-portal": {}}), TOP, "communities",
     "expected a list"),
    ("unknown-instance-type", _set("communities.0.instance_types.allowed.1", "t3.xlarg"), AD,
     "instance_types.allowed[1]", "unknown instance type 't3.xlarg' (did you mean 't3.xlarge'?)"),
    ("unknown-instance-type-lists-known", _set("communities.0.instance_types.allowed.0",
     "x9.huge"), AD, "instance_types.allowed[0]", "known types include t3.medium"),
    ("instance-type-malformed", _set("communities.0.instance_types.allowed.0", "large"), AD,
     "instance_types.allowed[0]", "not a valid EC2 instance type name"),
    ("duplicate-instance-type", _set("communities.0.instance_types.allowed.1", "t3.large"), AD,
     "instance_types.allowed", "duplicate entries: 't3.large'"),
    ("default-type-not-allowed", _set("communities.1.instance_types.default", "t3.large"), NF,
     "instance_types.default", "'t3.large' is not one of the allowed types"),
    ("mixed-architectures", _mixed_arch, AD, "instance_types.allowed", "mixes CPU architectures"),
    ("default-image-not-in-choices", _set("communities.1.images.default", "vscode"), NF,
     "images.default", "'vscode' is not one of the image choices (rstudio, jupyter)"),
    ("no-image-choices", _set("communities.0.images.choices", {}), AD, "images.choices",
     "needs at least 1 entry"),
    ("bad-image-kind", _set("communities.0.images.choices.jupyter.kind", "vscode"), AD,
     "images.choices.jupyter.kind", "'vscode' is not one of: 'jupyter', 'rstudio'"),
    ("bad-image-id", _set("communities.0.images.choices.Jupyter Lab", {
     "display_name": "x", "kind": "jupyter", "image": JUPYTER}), AD,
     'images.choices["Jupyter Lab"]', "not a valid image id"),
    ("unpinned-image", _set("communities.0.images.choices.jupyter.image",
     "quay.io/jupyter/scipy-notebook:latest"), AD, "images.choices.jupyter.image",
     "is not pinned by digest"),
    ("malformed-image", _set("communities.0.images.choices.rstudio.image",
     "ghcr.io/Example/R Studio@sha256:1234"), AD, "images.choices.rstudio.image",
     "not a valid container image reference"),
    ("disk-min-greater-than-max", _set("communities.0.disk_gb.min", 600), AD, "disk_gb",
     "min 600 is greater than max 500"),
    ("disk-default-outside", _set("communities.1.disk_gb.default", 20), NF, "disk_gb.default",
     "default 20 is outside [min 50, max 2000]"),
    ("disk-not-integer", _set("communities.0.disk_gb.max", "500GB"), AD, "disk_gb.max",
     "expected an integer, got the string '500GB'"),
    ("disk-missing-bound", _delete("communities.0.disk_gb.default"), AD, "disk_gb.default",
     "required key is missing"),
    ("disk-too-big", _set("communities.0.disk_gb.max", 20000), AD, "disk_gb.max",
     "more than the maximum 16384"),
    ("root-volume-too-small", _set("communities.1.root_volume_gb", 4), NF, "root_volume_gb",
     "less than the minimum 8"),
    ("malformed-arn", _set("communities.0.instance_profile_arn",
     "arn:aws:iam::123456789012:role/ad-portal-notebook"), AD, "instance_profile_arn",
     "not a valid IAM instance-profile ARN"),
    ("arn-short-account", _set("communities.0.instance_profile_arn",
     "arn:aws:iam::1234:instance-profile/x"), AD, "instance_profile_arn", "not a valid"),
    ("arn-partition-mismatch", _set("communities.1.instance_profile_arn",
     "arn:aws-cn:iam::123456789012:instance-profile/nf"), NF, "instance_profile_arn",
     "ARN partition 'aws-cn' does not match region 'us-east-1'"),
    ("malformed-ami", _set("communities.0.ami", "ami-12345"), AD, "ami",
     "'ami-12345' is not a valid AMI id"),
    ("ami-uppercase", _set("communities.0.ami", "ami-0123456789ABCDEF0"), AD, "ami",
     "not a valid AMI id"),
    ("ami-trailing-newline", _set("communities.0.ami", "ami-0123456789abcdef0\n"), AD, "ami",
     "not a valid AMI id"),
    ("malformed-subnet", _set("communities.0.subnets.1", "subnet-xyz"), AD, "subnets[1]",
     "'subnet-xyz' is not a valid subnet id"),
    ("no-subnets", _set("communities.0.subnets", []), AD, "subnets", "needs at least 1 entry"),
    ("duplicate-subnet", _set("communities.0.subnets.1", "subnet-0a1b2c3d4e5f60718"), AD,
     "subnets", "duplicate entries"),
    ("malformed-security-group", _set("communities.1.security_groups.0", "sg-1"), NF,
     "security_groups[0]", "'sg-1' is not a valid security-group id"),
    ("no-security-groups", _set("communities.1.security_groups", []), NF, "security_groups",
     "needs at least 1 entry"),
    ("duplicate-team-id", _set("communities.1.team_id", "3500001"), ("nf-osc", "3500001"),
     "team_id", "team 3500001 is already the team of community 'ad-portal'"),
    ("duplicate-community-id", _set("communities.1.id", "ad-portal"), ("ad-portal", "3500002"),
     "id", "duplicate community id"),
    ("duplicate-admin-team", _set("admin_teams", [{"team_id": "3500000"}, {"team_id": 3500000}]),
     TOP, "admin_teams[1].team_id", "team 3500000 is listed twice"),
    ("bad-team-id", _set("communities.0.team_id", "team-1"), ("ad-portal", None), "team_id",
     "'team-1' is not a valid Synapse team id"),
    ("bool-team-id", _set("communities.0.team_id", True), ("ad-portal", None), "team_id",
     "expected a string or an integer, got the boolean True"),
    ("bad-community-id", _set("communities.0.id", "AD_Portal"), ("AD_Portal", "3500001"), "id",
     "'AD_Portal' is not a valid community id"),
    ("community-id-not-string", _set("communities.0.id", 7), TOP, "communities[0].id",
     "expected a string, got the number 7 (quote it in YAML)"),
    ("reserved-tag-prefix", _set("communities.0.tags.aws:createdBy", "me"), AD,
     'tags["aws:createdBy"]', "reserved prefix 'aws:'"),
    ("reserved-tag-prefix-hub", _set("communities.1.tags.JupyterHub:user", "x"), NF,
     'tags["JupyterHub:user"]', "reserved prefix 'jupyterhub:'"),
    ("reserved-tag-in-defaults", _set("defaults.tags.synapse:team", "x"), TOP,
     'defaults.tags["synapse:team"]', "reserved prefix 'synapse:'"),
    ("tag-key-too-long", _set("communities.0.tags." + "K" * 129, "v"), AD, "tags.KKK",
     "tag key is longer than 128 characters"),
    ("tag-value-too-long", _set("communities.0.tags.CostCenter", "v" * 257), AD,
     "tags.CostCenter", "is longer than 256 characters"),
    ("tag-bad-characters", _set("communities.0.tags.CostCenter", "AD#123"), AD,
     "tags.CostCenter", "has characters EC2 does not allow"),
    ("tag-value-number", _set("communities.0.tags.CostCenter", 123), AD, "tags.CostCenter",
     "quote it in YAML"),
    ("too-many-tags", _too_many_tags, AD, "tags", "40 tags together with defaults.tags"),
    ("bad-region", _set("communities.0.region", "us-east"), AD, "region",
     "'us-east' is not a valid AWS region name"),
    ("bad-region-case", _set("communities.0.region", "US-EAST-1"), AD, "region", "not a valid"),
    ("idle-timeout-too-small", _set("defaults.idle_timeout_minutes", 1), TOP,
     "defaults.idle_timeout_minutes", "less than the minimum 5"),
    ("max-servers-zero", _set("communities.1.max_servers_per_user", 0), NF,
     "max_servers_per_user", "less than the minimum 1"),
    ("volume-policy-typo", _set("communities.1.volume_policy.snapshot", True), NF,
     "volume_policy.snapshot", "did you mean 'snapshot_before_delete'"),
    ("volume-policy-not-bool", _set("communities.1.volume_policy.delete_on_termination", "no"),
     NF, "volume_policy.delete_on_termination", "expected true or false"),
    ("empty-name", _set("communities.0.name", ""), AD, "name", "must not be empty"),
    ("admin-team-not-mapping", _set("admin_teams", ["3500000"]), TOP, "admin_teams[0]",
     "expected a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "where", "key", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in MISTAKES],
)
def test_each_mistake_names_file_community_and_key(
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], None],
    where: tuple[str | None, str | None],
    key: str,
    fragment: str,
) -> None:
    path = _write(tmp_path, _mutated(mutate))
    with pytest.raises(CommunitiesError) as info:
        load_communities(path)
    err = info.value
    message = str(err)
    matching = [p for p in err.problems if fragment in p.message]
    assert matching, f"no problem mentions {fragment!r}:\n{message}"
    problem = matching[0]
    community, team = where
    assert problem.community == community
    assert problem.team_id == team
    assert problem.key is not None and problem.key.startswith(key), problem.key
    line = problem.format(str(path))
    assert line in message.splitlines()
    assert line.startswith(str(path))
    if community is not None:
        team_text = f" (team {team})" if team else ""
        assert f"community {community!r}{team_text}: {problem.key}: " in line
    else:
        assert f": {problem.key}: " in line
    assert err.path == str(path)
    assert problem.line is not None and problem.line >= 1


def test_example_message_format(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(_set("communities.0.disk_gb.min", 600)))
    with pytest.raises(CommunitiesError) as info:
        load_communities(path)
    err = info.value
    assert (err.community, err.key) == ("ad-portal", "disk_gb")
    assert f"{path}:" in str(err)
    assert str(err).endswith(
        ": community 'ad-portal' (team 3500001): disk_gb: min 600 is greater than max 500"
    )
    assert isinstance(err, ValueError)


def _text_error(tmp_path: Path, text: str | bytes) -> CommunitiesError:
    path = tmp_path / "communities.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(CommunitiesError) as info:
        load_communities(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(CommunitiesError) as info:
        load_communities(path)
    assert str(info.value) == f"{path}: file not found"
    assert info.value.community is None and info.value.key is None


def test_directory_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(CommunitiesError, match="is a directory"):
        load_communities(tmp_path)
    assert "not UTF-8" in str(_text_error(tmp_path, b"communities: \xff\xfe\n"))


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = SHIPPED_TEXT.replace("    region: us-east-1", "    region: [us-east-1", 1)
    err = _text_error(tmp_path, text)
    assert "YAML syntax error, column" in str(err)
    assert err.line is not None and err.line > 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- id: ad-portal\n", "must be a mapping of keys, not a list"),
        ("just text\n", "must be a mapping of keys, not the string 'just text'"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("communities: !!int abc\n", "explicit YAML tag"),
        ("communities: &x [*x]\n", "alias refers to a value that contains it"),
    ],
)
def test_file_level_mistakes(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in str(_text_error(tmp_path, text))


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = SHIPPED_TEXT.replace(
        "    region: us-east-1", "    region: us-east-1\n    region: us-west-2", 1
    )
    err = _text_error(tmp_path, text)
    (problem,) = err.problems
    assert (problem.community, problem.key) == ("ad-portal", "region")
    assert "key 'region' appears twice" in problem.message


def test_non_string_key(tmp_path: Path) -> None:
    text = SHIPPED_TEXT.replace("      CostCenter: AD-123", "      2024: AD-123", 1)
    err = _text_error(tmp_path, text)
    assert any(
        p.community == "ad-portal" and p.key == 'tags["2024"]' and "quote it" in p.message
        for p in err.problems
    )


def test_x_keys_hold_shared_anchors(tmp_path: Path) -> None:
    shared = "x-network: &network\n  security_groups: [sg-0123456789abcdef0]\n"
    text = shared + SHIPPED_TEXT.replace(
        "    security_groups:\n      - sg-0b2c3d4e5f6071829\n", "    <<: *network\n", 1
    )
    config = parse_communities(text)
    assert config.by_id("nf-osc").security_groups == ("sg-0123456789abcdef0",)
    with pytest.raises(CommunitiesError, match="unknown key 'y-network'"):
        parse_communities(text.replace("x-network:", "y-network:"))


def test_nan_price_in_table_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_INSTANCE_TYPES_PATH.read_text(encoding="utf-8"))
    data["instance_types"]["t3.large"]["price_per_hour"] = math.nan
    table = _write(tmp_path, data, "instance_types.yaml")
    with pytest.raises(CommunitiesError, match=r"price_per_hour: nan is not a finite number"):
        load_instance_types(table)


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    def several(data: dict[str, Any]) -> None:
        _ad(data)["disk_gb"]["min"] = 600
        _ad(data)["ami"] = "ami-1"
        _nf(data)["instance_types"]["allowed"][0] = "m5.larg"
        _nf(data)["tags"]["aws:x"] = "y"
        data["defaults"]["dormancy"] = 3

    path = _write(tmp_path, _mutated(several))
    with pytest.raises(CommunitiesError) as info:
        load_communities(path)
    err = info.value
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems) == 5
    assert all(line.startswith(f"{path}:") for line in lines)
    found = {(p.community, p.key) for p in err.problems}
    assert found == {
        (None, "defaults.dormancy"),
        ("ad-portal", "disk_gb"),
        ("ad-portal", "ami"),
        ("nf-osc", "instance_types.allowed[0]"),
        ("nf-osc", 'tags["aws:x"]'),
    }
    # Problems come in file order, so the first one is the first in the file.
    assert [p.line for p in err.problems] == sorted(p.line or 0 for p in err.problems)
    assert (err.community, err.key) == (None, "defaults.dormancy")


def test_parse_communities_from_text() -> None:
    config = parse_communities(SHIPPED_TEXT, source="inline.yaml")
    assert [c.id for c in config.communities] == ["ad-portal", "nf-osc"]
    with pytest.raises(CommunitiesError, match=r"^inline\.yaml:\d+: community 'ad-portal'"):
        parse_communities(
            SHIPPED_TEXT.replace("ami-0123456789abcdef0", "ami-x"), source="inline.yaml"
        )


# --------------------------------------------------------------------------------------------
# snh check
# --------------------------------------------------------------------------------------------


def test_cli_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check"]) == 0
    assert capsys.readouterr().out.strip() == "OK: 2 communities, 1 admin teams"
    assert cli_main(["check", "-v", str(DEFAULT_COMMUNITIES_PATH)]) == 0
    assert "g4dn.xlarge: 4 vCPU, 16 GiB, 1 GPU" in capsys.readouterr().out


def test_cli_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _mutated(_set("communities.0.disk_gb.min", 600)))
    assert cli_main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    assert "community 'ad-portal' (team 3500001): disk_gb: min 600" in captured.err
    assert cli_main(["check", str(tmp_path / "missing.yaml")]) == 1


def test_cli_exit_code_as_a_process(tmp_path: Path) -> None:
    """One real process (importing jsonschema costs ~1 s here); the OK path is tested above."""
    bad = _write(tmp_path, _mutated(_set("communities.0.ami", "ami-1")))
    failed = subprocess.run(
        [sys.executable, "-m", "operations", "check", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert f"{bad}:" in failed.stderr and "ami" in failed.stderr
    assert failed.stdout == ""


# --------------------------------------------------------------------------------------------
# Fuzzing: whatever an admin does to the file, the answer is a config or a CommunitiesError
# --------------------------------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


PATHS = _paths(BASE)[1:]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["t3.large", "ami-0123456789abcdef0", "3500001", "ad-portal", "aws:x", "", "jupyter"]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), children, max_size=4),
    ),
    max_leaves=10,
)
mutation = st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "add"]), values)


def _apply(data: Any, path: tuple[Any, ...], action: str, value: Any) -> None:
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, list):
        parent.insert(last, value)
    elif action == "add":
        parent[f"{last}_extra"] = value
    else:
        parent[last] = value


def _load_or_config_error(text: str) -> None:
    try:
        config = parse_communities(text, source="fuzz.yaml")
    except CommunitiesError as err:
        assert err.problems and str(err).startswith("fuzz.yaml")
    else:
        assert isinstance(config, CommunitiesConfig)


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_data_mutations(mutations: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(BASE)
    for path, action, value in mutations:
        try:
            _apply(data, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    _load_or_config_error(text)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SHIPPED_TEXT)),
            st.integers(min_value=0, max_value=40),
            st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#?,% \n\tab1")), max_size=6),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_text_edits(edits: list[tuple[int, int, str]]) -> None:
    text = SHIPPED_TEXT
    for start, length, insert in edits:
        start = min(start, len(text))
        text = text[:start] + insert + text[start + length :]
    _load_or_config_error(text)


def test_nan_and_huge_numbers_are_config_errors() -> None:
    for value in (math.nan, math.inf, 10**30, 50.5):
        data = _mutated(_set("communities.0.disk_gb.max", value))
        _load_or_config_error(yaml.safe_dump(data, sort_keys=False))
