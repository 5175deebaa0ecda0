"""The REST API's OpenAPI 3.1 document, generated from the route table (``routes.ROUTES``).

Served at ``GET /v1/openapi.json`` and stored as ``docs/api/openapi.json``;
regenerate the stored copy with ``python -m control_plane.api.openapi > docs/api/openapi.json``
(a test fails when it drifts).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from control_plane.api.inputs import (
    MAX_AFRR_KW,
    MAX_NOTE_LEN,
    NOTE_PATTERN,
    ParamKind,
    QueryParam,
)
from control_plane.api.problems import API_REASONS, REFUSAL_STATUSES
from control_plane.api.routes import PATH_PARAMS, ROUTES, Route
from control_plane.assets.model import ID_PATTERN, AssetKind
from control_plane.dispatch.activation import MAX_DURATION_S

Schema = dict[str, Any]
_ID: Schema = {"type": "string", "pattern": ID_PATTERN.pattern}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_MS: Schema = {"type": "integer", "description": "Unix epoch milliseconds"}
_KIND: Schema = {"type": "string", "enum": [k.value for k in AssetKind]}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, closed: bool = True) -> Schema:
    return {
        "type": "object",
        "required": sorted(properties),
        "properties": properties,
        "additionalProperties": not closed,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_REFUSAL_CODES = sorted(r.value for r in API_REASONS)

SCHEMAS: dict[str, Schema] = {
    "Refusal": _object(
        {
            "reason": {"type": "string", "enum": _REFUSAL_CODES, "description": "stable code"},
            "message": {"type": "string", "description": "a human sentence"},
        }
    ),
    "Alert": _object(
        {
            "alert_id": _ID,
            "site_id": _ID,
            "detector": _STR,
            "model_version": _STR,
            "reason": _STR,
            "first_ms": _MS,
            "last_ms": _MS,
            "measurements": _INT,
            "batches": _INT,
            "max_score": _NUM,
            "threshold": _NUM,
            "assets": {"type": "array", "items": _ID},
            "last_evidence": {"type": "object"},
            "status": {"type": "string", "enum": ["open", "acknowledged"]},
            "acknowledged_by": _nullable(_STR),
            "acknowledged_ms": _nullable(_MS),
        }
    ),
    "AlertList": _object(
        {"alerts": {"type": "array", "items": _ref("Alert")}, "count": _INT, "truncated": _BOOL}
    ),
    "AckRequest": {
        "type": "object",
        "properties": {
            "note": {"type": "string", "maxLength": MAX_NOTE_LEN, "pattern": NOTE_PATTERN}
        },
        "additionalProperties": False,
        "description": "Optional. The analyst is the client certificate, never the body.",
    },
    "AfrrRequest": {
        **_object(
            {
                "activation_id": _ID,
                "delta_kw": {
                    "type": "number",
                    "minimum": -MAX_AFRR_KW,
                    "maximum": MAX_AFRR_KW,
                    "description": "the pool's aFRR setpoint [kW], + more export; 0 ends it",
                },
                "duration_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_DURATION_S,
                    "description": "how long it holds [s] (it ends with its reserve block)",
                },
            }
        ),
        "description": "The operator is the client certificate, never the body.",
    },
    "WeatherForecast": {
        **_object(
            {
                "issued_ms": {
                    **_MS,
                    "description": "when it was issued: not in the future, at most 7 days old",
                },
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "description": "strictly increasing quarter-hours, within [now - 1 day, "
                    "now + 10 days]; the newest issue wins per quarter-hour",
                    "items": _object(
                        {
                            "ts_ms": {**_MS, "description": "a multiple of 900000"},
                            "ghi_w_per_m2": {"type": "number", "minimum": 0, "maximum": 1500},
                            "air_temp_c": {"type": "number", "minimum": -60, "maximum": 60},
                        }
                    ),
                },
            }
        ),
        "description": "Day-ahead global horizontal irradiance (the quarter-hour's mean) "
        "and air temperature at the fleet's location, for the live PV model.",
    },
    "WeatherAccepted": _object(
        {
            "accepted": {"type": "boolean", "enum": [True]},
            "steps": _INT,
            "issued_ms": _MS,
            "first_ms": _MS,
            "last_ms": _MS,
        }
    ),
    "AfrrActivation": _object(
        {
            "activation_id": _ID,
            "requested_by": _STR,
            "delta_kw": _NUM,
            "delivered_kw": _NUM,
            "shortfall_kw": _NUM,
            "reserved_kw": _NUM,
            "started_ms": _MS,
            "until_ms": _MS,
            "ends_with_block": _BOOL,
            "sites": _INT,
            "assets": _INT,
        }
    ),
    "GateEvidence": _object(
        {
            "detector": _STR,
            "model_version": _STR,
            "score": _NUM,
            "threshold": _NUM,
            "flagged": {"type": "array", "items": _STR},
            "detail": _STR,
        }
    ),
    "QuarantinedMeasurement": _object(
        {
            "site_id": _ID,
            "seq": _INT,
            "index": _INT,
            "asset_id": _ID,
            "quantity": _STR,
            "ts_ms": _MS,
            "value": _nullable(_NUM),
            "value_text": _STR,
            "reason": _STR,
            "evidence": _nullable(_ref("GateEvidence")),
        }
    ),
    "QuarantineList": _object(
        {"measurements": {"type": "array", "items": _ref("QuarantinedMeasurement")}, "count": _INT}
    ),
    "AuditVerification": _object(
        {
            "ok": _BOOL,
            "records": _INT,
            "head_hash": _nullable(_STR),
            "first_bad_line": _nullable(_INT),
            "first_bad_seq": _nullable(_INT),
            "problem": _nullable(_STR),
        }
    ),
    "Status": _object(
        {
            "control_plane": _STR,
            "now_ms": _MS,
            "ingest": {"type": "object"},
            "gate": {"type": "object"},
            "transports": _object(
                {"grpc": {"type": "object"}, "nats": {"type": "object"}, "rest": {"type": "object"}}
            ),
            "sites_connected": {
                "type": "array",
                "items": _object({"site_id": _ID, "streams": _INT, "since_ms": _MS}),
            },
        }
    ),
    "SiteList": _object(
        {
            "sites": {
                "type": "array",
                "items": _object(
                    {
                        "site_id": _ID,
                        "connected": _BOOL,
                        "edge_allowed": _BOOL,
                        "assets": {
                            "type": "array",
                            "items": _object(
                                {
                                    "asset_id": _ID,
                                    "kind": _KIND,
                                    "rated_p_kw": _NUM,
                                    "e_kwh": _NUM,
                                }
                            ),
                        },
                    }
                ),
            }
        }
    ),
    "AssetState": _object(
        {
            "asset_id": _ID,
            "site_id": _ID,
            "kind": _KIND,
            "suspect": _BOOL,
            "last_gate_quarantine_ms": _nullable(_MS),
            "values": {
                "type": "array",
                "items": _object({"quantity": _STR, "unit": _STR, "ts_ms": _MS, "value": _NUM}),
            },
        }
    ),
    "PlanSummary": _object(
        {
            "planned_ms": _MS,
            "horizon_start_ms": _MS,
            "method": {"type": "string", "enum": ["exact", "aggregated"]},
            "status": {"type": "string", "enum": ["optimal", "feasible", "fallback"]},
            "assets_planned": _INT,
            "assets_excluded": _INT,
            "objective_eur": _nullable(_NUM),
            "wall_s": _NUM,
            "first_step_kw": _NUM,
            "demand_response": {"type": "array", "items": _STR},
            "diagnosis": {
                "type": "array",
                "items": _object(
                    {
                        "constraint": _STR,
                        "subjects": {"type": "array", "items": _STR},
                        "message": _STR,
                    }
                ),
            },
        }
    ),
    "PlanStatus": _object(
        {
            "rounds": _INT,
            "failures": _INT,
            "dispatched_steps": _INT,
            "armed_sites": _INT,
            "afrr": _object(
                {
                    "reserved_up_kw": _NUM,
                    "reserved_down_kw": _NUM,
                    "active": _nullable(_ref("AfrrActivation")),
                }
            ),
            "pv_forecast": _nullable(
                {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": _STR,
                        "training_error": _nullable(_STR),
                        "quantile": _NUM,
                        "sources": {"type": "object", "additionalProperties": _INT},
                    },
                    "additionalProperties": False,
                }
            ),
            "latest": _nullable(_ref("PlanSummary")),
            "last_bid": _nullable(
                _object(
                    {
                        "day": _STR,
                        "plan_status": _STR,
                        "bids": _INT,
                        "sent": _INT,
                        "denied": {"type": "object", "additionalProperties": _INT},
                    }
                )
            ),
        }
    ),
    "OpenApiDocument": {"type": "object"},
}

#: The schema of each operation's 200 answer.
RESPONSES: dict[str, str] = {
    "listAlerts": "AlertList",
    "getAlert": "Alert",
    "acknowledgeAlert": "Alert",
    "listQuarantine": "QuarantineList",
    "verifyAudit": "AuditVerification",
    "getStatus": "Status",
    "listSites": "SiteList",
    "getAssetState": "AssetState",
    "getPlan": "PlanStatus",
    "activateAfrr": "AfrrActivation",
    "putWeatherForecast": "WeatherAccepted",
    "getOpenApi": "OpenApiDocument",
}

#: The schema of each operation's request body, and the operations that need one.
BODIES: dict[str, str] = {
    "acknowledgeAlert": "AckRequest",
    "activateAfrr": "AfrrRequest",
    "putWeatherForecast": "WeatherForecast",
}
REQUIRED_BODIES = frozenset({"activateAfrr", "putWeatherForecast"})

_STATUS_TEXT = {
    400: "Malformed request (path, query or body)",
    401: "Not authenticated: certificate identity, trust domain, validity or revocation",
    403: "This role may not use this route",
    404: "No such route or resource",
    405: "Method not allowed on this route (see Allow)",
    409: "Not possible in the current state (e.g. no aFRR reserved that way)",
    413: "Request body too large",
    415: "Request body is not application/json",
    500: "Internal error (no detail is given)",
    503: "Unavailable or timed out; retry later",
}


def _query_schema(p: QueryParam) -> Schema:
    if p.kind is ParamKind.ID:
        return dict(_ID)
    if p.kind is ParamKind.ENUM:
        return {"type": "string", "enum": list(p.choices)}
    schema: Schema = {"type": "integer", "minimum": p.minimum, "maximum": p.maximum}
    if p.default is not None:
        schema["default"] = p.default
    return schema


def _operation(route: Route) -> Schema:
    params: list[Schema] = [
        {"name": n, "in": "path", "required": True, "description": PATH_PARAMS[n], "schema": _ID}
        for n in route.path_params
    ]
    params += [
        {"name": p.name, "in": "query", "required": False, "description": p.description,
         "schema": _query_schema(p)}
        for p in route.query
    ]  # fmt: skip
    responses: dict[str, Schema] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": _ref(RESPONSES[route.operation_id])}},
        }
    }
    for status in REFUSAL_STATUSES:
        if status == 415 and not route.has_body:
            continue
        responses[str(status)] = {"$ref": f"#/components/responses/Refusal{status}"}
    op: Schema = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": sorted(r.value for r in route.roles),
        "x-gridfort-roles": sorted(r.value for r in route.roles),
        "parameters": params,
        "responses": responses,
    }
    if route.has_body:
        required = route.operation_id in REQUIRED_BODIES
        op["requestBody"] = {
            "required": required,
            "content": {"application/json": {"schema": _ref(BODIES[route.operation_id])}},
        }
    return op


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Schema]] = {}
    for route in ROUTES:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gridfort control-plane API",
            "version": "1",
            "description": (
                "Alerts and evidence for SOC analysts, fleet status for operators. HTTPS with "
                "mutual TLS only: a client certificate issued by the deployment's CA whose "
                "SPIFFE ID (spiffe://<domain>/soc/<name> or /operator/<name>) decides what "
                "it may do; everything else is refused (default deny) and audited."
            ),
        },
        "servers": [{"url": "https://127.0.0.1:7445"}],
        "security": [{"mutualTLS": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": "X509-SVID issued by the Gridfort CA (gridfort ca issue)",
                }
            },
            "schemas": SCHEMAS,
            "responses": {
                f"Refusal{status}": {
                    "description": _STATUS_TEXT[status],
                    "content": {"application/json": {"schema": _ref("Refusal")}},
                }
                for status in REFUSAL_STATUSES
            },
        },
    }


def main() -> int:
    sys.stdout.write(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
