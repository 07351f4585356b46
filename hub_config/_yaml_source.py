"""Parse a YAML config file and remember where each value came from.

PyYAML's ``safe_load`` returns plain data and forgets line numbers, silently keeps the last of
two equal keys and accepts ``yes:``/``1:`` as non-string keys. An admin who mistypes a file
deserves to hear about all three, at the right line, so this module composes the node graph
first (same safe constructors as ``safe_load``), records the line of every value, reports
duplicate and non-string keys, and only then builds the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

#: A location inside the parsed data: mapping keys (always ``str``) and sequence indices.
DataPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: libyaml's parser when PyYAML was built with it (several times faster), same safe constructors.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class YamlSource:
    """Parsed data plus what the loader needs to point at the offending line."""

    data: Any
    lines: dict[DataPath, int] = field(default_factory=dict)
    #: ``(path, message)`` for duplicate keys, non-string keys and self-referencing aliases.
    problems: list[tuple[DataPath, str]] = field(default_factory=list)

    def line_of(self, path: DataPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor when the key itself is missing."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


class YamlValueError(yaml.YAMLError):
    """A value PyYAML could parse but not construct (e.g. ``!!int abc``)."""


class _RecursiveAlias(Exception):
    pass


def parse_yaml(text: str) -> YamlSource:
    """Parse one YAML document; raises ``yaml.YAMLError`` on a syntax error."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlSource(data=None)
        source = YamlSource(data=None)
        try:
            _walk(loader, node, (), set(), source)
            data = loader.construct_document(node)
        except _RecursiveAlias:
            # Constructing a self-containing structure would make every later step recurse
            # forever; the problem recorded by _walk is the whole answer.
            return source
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            # Explicit tags such as `!!int abc` or `!!timestamp x` fail inside PyYAML's
            # constructors with plain Python errors; they are still mistakes in the file.
            raise YamlValueError(f"a value with an explicit YAML tag is invalid: {exc}") from exc
    finally:
        loader.dispose()
    source.data = _stringify_keys(data, (), source)
    return source


def _walk(
    loader: Any,
    node: yaml.Node,
    path: DataPath,
    active: set[int],
    source: YamlSource,
) -> None:
    if id(node) in active:
        source.problems.append((path, "a YAML alias refers to a value that contains it"))
        raise _RecursiveAlias
    source.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        for index, child in enumerate(node.value):
            _walk(loader, child, (*path, index), active, source)
        active.discard(id(node))
    elif isinstance(node, yaml.MappingNode):
        active.add(id(node))
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = str(loader.construct_object(key_node, deep=True))
            line = key_node.start_mark.line + 1
            if key in seen:
                source.problems.append(
                    ((*path, key), f"key {key!r} appears twice (lines {seen[key]} and {line})")
                )
            seen[key] = line
        # Merge keys (<<: *anchor) become ordinary entries here, as they will in the data.
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # construct_document reports unhashable keys as a YAML error
            key = str(loader.construct_object(key_node, deep=True))
            _walk(loader, value_node, (*path, key), active, source)
            source.lines[(*path, key)] = key_node.start_mark.line + 1
        active.discard(id(node))


def _stringify_keys(value: Any, path: DataPath, source: YamlSource) -> Any:
    """Turn non-string mapping keys into strings, reporting each one.

    YAML 1.1 reads ``on:``/``yes:`` as ``True`` and ``2024:`` as an int. Reporting them (rather
    than crashing in the schema validator on an int key) keeps every failure a config error.
    """
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            text = key if isinstance(key, str) else str(key)
            if not isinstance(key, str):
                source.problems.append(
                    ((*path, text), f"key {key!r} is not a string; quote it in YAML")
                )
            result[text] = _stringify_keys(item, (*path, text), source)
        return result
    if isinstance(value, list):
        return [_stringify_keys(item, (*path, i), source) for i, item in enumerate(value)]
    return value
