"""The served OpenAPI document is the generated one, and real answers conform to it."""

from __future__ import annotations

from typing import Any

from control_plane.api.openapi import openapi_document
from control_plane.embedded import EmbeddedSystem
from security.identity import Role
from tests.api.conftest import Answer, BatteryEdge, Clients, EnrollSite
from tests.api.schema_check import problems


def conforms(doc: dict[str, Any], method: str, template: str, answer: Answer) -> None:
    op = doc["paths"][template][method.lower()]
    assert str(answer.status) in op["responses"], (template, answer.status)
    assert answer.headers["Content-Type"].startswith("application/json")
    response = op["responses"][str(answer.status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    assert problems(answer.json(), schema, doc) == [], (template, answer.json())


async def test_every_answer_matches_the_served_document(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    soc, operator = clients(Role.SOC, "alice"), clients(Role.OPERATOR, "bob")
    served = await operator.get("/v1/openapi.json")
    assert served.status == 200 and served.json() == openapi_document()
    assert (await soc.get("/v1/openapi.json")).json() == openapi_document()
    doc = served.json()

    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        await edge.inflate_soc()
    finally:
        await edge.close()
    alert_id = (await soc.get("/v1/alerts")).json()["alerts"][0]["alert_id"]

    calls = [
        (soc, "GET", "/v1/alerts", "/v1/alerts?status=open&limit=5"),
        (soc, "GET", "/v1/alerts", "/v1/alerts?limit=0"),
        (operator, "GET", "/v1/alerts", "/v1/alerts"),
        (soc, "GET", "/v1/alerts/{alert_id}", f"/v1/alerts/{alert_id}"),
        (soc, "GET", "/v1/alerts/{alert_id}", "/v1/alerts/feedface"),
        (soc, "GET", "/v1/quarantine", "/v1/quarantine?site=s1"),
        (soc, "GET", "/v1/audit/verify", "/v1/audit/verify"),
        (operator, "GET", "/v1/status", "/v1/status"),
        (operator, "GET", "/v1/sites", "/v1/sites"),
        (operator, "GET", "/v1/state/{asset_id}", "/v1/state/s1-bat"),
        (operator, "GET", "/v1/state/{asset_id}", "/v1/state/s1-nothing"),
        (soc, "PUT", "/v1/sites", "/v1/sites"),
    ]
    for client, method, template, target in calls:
        conforms(doc, "GET", template, await client.request(method, target))
    ack = await soc.post_json(f"/v1/alerts/{alert_id}/ack", {"note": "checked"})
    conforms(doc, "POST", "/v1/alerts/{alert_id}/ack", ack)
    bad = await soc.request(
        "POST", f"/v1/alerts/{alert_id}/ack", body=b"x", headers={"Content-Type": "text/plain"}
    )
    assert bad.status == 415
    conforms(doc, "POST", "/v1/alerts/{alert_id}/ack", bad)
