"""The communities file's keys as a Markdown table, made from its JSON Schema.

The schema's descriptions are the one place each key is explained: the loader's error
messages, editors with schema support and the README all read them. The README's table is
generated here (``snh keys``) and a test compares the two, so a key added to
the schema cannot be missing from the documentation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("communities.schema.json")

#: Markers around the generated table in README.md.
README_START = "<!-- communities-keys:start (snh keys) -->"
README_END = "<!-- communities-keys:end -->"


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **rest}
    return node


def _rows(
    node: Mapping[str, Any], path: str, required: bool, defs: Mapping[str, Any]
) -> Iterator[tuple[str, bool, str]]:
    node = _resolve(node, defs)
    if path:
        yield path, required, " ".join(str(node.get("description", "")).split())
    needed = set(node.get("required", ()))
    for key, child in node.get("properties", {}).items():
        yield from _rows(child, f"{path}.{key}" if path else key, key in needed, defs)
    for pattern, child in node.get("patternProperties", {}).items():
        name = f"{pattern.lstrip('^')}…"
        yield from _rows(child, f"{path}.{name}" if path else name, False, defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        title = node.get("propertyNames", {}).get("title", "key").replace(" ", "-")
        yield from _rows(extra, f"{path}.<{title}>", False, defs)
    items = node.get("items")
    if isinstance(items, Mapping) and _resolve(items, defs).get("properties"):
        item = _resolve(items, defs)
        for key, child in item.get("properties", {}).items():
            needed_item = key in set(item.get("required", ()))
            yield from _rows(child, f"{path}[].{key}", needed_item, defs)


def key_table(schema: Mapping[str, Any] | None = None) -> str:
    """Every key of the communities file: path, whether required, and its description."""
    if schema is None:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    defs = schema.get("$defs", {})
    lines = ["| key | required | meaning |", "|---|---|---|"]
    for path, required, text in _rows(schema, "", False, defs):
        cell = text.replace("|", "\\|")
        lines.append(f"| `{path}` | {'yes' if required else ''} | {cell} |")
    return "\n".join(lines) + "\n"


def readme_table(readme: str) -> str | None:
    """The table between the markers in ``readme``, or None when the markers are missing."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        return None
    return readme[start + len(README_START) : end].strip("\n") + "\n"
