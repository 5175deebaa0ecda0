"""SOC analysts on the real REST API: an alert raised by a real gate quarantine, end to end.

A compromised edge with valid credentials inflates its battery's state of
charge over a real mutual-TLS EdgeLink stream; the gate quarantines the lie and
raises an alert. An analyst with a ``soc`` certificate from the deployment's CA
lists it, reads the quarantined measurement with the gate's evidence, and
acknowledges it: the analyst recorded is the certificate's SPIFFE ID, never
anything in the body. The audit chain holds every decision and still verifies.
"""

from __future__ import annotations

from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from security.identity import Role
from tests.api.conftest import BatteryEdge, Clients, EnrollSite, audit_records


async def gate_alert(system: EmbeddedSystem, enroll_site: EnrollSite, site: str = "s1") -> str:
    """Make the gate quarantine a state-of-charge jump at ``site``; the alert's id."""
    edge = BatteryEdge(system, await enroll_site(site))
    try:
        await edge.honest()
        await edge.inflate_soc()
    finally:
        await edge.close()
    (alert,) = system.control_plane.alerts.list(site_id=site)
    return alert.alert_id


async def test_soc_lists_reads_and_acknowledges_a_gate_alert(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    alert_id = await gate_alert(system, enroll_site)
    alice = clients(Role.SOC, "alice")

    listed = await alice.get("/v1/alerts?status=open")
    assert listed.status == 200, listed.body
    (alert,) = listed.json()["alerts"]
    assert (alert["alert_id"], alert["site_id"], alert["status"]) == (alert_id, "s1", "open")
    assert alert["detector"] == "temporal:soc_balance" and alert["assets"] == ["s1-bat"]
    assert alert["max_score"] > alert["threshold"]
    assert (await alice.get("/v1/alerts?site=other")).json()["alerts"] == []

    one = await alice.get(f"/v1/alerts/{alert_id}")
    assert one.status == 200 and one.json()["last_evidence"]["asset_id"] == "s1-bat"

    quarantined = await alice.get("/v1/quarantine?site=s1&limit=10")
    assert quarantined.status == 200
    (m,) = quarantined.json()["measurements"]
    assert (m["asset_id"], m["quantity"], m["reason"]) == (
        "s1-bat",
        "state_of_charge",
        "FDI_TEMPORAL_INCONSISTENT",
    )
    assert m["evidence"]["detector"] == "temporal:soc_balance"
    assert m["evidence"]["score"] > m["evidence"]["threshold"]

    acked = await alice.post_json(f"/v1/alerts/{alert_id}/ack", {"note": "battery swapped"})
    assert acked.status == 200, acked.body
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == alice.identity
    assert (await alice.get("/v1/alerts?status=open")).json()["alerts"] == []

    # A second analyst acknowledging again changes nothing: the first one stays on record.
    bob = clients(Role.SOC, "bob")
    again = await bob.request("POST", f"/v1/alerts/{alert_id}/ack")
    assert again.status == 200 and again.json()["acknowledged_by"] == alice.identity

    records = audit_records(system)
    acks = [r for r in records if r["event"] == "alert_acknowledged"]
    assert [r["identity"] for r in acks] == [alice.identity]
    allowed = [
        r for r in records if r["event"] == "api_request" and r["details"]["route"].endswith("/ack")
    ]
    assert [(r["identity"], r["decision"], r["details"].get("acknowledged")) for r in allowed] == [
        (alice.identity, "allow", True),
        (bob.identity, "allow", False),
    ]
    assert allowed[0]["details"]["note"] == "battery swapped"


async def test_the_analyst_is_the_certificate_never_the_body(
    system: EmbeddedSystem, enroll_site: EnrollSite, clients: Clients
) -> None:
    alert_id = await gate_alert(system, enroll_site)
    mallory = clients(Role.SOC, "mallory")
    forged = await mallory.post_json(
        f"/v1/alerts/{alert_id}/ack", {"analyst": "spiffe://gridfort.test/soc/alice"}
    )
    assert (forged.status, forged.reason) == (400, "MALFORMED_REQUEST")
    assert system.control_plane.alerts.get(alert_id).status == "open"
    missing = await mallory.request("POST", "/v1/alerts/0123456789abcdef/ack")
    assert (missing.status, missing.reason) == (404, "NOT_FOUND")


async def test_audit_verify_runs_the_chain_verifier_and_names_the_tampered_line(
    system: EmbeddedSystem, clients: Clients
) -> None:
    alice = clients(Role.SOC, "alice")
    good = await alice.get("/v1/audit/verify")
    assert good.status == 200, good.body
    body = good.json()
    assert body["ok"] is True and body["records"] >= 2 and len(body["head_hash"]) == 64
    assert str(system.state_dir) not in good.body.decode()  # no paths on disk to the peer

    # An insider edits record 2 (same length, so the live writer does not notice).
    path: Path = system.control_plane.audit.path
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"decision":"info"', b'"decision":"deny"', 1)
    path.write_bytes(b"\n".join(lines))
    bad = (await alice.get("/v1/audit/verify")).json()
    assert bad["ok"] is False and bad["first_bad_line"] == 2 and "modified" in bad["problem"]
