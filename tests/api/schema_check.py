"""A minimal JSON Schema checker for the subset the OpenAPI document uses (no extra dependency).

Supports ``$ref`` (local), ``type``, ``enum``, ``required``, ``properties``,
``additionalProperties`` (boolean), ``items``, ``anyOf``, ``pattern``,
``minimum``/``maximum`` and ``maxLength``; anything else in a schema fails the
check, so the document cannot silently outgrow the checker.
"""

from __future__ import annotations

import re
from typing import Any

_KNOWN = {
    "$ref", "type", "enum", "required", "properties", "additionalProperties", "items", "anyOf",
    "pattern", "minimum", "maximum", "maxLength", "description", "default",
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def problems(value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty if it conforms)."""
    unknown = set(schema) - _KNOWN
    if unknown:
        return [f"{at}: the checker does not know {sorted(unknown)}"]
    if "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return problems(value, node, doc, at)
    if "anyOf" in schema:
        if any(not problems(value, s, doc, at) for s in schema["anyOf"]):
            return []
        return [f"{at}: matches none of anyOf"]
    out: list[str] = []
    t = schema.get("type")
    if t is not None:
        ok = isinstance(value, _TYPES[t]) and not (
            t in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            return [f"{at}: {type(value).__name__} is not {t}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in enum")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{at}: {value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{at}: longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at}: above maximum")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{at}: missing {key!r}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                out += problems(item, props[key], doc, f"{at}.{key}")
            elif schema.get("additionalProperties", True) is False:
                out.append(f"{at}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(item, schema["items"], doc, f"{at}[{i}]")
    return out
