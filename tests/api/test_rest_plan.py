"""Operators read the planning cycle over REST: the newest plan, built from gated state only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.api.inputs import parse_afrr_body
from control_plane.api.openapi import openapi_document
from control_plane.api.problems import ApiRefusal
from control_plane.embedded import EmbeddedSystem
from control_plane.planning import PlanningConfig
from security.identity import Role
from tests.api.conftest import BatteryEdge, Clients, EnrollSite
from tests.api.test_rest_openapi import conforms
from tests.conftest import TRUST_DOMAIN


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    """A control plane that plans (continuous lots: one home battery cannot bid 0.1 MW)."""
    sys_ = EmbeddedSystem(
        tmp_path / "cp",
        trust_domain=TRUST_DOMAIN,
        durable_sync=False,
        planning=PlanningConfig(energy_increment_kw=0, reserve_increment_kw=0),
    )
    await sys_.start()
    try:
        yield sys_
    finally:
        await sys_.stop()


async def test_operator_reads_the_newest_plan_and_the_soc_role_may_not(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    cp = system.control_plane
    assert cp.planning is not None
    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        await cp.planning.plan_now()  # the loop planned at start, before any telemetry
    finally:
        await edge.close()
    answer = await clients(Role.OPERATOR, "bob").get("/v1/plan")
    assert answer.status == 200, answer.body
    plan = answer.json()
    assert plan["rounds"] >= 2 and plan["failures"] == 0
    latest = plan["latest"]
    assert latest["status"] == "optimal" and latest["method"] == "exact"
    assert latest["assets_planned"] == 2  # the battery and the PV plant (climatological P10)
    assert latest["assets_excluded"] == 1  # the EV charger: it never reported
    denied = await clients(Role.SOC, "alice").get("/v1/plan")
    assert (denied.status, denied.reason) == (403, "ROLE_NOT_ALLOWED")
    doc = openapi_document()
    conforms(doc, "GET", "/v1/plan", answer)  # the answer is what the document promises
    conforms(doc, "GET", "/v1/plan", denied)


async def test_an_operator_activates_the_reserved_afrr_and_the_edge_applies_it(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    """A real stream: the plan reserved aFRR up on the site's battery; the operator's
    request reaches the edge as a signed setpoint; the answer is what the document says."""
    cp = system.control_plane
    assert cp.planning is not None
    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        await cp.planning.plan_now()
        operator = clients(Role.OPERATOR, "bob")
        status = (await operator.get("/v1/plan")).json()["afrr"]
        assert status["reserved_up_kw"] > 0 and status["active"] is None
        half = status["reserved_up_kw"] / 2
        body = {"activation_id": "tso-7", "delta_kw": half, "duration_s": 120}
        answer = await operator.post_json("/v1/afrr/activations", body)
        assert answer.status == 200, answer.body
        got = answer.json()
        assert got["delivered_kw"] == pytest.approx(half, abs=1e-3)
        assert got["requested_by"].endswith("/operator/bob") and got["sites"] == 1
        conforms(openapi_document(), "POST", "/v1/afrr/activations", answer)
        now = (await operator.get("/v1/plan")).json()["afrr"]["active"]
        assert now["activation_id"] == "tso-7"
        # the other direction was not reserved (or is): either way a precise answer
        down = {"activation_id": "tso-8", "delta_kw": -1e6, "duration_s": 60}
        other = await operator.post_json("/v1/afrr/activations", down)
        assert other.status in (200, 409)
        if other.status == 409:
            assert other.reason == "AFRR_NOT_AVAILABLE"
            conforms(openapi_document(), "POST", "/v1/afrr/activations", other)
    finally:
        await edge.close()


HOSTILE_AFRR = [
    b'{"activation_id": "a", "delta_kw": 1}',
    b'{"activation_id": "a", "delta_kw": 1, "duration_s": 60, "by": "x"}',
    b'{"activation_id": "a", "delta_kw": true, "duration_s": 60}',
    b'{"activation_id": "a", "delta_kw": "1", "duration_s": 60}',
    b'{"activation_id": "a", "delta_kw": 1e30, "duration_s": 60}',
    b'{"activation_id": "a", "delta_kw": 1, "duration_s": 0}',
    b'{"activation_id": "a", "delta_kw": 1, "duration_s": 3601}',
    b'{"activation_id": "../x", "delta_kw": 1, "duration_s": 60}',
    b'{"activation_id": "a", "delta_kw": NaN, "duration_s": 60}',
    b'{"activation_id": "a", "activation_id": "b", "delta_kw": 1, "duration_s": 60}',
    b"",
    b"[1, 2]",
]


@pytest.mark.parametrize("body", HOSTILE_AFRR)
def test_hostile_afrr_bodies_are_refused_with_a_precise_reason(body: bytes) -> None:
    refused = parse_afrr_body("application/json", body)
    assert isinstance(refused, ApiRefusal) and refused.reason.value == "MALFORMED_REQUEST"
    assert refused.message  # names what is wrong


async def test_hostile_afrr_requests_over_the_wire_change_nothing(
    system: EmbeddedSystem, clients: Clients
) -> None:
    operator = clients(Role.OPERATOR, "bob")
    headers = {"Content-Type": "application/json"}
    for body in HOSTILE_AFRR:
        answer = await operator.request("POST", "/v1/afrr/activations", body=body, headers=headers)
        assert (answer.status, answer.reason) == (400, "MALFORMED_REQUEST"), body
        conforms(openapi_document(), "POST", "/v1/afrr/activations", answer)
    assert system.control_plane.planning is not None
    assert system.control_plane.planning.afrr is None


async def test_afrr_is_for_operators_in_json_only(system: EmbeddedSystem, clients: Clients) -> None:
    body = b'{"activation_id": "a", "delta_kw": 1, "duration_s": 60}'
    soc = await clients(Role.SOC, "alice").request(
        "POST", "/v1/afrr/activations", body=body, headers={"Content-Type": "application/json"}
    )
    assert (soc.status, soc.reason) == (403, "ROLE_NOT_ALLOWED")
    text = await clients(Role.OPERATOR, "bob").request(
        "POST", "/v1/afrr/activations", body=body, headers={"Content-Type": "text/plain"}
    )
    assert (text.status, text.reason) == (415, "UNSUPPORTED_MEDIA_TYPE")
    # no plan yet with reserve (no telemetry): a precise 409, audited
    none = await clients(Role.OPERATOR, "bob").post_json(
        "/v1/afrr/activations", {"activation_id": "a", "delta_kw": 1, "duration_s": 60}
    )
    assert (none.status, none.reason) == (409, "AFRR_NOT_AVAILABLE")
