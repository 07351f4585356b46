"""Admin-edited configuration of the hub: communities, admin teams and the instance-type table.

Everything the hub needs from ``hub_config/`` is loaded through this package so that one
strict loader decides what a valid file is (see ``communities.schema.json`` for every key).
"""

from .communities import (
    BUILTIN_DEFAULTS,
    COMMUNITIES_SCHEMA_PATH,
    DEFAULT_COMMUNITIES_PATH,
    DEFAULT_INSTANCE_TYPES_PATH,
    INSTANCE_TYPES_SCHEMA_PATH,
    AdminTeam,
    CommunitiesConfig,
    CommunitiesError,
    Community,
    ConfigProblem,
    DiskBounds,
    Image,
    ImageKind,
    InstanceType,
    VolumePolicy,
    load_communities,
    load_instance_types,
    parse_communities,
)

__all__ = [
    "BUILTIN_DEFAULTS",
    "COMMUNITIES_SCHEMA_PATH",
    "DEFAULT_COMMUNITIES_PATH",
    "DEFAULT_INSTANCE_TYPES_PATH",
    "INSTANCE_TYPES_SCHEMA_PATH",
    "AdminTeam",
    "CommunitiesConfig",
    "CommunitiesError",
    "Community",
    "ConfigProblem",
    "DiskBounds",
    "Image",
    "ImageKind",
    "InstanceType",
    "VolumePolicy",
    "load_communities",
    "load_instance_types",
    "parse_communities",
]
