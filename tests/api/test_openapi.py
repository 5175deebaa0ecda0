"""The OpenAPI document matches the route table, and the stored copy matches the generator."""

from __future__ import annotations

import json
from pathlib import Path

from control_plane.api.openapi import openapi_document
from control_plane.api.problems import API_REASONS
from control_plane.api.routes import ROUTES
from tests.api.schema_check import problems

STORED = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


def test_stored_document_is_the_generated_one() -> None:
    assert json.loads(STORED.read_text()) == openapi_document(), (
        "docs/api/openapi.json drifted: python -m control_plane.api.openapi > docs/api/openapi.json"
    )


def test_document_lists_exactly_the_routes_with_their_roles() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    listed = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert listed == {(r.method, r.template) for r in ROUTES}
    for r in ROUTES:
        op = doc["paths"][r.template][r.method.lower()]
        assert op["operationId"] == r.operation_id
        assert op["x-gridfort-roles"] == sorted(role.value for role in r.roles)
        assert {"200", "400", "401", "403", "404", "405", "413"} <= set(op["responses"])
        assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == list(r.path_params)
        assert [p["name"] for p in op["parameters"] if p["in"] == "query"] == [
            q.name for q in r.query
        ]
    assert doc["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"


def test_every_refusal_code_is_in_the_schema() -> None:
    doc = openapi_document()
    refusal = doc["components"]["schemas"]["Refusal"]
    assert set(refusal["properties"]["reason"]["enum"]) == {r.value for r in API_REASONS}
    assert problems({"reason": "NOT_FOUND", "message": "no such route"}, refusal, doc) == []
    assert problems({"reason": "NOT_FOUND", "message": "x", "trace": "..."}, refusal, doc)
