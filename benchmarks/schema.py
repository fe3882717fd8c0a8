"""Check a result document against benchmarks/schema.json without extra packages.

Implements the part of JSON Schema that schema.json uses (type, enum, required, properties,
items, minimum, maximum, local $ref), so a device with only the edge extra can validate its own
results; a full validator (the `jsonschema` package) gives the same verdict on this file.
"""
from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("schema.json")

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _resolve(ref: str, root: dict) -> dict:
    node = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def validate(doc, schema: dict | None = None) -> list[str]:
    """Every violation as 'path: problem' (empty list: the document conforms)."""
    schema = schema or load_schema()
    errors: list[str] = []
    _check(doc, schema, schema, "$", errors)
    return errors


def _check(value, node: dict, root: dict, path: str, errors: list[str]) -> None:
    if "$ref" in node:
        node = _resolve(node["$ref"], root)
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} is not one of {node['enum']}")
        return
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_is_type(value, t) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {node['maximum']}")
    if isinstance(value, dict):
        for key in node.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing required field {key!r}")
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                _check(value[key], sub, root, f"{path}.{key}", errors)
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            _check(item, node["items"], root, f"{path}[{i}]", errors)
