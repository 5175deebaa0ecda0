"""Strict validation of everything a REST peer sends: the request target, query, and body.

Pure functions, no I/O. Anything not explicitly allowed is refused with
``MALFORMED_REQUEST`` (400): percent-escapes or dot segments in the path,
empty segments, unknown or repeated query parameters, ids that do not match
:data:`control_plane.assets.model.ID_PATTERN`, numbers out of bounds, bodies
that are not one small JSON object with known keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl

from control_plane.api.problems import ApiRefusal, malformed
from control_plane.assets.model import ID_PATTERN
from control_plane.dispatch.activation import MAX_DURATION_S, ActivationEvent
from security.refusals import Reason

#: The longest request target (path and query) accepted [characters].
MAX_TARGET_LEN = 2048
MAX_QUERY_FIELDS = 8
#: The longest acknowledgement note [characters].
MAX_NOTE_LEN = 500
#: A note holds no control characters (C0, DEL, C1) and no invisible or bidirectional
#: formatting (soft hyphen, zero-width, bidi overrides and isolates, BOM): what the analyst
#: wrote is what the next reader of the audit log sees. The OpenAPI document carries this
#: same pattern (ECMA-262 and Python ``re`` agree on it).
NOTE_PATTERN = (
    r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
)
_NOTE_RE = re.compile(NOTE_PATTERN)

# Segments are ids or fixed words: letters, digits, '.', '_', '-'; nothing needs escaping.
_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._-]+)+")
_INT_RE = re.compile(r"[0-9]{1,9}")
_JSON_TYPES = ("application/json",)


def is_id(value: str) -> bool:
    """True if ``value`` is a site, asset or alert id (the whole string, no trailing newline)."""
    return ID_PATTERN.fullmatch(value) is not None


def split_target(raw_target: str) -> tuple[tuple[str, ...], str] | ApiRefusal:
    """The raw request target as sent (never normalised) -> (path segments, raw query)."""
    if len(raw_target) > MAX_TARGET_LEN:
        return malformed(f"the request target is longer than {MAX_TARGET_LEN} characters")
    path, _, query = raw_target.partition("?")
    if "#" in raw_target:
        return malformed("the request target must not contain a fragment")
    if path == "/":
        return (), query
    if not _PATH_RE.fullmatch(path):
        return malformed(
            "the path must be /-separated non-empty segments of letters, digits, '.', '_', '-'"
        )
    segments = tuple(path[1:].split("/"))
    if any(s in (".", "..") for s in segments):
        return malformed("the path must not contain '.' or '..' segments")
    return segments, query


class ParamKind(StrEnum):
    ID = "id"
    ENUM = "enum"
    INT = "int"


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One allowed query parameter. ``minimum``/``maximum``/``default`` apply to INT."""

    name: str
    kind: ParamKind
    description: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 0
    default: int | None = None


QueryValues = dict[str, str | int]


def parse_query(query: str, allowed: tuple[QueryParam, ...]) -> QueryValues | ApiRefusal:
    """Validate a raw query string against the route's parameters; fill INT defaults."""
    by_name = {p.name: p for p in allowed}
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            max_num_fields=MAX_QUERY_FIELDS,
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError):
        return malformed(f"the query string is malformed (at most {MAX_QUERY_FIELDS} fields)")
    out: QueryValues = {}
    for name, value in pairs:
        param = by_name.get(name)
        if param is None:
            known = ", ".join(by_name) or "none"
            return malformed(f"unknown query parameter {name[:32]!r} (allowed: {known})")
        if name in out:
            return malformed(f"query parameter {name!r} is given more than once")
        parsed = _parse_value(param, value)
        if isinstance(parsed, ApiRefusal):
            return parsed
        out[name] = parsed
    for p in allowed:
        if p.kind is ParamKind.INT and p.name not in out and p.default is not None:
            out[p.name] = p.default
    return out


def _parse_value(param: QueryParam, value: str) -> str | int | ApiRefusal:
    if param.kind is ParamKind.ID:
        if not is_id(value):
            return malformed(f"{param.name} must match {ID_PATTERN.pattern}")
        return value
    if param.kind is ParamKind.ENUM:
        if value not in param.choices:
            return malformed(f"{param.name} must be one of {', '.join(param.choices)}")
        return value
    if not _INT_RE.fullmatch(value) or not param.minimum <= int(value) <= param.maximum:
        return malformed(f"{param.name} must be an integer from {param.minimum} to {param.maximum}")
    return int(value)


# -- bodies ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckRequest:
    """The body of ``POST /v1/alerts/{alert_id}/ack``. The analyst is the client certificate."""

    note: str = ""


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _reject_constant(_name: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json``, optionally with ``charset=utf-8``; nothing else."""
    if content_type is None:
        return False
    media, *params = (p.strip().lower() for p in content_type.split(";"))
    return media in _JSON_TYPES and all(p in ("charset=utf-8", 'charset="utf-8"') for p in params)


def parse_json_object(content_type: str | None, body: bytes) -> dict[str, object] | ApiRefusal:
    """One JSON object (UTF-8, no duplicate keys, no NaN); an empty body is ``{}``."""
    if not body:
        return {}
    if not is_json_media_type(content_type):
        return ApiRefusal(Reason.UNSUPPORTED_MEDIA_TYPE, "a request body must be application/json")
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return malformed("the body is not valid JSON (UTF-8, no duplicate keys, no NaN)")
    if not isinstance(value, dict):
        return malformed("the body must be a JSON object")
    return value


def parse_ack_body(content_type: str | None, body: bytes) -> AckRequest | ApiRefusal:
    """``{}`` or ``{"note": "..."}``; any other key (an ``analyst``, say) is refused."""
    obj = parse_json_object(content_type, body)
    if isinstance(obj, ApiRefusal):
        return obj
    unknown = sorted(set(obj) - {"note"})
    if unknown:
        return malformed(
            f"unknown field(s) {', '.join(k[:32] for k in unknown[:4])}: only 'note' is "
            "accepted (the analyst is the client certificate)"
        )
    note = obj.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE_LEN:
        return malformed(f"note must be a string of at most {MAX_NOTE_LEN} characters")
    if not _NOTE_RE.fullmatch(note):
        return malformed("note must not contain control, invisible or bidi formatting characters")
    return AckRequest(note=note)


#: The largest aFRR request magnitude accepted [kW] (10 GW: far above any pool).
MAX_AFRR_KW = 1e7


def parse_afrr_body(content_type: str | None, body: bytes) -> ActivationEvent | ApiRefusal:
    """``{"activation_id": id, "delta_kw": number, "duration_s": number}``, every key
    required, no other: ``delta_kw`` [kW, + more export] within +-:data:`MAX_AFRR_KW`,
    ``duration_s`` [s] in (0, 3600]. Who asks is the client certificate."""
    if not body:
        return malformed("the body must name activation_id, delta_kw and duration_s")
    obj = parse_json_object(content_type, body)
    if isinstance(obj, ApiRefusal):
        return obj
    fields = ("activation_id", "delta_kw", "duration_s")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        return malformed(
            f"unknown field(s) {', '.join(k[:32] for k in unknown[:4])}: only "
            "activation_id, delta_kw and duration_s are accepted"
        )
    missing = [f for f in fields if f not in obj]
    if missing:
        return malformed(f"missing field(s): {', '.join(missing)}")
    activation_id, delta, duration = (obj[f] for f in fields)
    if not isinstance(activation_id, str) or not is_id(activation_id):
        return malformed(f"activation_id must match {ID_PATTERN.pattern}")
    for name, value in (("delta_kw", delta), ("duration_s", duration)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return malformed(f"{name} must be a number")
    assert isinstance(delta, int | float) and isinstance(duration, int | float)
    if not abs(delta) <= MAX_AFRR_KW:
        return malformed(f"delta_kw must be within +-{MAX_AFRR_KW:.0f} kW")
    if not 0 < duration <= MAX_DURATION_S:
        return malformed(f"duration_s must be in (0, {MAX_DURATION_S:.0f}] s")
    return ActivationEvent(activation_id, float(delta), float(duration))
