"""Operators on the real REST API: status, sites, and gated state only (never a quarantined value)."""

from __future__ import annotations

from control_plane.embedded import EmbeddedSystem
from security.identity import Role
from tests.api.conftest import BatteryEdge, Clients, EnrollSite


async def test_operator_reads_status_sites_and_gated_state(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    cp = system.control_plane
    bob = clients(Role.OPERATOR, "bob")
    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        honest_soc = round(edge.soc, 1)

        status = await bob.get("/v1/status")
        assert status.status == 200, status.body
        s = status.json()
        assert s["control_plane"] == str(cp.spiffe_id)
        assert s["ingest"]["batches_committed"] == 1 and s["ingest"]["measurements_committed"] == 26
        assert s["gate"]["batches"] == 1 and s["gate"]["latency_ms"]["samples"] == 1
        assert s["transports"]["grpc"]["link_ports"] == cp.link_ports
        assert s["transports"]["rest"]["port"] == cp.api_port
        assert s["transports"]["nats"] == {"enabled": False, "url": None}
        assert [x["site_id"] for x in s["sites_connected"]] == ["s1"]

        sites = (await bob.get("/v1/sites")).json()["sites"]
        (s1,) = sites
        assert s1["site_id"] == "s1" and s1["connected"] is True and s1["edge_allowed"] is True
        assert {a["asset_id"] for a in s1["assets"]} == {"s1-pv", "s1-bat", "s1-ev"}

        state = (await bob.get("/v1/state/s1-bat")).json()
        assert state["suspect"] is False and state["last_gate_quarantine_ms"] is None
        values = {v["quantity"]: v for v in state["values"]}
        assert values["state_of_charge"]["value"] == honest_soc
        assert values["state_of_charge"]["unit"] == "pct"
        assert values["active_power"] == {
            "quantity": "active_power", "unit": "kw", "ts_ms": edge.t, "value": -4.0,
        }  # fmt: skip

        # The edge lies: the operator still sees only the last gated value, now suspect.
        await edge.inflate_soc()
        state = (await bob.get("/v1/state/s1-bat")).json()
        assert state["suspect"] is True and state["last_gate_quarantine_ms"] == edge.t
        values = {v["quantity"]: v["value"] for v in state["values"]}
        assert values["state_of_charge"] == honest_soc
        s = (await bob.get("/v1/status")).json()
        assert s["gate"]["by_detector"] == {"temporal:soc_balance": 1}
    finally:
        await edge.close()


async def test_unknown_asset_is_not_found(system: EmbeddedSystem, clients: Clients) -> None:
    answer = await clients(Role.OPERATOR, "bob").get("/v1/state/no-such-asset")
    assert (answer.status, answer.reason) == (404, "NOT_FOUND")


async def test_plan_is_not_found_where_no_planning_cycle_runs(
    system: EmbeddedSystem, clients: Clients
) -> None:
    answer = await clients(Role.OPERATOR, "bob").get("/v1/plan")
    assert (answer.status, answer.reason) == (404, "NOT_FOUND")
