"""``snh check [PATH]``: validate a communities file before a deploy;
``snh keys``: the file's keys as the README's Markdown table.

The hub refuses to start on a bad file; running the same loader from a shell lets an admin
find every problem before the hub is restarted, not after.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hub_config.communities import (
    DEFAULT_COMMUNITIES_PATH,
    CommunitiesConfig,
    CommunitiesError,
    load_communities,
)
from hub_config.schema_docs import key_table


def _summary(config: CommunitiesConfig) -> list[str]:
    lines = []
    for c in config.communities:
        lines.append(f"{c.id} (team {c.team_id}, {c.region}): {c.name}")
        lines.append("  instance types: " + "; ".join(t.label for t in c.instance_types))
        images = ", ".join(f"{i.id} [{i.kind}]" for i in c.images)
        lines.append(f"  images: {images}; default {c.default_image}")
        d = c.disk_gb
        lines.append(f"  home disk: {d.min}-{d.max} GiB, default {d.default}")
    for t in config.admin_teams:
        lines.append(f"admin team {t.team_id}: {t.name}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="snh",
        description="Tools for the Synapse Notebook Hub configuration files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="validate a communities file",
        description="Validate a communities file as the hub does at start-up. "
        "Exit status 0: usable; 1: problems (all listed, one per line).",
    )
    check.add_argument(
        "path",
        nargs="?",
        default=str(DEFAULT_COMMUNITIES_PATH),
        help="communities file (default: the shipped %(default)s)",
    )
    check.add_argument(
        "--instance-types",
        metavar="PATH",
        help="instance-type table (default: the shipped hub_config/instance_types.yaml)",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="fail on warnings too (e.g. unpinned images); use for production",
    )
    check.add_argument(
        "-v", "--verbose", action="store_true", help="print what each community offers"
    )
    commands.add_parser(
        "keys",
        help="print every key of the communities file as a Markdown table",
        description="Print every key of the communities file, from its JSON Schema, as the "
        "Markdown table the README holds.",
    )
    args = parser.parse_args(argv)
    if args.command == "keys":
        print(key_table(), end="")
        return 0

    try:
        config = load_communities(args.path, instance_types_path=args.instance_types)
    except CommunitiesError as err:
        print(err, file=sys.stderr)
        print(f"FAILED: {len(err.problems)} problem(s)", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.strict and config.warnings:
        print(f"FAILED (--strict): {len(config.warnings)} warning(s)", file=sys.stderr)
        return 1
    if args.verbose:
        print("\n".join(_summary(config)))
    print(f"OK: {len(config.communities)} communities, {len(config.admin_teams)} admin teams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
