"""Operators read the planning cycle over REST: the newest plan, built from gated state only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.api.openapi import openapi_document
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
