"""The communities file: which Synapse teams may use the hub, and what their servers get.

An admin edits ``communities.yaml``; the hub reads it once at start-up and every later decision
(who may log in, what the spawn form offers, what ``RunInstances`` asks for, which choices the
server accepts) is made from the frozen objects built here. Because a mistake in this file
would otherwise surface as a failed launch hours later, loading is strict: the JSON Schema
(``communities.schema.json``) checks the shape, Python checks what crosses keys and files, and
every problem found is reported at once, each naming the file, the community and the key.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from spawner.naming import RESERVED_TAG_PREFIXES, is_tag_text

from ._yaml_source import DataPath, YamlSource, parse_yaml

PACKAGE_DIR = Path(__file__).resolve().parent
#: The demo configuration shipped with the hub; ``snh check`` defaults to it.
DEFAULT_COMMUNITIES_PATH = PACKAGE_DIR / "communities.yaml"
#: The instance-type table every community's ``instance_types.allowed`` is checked against.
DEFAULT_INSTANCE_TYPES_PATH = PACKAGE_DIR / "instance_types.yaml"
#: The admin's reference for every key of the communities file.
COMMUNITIES_SCHEMA_PATH = PACKAGE_DIR / "communities.schema.json"
INSTANCE_TYPES_SCHEMA_PATH = PACKAGE_DIR / "instance_types.schema.json"

#: EC2 allows 50 tags per resource; the hub's own take 11 (``spawner.launch``).
MAX_EXTRA_TAGS = 39

#: Values a community gets when neither it nor ``defaults`` sets the key.
BUILTIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "max_servers_per_user": 1,
        "relay_ports": (22,),
        "idle_timeout_minutes": 60,
        "dormancy_days": 30,
        "root_volume_gb": 30,
        "snapshot_before_delete": True,
        "delete_on_termination": True,
    }
)

_PINNED_RE = re.compile(r"@sha256:[0-9a-f]{64}\Z")
_TEAM_ID_RE = re.compile(r"[1-9][0-9]{0,19}")
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[1-9][0-9]?")


# --------------------------------------------------------------------------------------------
# The objects the rest of the hub uses
# --------------------------------------------------------------------------------------------


class ImageKind(StrEnum):
    """What an image runs; the spawner starts and probes each kind differently."""

    JUPYTER = "jupyter"
    RSTUDIO = "rstudio"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class InstanceType:
    """One row of the instance-type table, priced for the region it is used in."""

    name: str
    vcpu: int
    memory_gib: float
    #: Estimated on-demand USD per hour (for a community's types: in the community's region).
    price_per_hour: float
    arch: str
    gpus: int = 0
    #: Per-region price overrides from the table; other regions use ``price_per_hour``.
    region_prices: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False
    )

    def price_in(self, region: str) -> float:
        """The estimate for ``region``, falling back to the base-region price."""
        return self.region_prices.get(region, self.price_per_hour)

    @property
    def label(self) -> str:
        """Spawn-form text, e.g. ``t3.large: 2 vCPU, 8 GiB, ~$0.083/h``."""
        gpu = f", {self.gpus} GPU" if self.gpus else ""
        memory = f"{self.memory_gib:g}"
        return f"{self.name}: {self.vcpu} vCPU, {memory} GiB{gpu}, ~${self.price_per_hour:.3f}/h"


@dataclass(frozen=True)
class Image:
    """One environment of the spawn form."""

    id: str
    display_name: str
    kind: ImageKind
    image: str

    @property
    def pinned(self) -> bool:
        """Whether the reference names one exact image (``@sha256:`` digest)."""
        return bool(_PINNED_RE.search(self.image))


@dataclass(frozen=True)
class DiskBounds:
    """Home-volume sizes in GiB a user may choose from."""

    min: int
    default: int
    max: int

    def __contains__(self, size: object) -> bool:
        return isinstance(size, int) and not isinstance(size, bool) and self.min <= size <= self.max


@dataclass(frozen=True)
class VolumePolicy:
    """What happens to the home volume when the instance is terminated (never on stop)."""

    #: Snapshot the home volume before terminating, so files can be restored later.
    snapshot_before_delete: bool = True
    #: EBS DeleteOnTermination of the home volume; False leaves it behind (billed).
    delete_on_termination: bool = True


@dataclass(frozen=True)
class AdminTeam:
    """A Synapse team whose members are hub admins."""

    team_id: str
    name: str


@dataclass(frozen=True)
class Community:
    """One Synapse team and everything its members' servers get, defaults applied."""

    id: str
    team_id: str
    name: str
    description: str
    region: str
    instance_profile_arn: str
    #: ``ami-…`` or ``resolve:ssm:<parameter>`` (both are valid RunInstances ImageId values).
    ami: str
    instance_types: tuple[InstanceType, ...]
    default_instance_type: str
    images: tuple[Image, ...]
    default_image: str
    disk_gb: DiskBounds
    root_volume_gb: int
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    #: Extra EC2 tags (``defaults.tags`` merged in); read-only.
    tags: Mapping[str, str] = field(hash=False)
    max_servers_per_user: int
    idle_timeout_minutes: int
    dormancy_days: int
    volume_policy: VolumePolicy
    #: Hours after its start at which the idle culler stops a server even if in use; None: never.
    max_age_hours: int | None = None
    #: Ports of a server its owner may reach through the hub's relay (``operations.relay``).
    relay_ports: tuple[int, ...] = (22,)
    #: Monthly budgets in USD (``operations.budget``); None: no budget.
    budget_usd_per_month: float | None = None
    user_budget_usd_per_month: float | None = None
    #: Whom users are told to ask about the budget.
    managers: tuple[str, ...] = ()
    #: Stop running servers over a budget, after the same warning as an idle cull.
    stop_over_budget: bool = False
    #: The home page's warning before a cull, and how long Keep running may keep a server
    #: (``operations.keep_running``).
    idle_warning_minutes: int = 10
    keep_running_hours: float = 4.0

    def instance_type(self, name: str) -> InstanceType | None:
        """The allowed type called ``name``; None means the choice must be refused."""
        return next((t for t in self.instance_types if t.name == name), None)

    def image(self, image_id: str) -> Image | None:
        """The image choice ``image_id``; None means the choice must be refused."""
        return next((i for i in self.images if i.id == image_id), None)

    @property
    def arch(self) -> str:
        """CPU architecture of all allowed types (the loader guarantees there is one)."""
        return self.instance_types[0].arch


@dataclass(frozen=True)
class CommunitiesConfig:
    """The loaded file: communities in file order, admin teams, and where it came from."""

    communities: tuple[Community, ...]
    admin_teams: tuple[AdminTeam, ...]
    source_path: Path
    #: Lines in the same form as errors, for things allowed but unwise (unpinned images, …).
    warnings: tuple[str, ...] = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> CommunitiesConfig:
        """Itself: it is immutable, and traitlets deep-copies every config value for every
        configurable it makes (one copy per spawner, otherwise)."""
        return self

    def by_team_id(self, team_id: str | int) -> Community | None:
        """The community of a Synapse team (ids compare as strings: Synapse sends strings)."""
        key = str(team_id)
        return next((c for c in self.communities if c.team_id == key), None)

    def by_id(self, community_id: str) -> Community | None:
        """The community with slug ``community_id`` (e.g. from a form or an instance tag)."""
        return next((c for c in self.communities if c.id == community_id), None)

    def for_teams(self, team_ids: Iterable[str | int]) -> list[Community]:
        """Communities a user in ``team_ids`` belongs to, in file order (= form order)."""
        member_of = {str(t) for t in team_ids}
        return [c for c in self.communities if c.team_id in member_of]

    @property
    def allowed_team_ids(self) -> tuple[str, ...]:
        """Teams whose members may log in: community teams, then admin teams, no repeats."""
        ids = [c.team_id for c in self.communities] + [t.team_id for t in self.admin_teams]
        return tuple(dict.fromkeys(ids))

    @property
    def admin_team_ids(self) -> tuple[str, ...]:
        return tuple(t.team_id for t in self.admin_teams)

    @property
    def team_names(self) -> dict[str, str]:
        """Team id → display name; a community's name wins over an admin team's name."""
        names = {t.team_id: t.name for t in self.admin_teams}
        names.update({c.team_id: c.name for c in self.communities})
        return names


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong (or, in ``warnings``, unwise) in a config file."""

    message: str
    #: Dotted key, relative to the community when ``community`` is set (``disk_gb.min``),
    #: else from the top of the file (``admin_teams[0].team_id``); None for file-level errors.
    key: str | None = None
    community: str | None = None
    team_id: str | None = None
    line: int | None = None

    def format(self, source: str) -> str:
        parts = [f"{source}:{self.line}" if self.line else source]
        if self.community is not None:
            team = f" (team {self.team_id})" if self.team_id else ""
            parts.append(f"community {self.community!r}{team}")
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class CommunitiesError(ValueError):
    """The communities file (or the instance-type table) cannot be used; the hub must not start.

    ``str(error)`` has one line per problem. ``path``, ``community`` and ``key`` describe the
    first problem, for callers that show only one; ``problems`` has them all.
    """

    def __init__(self, path: str | os.PathLike[str], problems: Iterable[ConfigProblem]):
        self.path = str(path)
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("CommunitiesError needs at least one problem")
        first = self.problems[0]
        self.community = first.community
        self.key = first.key
        self.line = first.line
        super().__init__("\n".join(p.format(self.path) for p in self.problems))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_instance_types(path: str | os.PathLike[str] | None = None) -> dict[str, InstanceType]:
    """Read the instance-type table (default: the shipped one), in file order.

    Cached per file version, because the hub, the CLI and tests read it many times.
    """
    table_path = Path(path) if path is not None else DEFAULT_INSTANCE_TYPES_PATH
    return dict(_read_instance_types(table_path))


@dataclass(frozen=True)
class PriceTable:
    """Where the prices come from and when they were taken (shown next to every estimate),
    and the EBS storage prices (None: the table has none; spend is then running hours only)."""

    as_of: str
    source: str
    ebs_gb_month: float | None = None
    snapshot_gb_month: float | None = None

    @property
    def note(self) -> str:
        return f"estimated from list prices of {self.as_of} ({self.source.rstrip('.')})"


def load_price_table(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The instance-type table's price notes and storage prices (validated as the table is)."""
    table_path = Path(path) if path is not None else DEFAULT_INSTANCE_TYPES_PATH
    load_instance_types(table_path)  # validates the file, or raises CommunitiesError
    data = yaml.safe_load(_read_text(table_path))
    storage = data.get("storage_prices") or {}
    return PriceTable(
        as_of=str(data["prices_as_of"]),
        source=" ".join(str(data["price_source"]).split()),
        ebs_gb_month=_optional_float(storage.get("ebs_gp3_gb_month")),
        snapshot_gb_month=_optional_float(storage.get("snapshot_gb_month")),
    )


def load_communities(
    path: str | os.PathLike[str],
    *,
    instance_types_path: str | os.PathLike[str] | None = None,
) -> CommunitiesConfig:
    """Read and check a communities file; raise ``CommunitiesError`` listing every problem."""
    table_path = (
        Path(instance_types_path)
        if instance_types_path is not None
        else DEFAULT_INSTANCE_TYPES_PATH
    )
    table = _read_instance_types(table_path)
    text = _read_text(path)
    return parse_communities(
        text, source=path, instance_types=dict(table), instance_types_source=str(table_path)
    )


def parse_communities(
    text: str,
    *,
    source: str | os.PathLike[str] = "<string>",
    instance_types: Mapping[str, InstanceType] | None = None,
    instance_types_source: str | None = None,
) -> CommunitiesConfig:
    """Check communities YAML given as text; for tests and tools that do not have a file.

    ``source`` only names the text in messages. ``instance_types`` defaults to the shipped
    table.
    """
    if instance_types is None:
        instance_types = load_instance_types()
        instance_types_source = instance_types_source or str(DEFAULT_INSTANCE_TYPES_PATH)
    table_name = instance_types_source or "the instance-type table"
    doc = _parse_text(text, source, what="communities file")
    report = _Report(doc)
    if isinstance(doc.data, dict):
        report.extend_schema(_communities_validator(), doc.data)
        _check_semantics(doc.data, instance_types, table_name, report)
    report.raise_if_errors(source)
    return _build_config(
        doc.data, instance_types, Path(source), tuple(report.warning_lines(source))
    )


# --------------------------------------------------------------------------------------------
# File and YAML handling
# --------------------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = ConfigProblem("file not found")
    except IsADirectoryError:
        problem = ConfigProblem("is a directory, not a file")
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(f"is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        problem = ConfigProblem(f"cannot be read: {exc.strerror or exc}")
    raise CommunitiesError(path, [problem])


def _parse_text(text: str, source: str | os.PathLike[str], *, what: str) -> YamlSource:
    try:
        doc = parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        detail = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
        problem = ConfigProblem(f"YAML syntax error{column}: {detail}", line=line)
        raise CommunitiesError(source, [problem]) from exc
    except yaml.YAMLError as exc:
        raise CommunitiesError(source, [ConfigProblem(f"YAML error: {exc}")]) from exc
    if doc.data is None and not doc.problems:
        raise CommunitiesError(source, [ConfigProblem(f"the {what} is empty")])
    if doc.data is not None and not isinstance(doc.data, dict):
        got = _describe_type(doc.data)
        raise CommunitiesError(
            source, [ConfigProblem(f"the {what} must be a mapping of keys, not {got}", line=1)]
        )
    return doc


def _read_instance_types(path: Path) -> tuple[tuple[str, InstanceType], ...]:
    try:
        stat = path.stat()
    except OSError:
        return _parse_instance_types(_read_text(path), str(path))  # _read_text raises
    return _read_instance_types_cached(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _read_instance_types_cached(
    path: str, _mtime_ns: int, _size: int
) -> tuple[tuple[str, InstanceType], ...]:
    return _parse_instance_types(_read_text(path), path)


def _parse_instance_types(text: str, path: str) -> tuple[tuple[str, InstanceType], ...]:
    doc = _parse_text(text, path, what="instance-type table")
    report = _Report(doc)
    if isinstance(doc.data, dict):
        report.extend_schema(_instance_types_validator(), doc.data)
        _check_finite_numbers(doc.data, (), report)
    report.raise_if_errors(path)
    rows = []
    for name, row in doc.data["instance_types"].items():
        rows.append(
            (
                name,
                InstanceType(
                    name=name,
                    vcpu=int(row["vcpu"]),
                    memory_gib=float(row["memory_gib"]),
                    price_per_hour=float(row["price_per_hour"]),
                    arch=row["arch"],
                    gpus=int(row.get("gpus", 0)),
                    region_prices=MappingProxyType(
                        {r: float(p) for r, p in row.get("region_prices", {}).items()}
                    ),
                ),
            )
        )
    return tuple(rows)


def _check_finite_numbers(value: Any, path: DataPath, report: _Report) -> None:
    """JSON Schema lets ``.nan`` through every bound (NaN compares false); a price must not."""
    if isinstance(value, float) and not math.isfinite(value):
        report.error(path, f"{value!r} is not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite_numbers(item, (*path, key), report)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite_numbers(item, (*path, index), report)


# --------------------------------------------------------------------------------------------
# Schema validation, translated into admin language
# --------------------------------------------------------------------------------------------


# jsonschema is imported where it is used, not with this module: importing it loads its
# optional format checkers (rfc3987-syntax builds a grammar, about a second), and the modules
# that read settings (`hub_config.settings`, hence ``snh ssh-proxy`` on a laptop, run once
# per SSH connection) import this package without validating anything.


def _pattern_keyword(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    import jsonschema  # see above

    # Python's `$` also matches before a final newline (ECMA's does not): a YAML block scalar
    # "ami-0123…\n" must not pass as an AMI id.
    if validator.is_type(instance, "string") and (
        not re.search(pattern, instance) or (pattern.endswith("$") and instance.endswith("\n"))
    ):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def _validator_class() -> Any:
    import jsonschema.validators  # see above

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"pattern": _pattern_keyword}
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@lru_cache(maxsize=1)
def _communities_schema() -> dict[str, Any]:
    return json.loads(COMMUNITIES_SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _communities_validator() -> Any:
    schema = _communities_schema()
    _validator_class().check_schema(schema)
    return _validator_class()(schema)


@lru_cache(maxsize=1)
def _instance_types_validator() -> Any:
    schema = json.loads(INSTANCE_TYPES_SCHEMA_PATH.read_text(encoding="utf-8"))
    _validator_class().check_schema(schema)
    return _validator_class()(schema)


@lru_cache(maxsize=1)
def _image_reference_re() -> re.Pattern[str]:
    image_schema = _communities_schema()["$defs"]["image"]["properties"]["image"]
    return re.compile(image_schema["pattern"])


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}


def _describe_type(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({_short(value)})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close_key(key: str, known: list[str]) -> list[str]:
    """The allowed key an admin most likely meant (typo, or a shortened long name)."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close and len(key) >= 4:
        close = [k for k in known if key.lower() in k][:1]
    return close


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def _translate_schema_error(err: Any) -> Iterator[tuple[DataPath, str]]:
    """Turn one jsonschema error into (path, message) pairs an admin can act on."""
    path: DataPath = tuple(err.absolute_path)
    keyword = err.validator
    value = err.validator_value
    instance = err.instance
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    noun = schema.get("title", "value")
    example = schema.get("examples", [None])[0]
    hint = f" (expected something like {example!r})" if example is not None else ""
    schema_path = list(err.absolute_schema_path)

    if len(schema_path) >= 2 and schema_path[-2] == "propertyNames":
        # jsonschema reports a bad key at its parent's path with the key as the instance.
        key = str(instance)
        if keyword == "pattern":
            yield (*path, key), f"{key!r} is not a valid {noun}{hint}"
        elif keyword == "maxLength":
            yield (*path, key), f"{noun} is longer than {value} characters ({len(key)})"
        elif keyword == "minLength":
            yield (*path, key), f"{noun} must not be empty"
        else:
            yield (*path, key), err.message
    elif keyword == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        for key in instance:
            if key in known or any(re.search(p, str(key)) for p in patterns):
                continue
            close = _close_key(str(key), known)
            if close:
                advice = f"; did you mean {close[0]!r}?"
            else:
                advice = f"; allowed keys here: {', '.join(known)}"
            yield (*path, key), f"unknown key {key!r}{advice}"
    elif keyword == "required" and isinstance(instance, dict):
        for key in value:
            if key not in instance:
                yield (*path, key), "required key is missing"
    elif keyword == "type":
        types = [value] if isinstance(value, str) else list(value)
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
        quote = ""
        if "string" in types and instance is not None and not isinstance(instance, dict | list):
            quote = " (quote it in YAML)"
        yield path, f"expected {expected}, got {_describe_type(instance)}{quote}"
    elif keyword == "pattern":
        yield path, f"{_short(instance)} is not a valid {noun}{hint}"
    elif keyword == "enum":
        yield path, f"{_short(instance)} is not one of: {', '.join(repr(v) for v in value)}"
    elif keyword == "minimum":
        yield path, f"{instance!r} is less than the minimum {value}"
    elif keyword == "maximum":
        yield path, f"{instance!r} is more than the maximum {value}"
    elif keyword == "exclusiveMinimum":
        yield path, f"{instance!r} must be greater than {value}"
    elif keyword == "minLength":
        yield path, "must not be empty" if value == 1 else f"is shorter than {value} characters"
    elif keyword == "maxLength":
        yield path, f"is longer than {value} characters ({len(instance)})"
    elif keyword == "minItems":
        if path == ("communities",):
            yield path, "no communities defined; the file needs at least one community"
        else:
            yield path, f"needs at least {_entries(value)}"
    elif keyword in ("maxItems", "maxProperties"):
        yield path, f"has {len(instance)} entries; at most {value} allowed"
    elif keyword == "minProperties":
        yield path, f"needs at least {_entries(value)}"
    elif keyword == "uniqueItems" and isinstance(instance, list):
        seen: list[Any] = []
        duplicates: list[Any] = []
        for item in instance:
            if item in seen and item not in duplicates:
                duplicates.append(item)
            seen.append(item)
        yield path, f"duplicate entries: {', '.join(_short(d) for d in duplicates)}"
    else:
        yield path, err.message


# --------------------------------------------------------------------------------------------
# Problem collection
# --------------------------------------------------------------------------------------------


class _Report:
    """Collects problems by data path and words each one for the community it belongs to."""

    def __init__(self, doc: YamlSource):
        self.doc = doc
        self.errors: dict[tuple[DataPath, str], None] = {}
        self.warnings: dict[tuple[DataPath, str], None] = {}
        for path, message in doc.problems:
            self.error(path, message)

    def error(self, path: DataPath, message: str) -> None:
        self.errors[(tuple(path), message)] = None

    def warning(self, path: DataPath, message: str) -> None:
        self.warnings[(tuple(path), message)] = None

    def extend_schema(self, validator: Any, data: Any) -> None:
        for err in validator.iter_errors(data):
            for path, message in _translate_schema_error(err):
                self.error(path, message)

    def _problem(self, path: DataPath, message: str) -> ConfigProblem:
        data = self.doc.data
        community = team = None
        key_path = path
        communities = data.get("communities") if isinstance(data, dict) else None
        if (
            len(path) >= 2
            and path[0] == "communities"
            and isinstance(path[1], int)
            and isinstance(communities, list)
            and 0 <= path[1] < len(communities)
            and isinstance(communities[path[1]], dict)
        ):
            entry = communities[path[1]]
            if isinstance(entry.get("id"), str):
                community = entry["id"]
                team = _team_id_or_none(entry.get("team_id"))
                key_path = path[2:] or ("id",)
        return ConfigProblem(
            message=message,
            key=_format_key(key_path) or None,
            community=community,
            team_id=team,
            line=self.doc.line_of(path),
        )

    def _sorted(self, entries: Iterable[tuple[DataPath, str]]) -> list[ConfigProblem]:
        problems = [self._problem(path, message) for path, message in entries]
        return sorted(problems, key=lambda p: (p.line or 0, p.key or ""))

    def raise_if_errors(self, source: str | os.PathLike[str]) -> None:
        if self.errors:
            raise CommunitiesError(source, self._sorted(self.errors))

    def warning_lines(self, source: str | os.PathLike[str]) -> list[str]:
        return [p.format(str(source)) for p in self._sorted(self.warnings)]


_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _format_key(path: DataPath) -> str:
    """``("disk_gb", "min")`` → ``disk_gb.min``; odd keys are quoted: ``tags["aws:x"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _team_id_or_none(value: Any) -> str | None:
    """Normalise a team id as YAML may give it (``3500001`` or ``"3500001"``) to a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and _TEAM_ID_RE.fullmatch(value):
        return value
    return None


# --------------------------------------------------------------------------------------------
# Checks a schema cannot express
# --------------------------------------------------------------------------------------------
#
# They run even when the schema found problems, so an admin sees everything in one pass; each
# check therefore looks only at values of the type it expects and skips anything else.


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def _check_semantics(
    data: dict[str, Any],
    table: Mapping[str, InstanceType],
    table_name: str,
    report: _Report,
) -> None:
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    _check_tags(defaults.get("tags"), ("defaults", "tags"), report)

    admin_teams = data.get("admin_teams")
    if isinstance(admin_teams, list):
        first_admin: dict[str, int] = {}
        for i, entry in enumerate(admin_teams):
            team = _team_id_or_none(entry.get("team_id")) if isinstance(entry, dict) else None
            if team is None:
                continue
            if team in first_admin:
                report.error(
                    ("admin_teams", i, "team_id"),
                    f"team {team} is listed twice (also admin_teams[{first_admin[team]}])",
                )
            else:
                first_admin[team] = i

    communities = data.get("communities")
    if not isinstance(communities, list):
        return
    first_id: dict[str, str] = {}
    first_team: dict[str, str] = {}
    for i, entry in enumerate(communities):
        if not isinstance(entry, dict):
            continue
        where: DataPath = ("communities", i)
        label = f"communities[{i}]"
        cid = entry.get("id")
        if isinstance(cid, str):
            label = repr(cid)
            if cid in first_id:
                report.error(
                    (*where, "id"), f"duplicate community id (also used by {first_id[cid]})"
                )
            else:
                first_id[cid] = f"communities[{i}]"
        team = _team_id_or_none(entry.get("team_id"))
        if team is not None:
            if team in first_team:
                report.error(
                    (*where, "team_id"),
                    f"team {team} is already the team of community {first_team[team]}; "
                    "two communities may not share a team",
                )
            else:
                first_team[team] = label
        _check_instance_types(
            entry.get("instance_types"), (*where, "instance_types"), table, table_name, report
        )
        _check_images(entry.get("images"), (*where, "images"), report)
        _check_disk(entry.get("disk_gb"), (*where, "disk_gb"), report)
        _check_tags(entry.get("tags"), (*where, "tags"), report)
        _check_tag_count(defaults.get("tags"), entry.get("tags"), (*where, "tags"), report)
        _check_partition(entry, where, report)
        _check_volume_policy(
            defaults.get("volume_policy"), entry.get("volume_policy"), where, report
        )


def _check_instance_types(
    spec: Any,
    where: DataPath,
    table: Mapping[str, InstanceType],
    table_name: str,
    report: _Report,
) -> None:
    if not isinstance(spec, dict):
        return
    allowed = spec.get("allowed")
    names = [n for n in allowed if isinstance(n, str)] if isinstance(allowed, list) else []
    if isinstance(allowed, list):
        for j, name in enumerate(allowed):
            if isinstance(name, str) and name not in table:
                report.error((*where, "allowed", j), _unknown_type_message(name, table, table_name))
    default = spec.get("default")
    if isinstance(default, str) and isinstance(allowed, list) and default not in names:
        report.error(
            (*where, "default"),
            f"{default!r} is not one of the allowed types ({', '.join(names) or 'none'})",
        )
    by_arch: dict[str, list[str]] = {}
    for name in names:
        if name in table:
            by_arch.setdefault(table[name].arch, []).append(name)
    if len(by_arch) > 1:
        mix = " and ".join(f"{arch} ({', '.join(types)})" for arch, types in by_arch.items())
        report.error(
            (*where, "allowed"),
            f"mixes CPU architectures {mix}; one AMI and one set of images serve one "
            "architecture, so make a separate community for the other",
        )


def _unknown_type_message(name: str, table: Mapping[str, InstanceType], table_name: str) -> str:
    known = list(table)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    family = name.split(".", 1)[0]
    examples = [k for k in known if k.split(".", 1)[0] == family][:5] or known[:5]
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown instance type {name!r}{guess}; known types include {', '.join(examples)}; "
        f"every type must be listed in {table_name}"
    )


def _check_images(spec: Any, where: DataPath, report: _Report) -> None:
    if not isinstance(spec, dict):
        return
    choices = spec.get("choices")
    default = spec.get("default")
    if isinstance(default, str) and isinstance(choices, dict) and default not in choices:
        report.error(
            (*where, "default"),
            f"{default!r} is not one of the image choices ({', '.join(choices) or 'none'})",
        )
    if not isinstance(choices, dict):
        return
    reference_re = _image_reference_re()
    for image_id, choice in choices.items():
        if not isinstance(choice, dict):
            continue
        ref = choice.get("image")
        if not isinstance(ref, str) or not reference_re.search(ref) or _PINNED_RE.search(ref):
            continue
        path = (*where, "choices", image_id, "image")
        if choice.get("allow_unpinned") is True:
            report.warning(
                path, f"{ref!r} is not pinned by digest (allowed by allow_unpinned: true)"
            )
        else:
            report.error(
                path,
                f"{ref!r} is not pinned by digest; use 'name@sha256:<64 hex digits>' so every "
                "server runs the same image, or set allow_unpinned: true (development only)",
            )


def _check_disk(spec: Any, where: DataPath, report: _Report) -> None:
    if not isinstance(spec, dict):
        return
    low, default, high = spec.get("min"), spec.get("default"), spec.get("max")
    if _is_int(low) and _is_int(high) and low > high:
        report.error(where, f"min {low:g} is greater than max {high:g}")
    elif _is_int(default) and _is_int(low) and _is_int(high) and not low <= default <= high:
        report.error(
            (*where, "default"), f"default {default:g} is outside [min {low:g}, max {high:g}]"
        )


def _check_tags(tags: Any, where: DataPath, report: _Report) -> None:
    if not isinstance(tags, dict):
        return
    allowed = "letters, digits, spaces and _ . : / = + - @"
    for key, value in tags.items():
        path = (*where, key)
        folded = key.casefold()
        reserved = next((p for p in RESERVED_TAG_PREFIXES if folded.startswith(p)), None)
        if reserved:
            report.error(
                path,
                f"tag key {key!r} starts with the reserved prefix {reserved!r} "
                f"(reserved: {', '.join(RESERVED_TAG_PREFIXES)})",
            )
        elif not is_tag_text(key):
            report.error(path, f"tag key {key!r} has characters EC2 does not allow; use {allowed}")
        if isinstance(value, str) and not is_tag_text(value):
            report.error(
                path, f"tag value {_short(value)} has characters EC2 does not allow; use {allowed}"
            )


def _check_tag_count(defaults_tags: Any, tags: Any, where: DataPath, report: _Report) -> None:
    if not isinstance(tags, dict) or not isinstance(defaults_tags, dict):
        return
    merged = {**defaults_tags, **tags}
    if len(merged) > MAX_EXTRA_TAGS:
        report.error(
            where,
            f"{len(merged)} tags together with defaults.tags; at most {MAX_EXTRA_TAGS} allowed",
        )


def _region_partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    if region.startswith("us-iso-"):
        return "aws-iso"
    if region.startswith("eu-isoe-"):
        return "aws-iso-e"
    return "aws"


def _check_partition(entry: dict[str, Any], where: DataPath, report: _Report) -> None:
    region, arn = entry.get("region"), entry.get("instance_profile_arn")
    if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
        return
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        return
    parts = arn.split(":")
    expected = _region_partition(region)
    if parts[1] != expected:
        report.error(
            (*where, "instance_profile_arn"),
            f"ARN partition {parts[1]!r} does not match region {region!r} (partition {expected!r})",
        )


def _check_volume_policy(defaults: Any, policy: Any, where: DataPath, report: _Report) -> None:
    merged = {**(defaults if isinstance(defaults, dict) else {})}
    merged.update(policy if isinstance(policy, dict) else {})
    snapshot = merged.get("snapshot_before_delete", BUILTIN_DEFAULTS["snapshot_before_delete"])
    delete = merged.get("delete_on_termination", BUILTIN_DEFAULTS["delete_on_termination"])
    if snapshot is False and delete is True:
        report.warning(
            (*where, "volume_policy"),
            "home volumes are deleted with their instance and not snapshotted: users lose "
            "their files when a server is deleted or reaped for dormancy",
        )


# --------------------------------------------------------------------------------------------
# Building the frozen objects (only from data that passed every check)
# --------------------------------------------------------------------------------------------


def _build_config(
    data: dict[str, Any],
    table: Mapping[str, InstanceType],
    source: Path,
    warnings: tuple[str, ...],
) -> CommunitiesConfig:
    defaults = data.get("defaults", {})
    admin_teams = tuple(
        AdminTeam(team_id=tid, name=entry.get("name", f"team {tid}"))
        for entry in data.get("admin_teams", [])
        for tid in [_require_team_id(entry["team_id"])]
    )
    communities = tuple(_build_community(c, defaults, table) for c in data["communities"])
    return CommunitiesConfig(
        communities=communities, admin_teams=admin_teams, source_path=source, warnings=warnings
    )


def _require_team_id(value: Any) -> str:
    team = _team_id_or_none(value)
    if team is None:  # pragma: no cover - the schema rejects it first
        raise AssertionError(f"unchecked team id {value!r}")
    return team


def _build_community(
    entry: dict[str, Any], defaults: dict[str, Any], table: Mapping[str, InstanceType]
) -> Community:
    def setting(key: str) -> int:
        return int(entry.get(key, defaults.get(key, BUILTIN_DEFAULTS[key])))

    region = entry["region"]
    allowed = entry["instance_types"]["allowed"]
    types = tuple(replace(table[n], price_per_hour=table[n].price_in(region)) for n in allowed)
    choices = entry["images"]["choices"]
    images = tuple(
        Image(id=i, display_name=c["display_name"], kind=ImageKind(c["kind"]), image=c["image"])
        for i, c in choices.items()
    )
    disk = entry["disk_gb"]
    policy = {**defaults.get("volume_policy", {}), **entry.get("volume_policy", {})}
    tags = {**defaults.get("tags", {}), **entry.get("tags", {})}
    return Community(
        id=entry["id"],
        team_id=_require_team_id(entry["team_id"]),
        name=entry["name"],
        description=entry.get("description", ""),
        region=region,
        instance_profile_arn=entry["instance_profile_arn"],
        ami=entry["ami"],
        instance_types=types,
        default_instance_type=entry["instance_types"].get("default", allowed[0]),
        images=images,
        default_image=entry["images"].get("default", next(iter(choices))),
        disk_gb=DiskBounds(
            min=int(disk["min"]), default=int(disk["default"]), max=int(disk["max"])
        ),
        root_volume_gb=setting("root_volume_gb"),
        subnets=tuple(entry["subnets"]),
        security_groups=tuple(entry["security_groups"]),
        tags=MappingProxyType(tags),
        max_servers_per_user=setting("max_servers_per_user"),
        idle_timeout_minutes=setting("idle_timeout_minutes"),
        dormancy_days=setting("dormancy_days"),
        max_age_hours=entry.get("max_age_hours", defaults.get("max_age_hours")),
        budget_usd_per_month=_optional_float(entry.get("budget_usd_per_month")),
        user_budget_usd_per_month=_optional_float(entry.get("user_budget_usd_per_month")),
        managers=tuple(entry.get("managers", ())),
        stop_over_budget=bool(entry.get("stop_over_budget", False)),
        idle_warning_minutes=int(entry.get("idle_warning_minutes", 10)),
        keep_running_hours=float(entry.get("keep_running_hours", 4)),
        relay_ports=tuple(
            int(p)
            for p in entry.get(
                "relay_ports", defaults.get("relay_ports", BUILTIN_DEFAULTS["relay_ports"])
            )
        ),
        volume_policy=VolumePolicy(
            snapshot_before_delete=policy.get(
                "snapshot_before_delete", BUILTIN_DEFAULTS["snapshot_before_delete"]
            ),
            delete_on_termination=policy.get(
                "delete_on_termination", BUILTIN_DEFAULTS["delete_on_termination"]
            ),
        ),
    )
