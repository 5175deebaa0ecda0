"""The FDI gate live in the pipeline: a compromised edge lies with valid credentials.

Over a real mutual-TLS EdgeLink stream, a site first reports an honest battery,
then inflates its state of charge (to sell flexibility that does not exist). The
signed receipt names the quarantined measurement and its reason; the evidence is
in the store, the audit log and an alert for SOC analysts; fleet state keeps the
last honest value and marks the asset suspect. Grid metering points of a grid
with no loaded model are refused (default deny).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence

from control_plane.assets.model import Asset, AssetKind
from control_plane.embedded import EmbeddedSystem
from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import EnvelopeSigner
from security.refusals import Reason
from tests.e2e.raw_link import RawLink, sign_batch

Q, U = tpb.Quantity, tpb.Unit
Row = tuple[str, int, int, float, int]  # asset, quantity, unit, value, ts_ms
EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]


def batch(site: str, seq: int, sealed_ms: int, rows: Sequence[Row]) -> tpb.TelemetryBatch:
    return tpb.TelemetryBatch(
        site_id=site,
        seq=seq,
        sealed_ms=sealed_ms,
        measurements=[
            tpb.Measurement(asset_id=a, quantity=q, unit=u, value=v, ts_ms=t)  # type: ignore[arg-type]
            for a, q, u, v, t in rows
        ],
    )


def honest_battery(start_ms: int, n: int, p_kw: float, soc: float) -> tuple[list[Row], float]:
    """Samples every 10 s of a 10 kWh battery (charging when p < 0), 95 % efficient."""
    rows: list[Row] = []
    for k in range(n):
        if k:
            soc += 100 * (-p_kw * 10 / 3600 * 0.95) / 10.0
        t = start_ms + k * 10_000
        rows += [
            ("s1-bat", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, p_kw, t),
            ("s1-bat", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, round(soc, 1), t),
        ]
    return rows, soc


async def send(
    link: RawLink, signer: EnvelopeSigner, system: EmbeddedSystem, b: tpb.TelemetryBatch
) -> lpb.BatchReceipt:
    await link.send_envelope(sign_batch(signer, b, system.clock.now_ms()))
    return await link.recv_receipt()


async def test_inflated_soc_is_quarantined_with_evidence_alert_and_audit(
    system: EmbeddedSystem, enroll_site: EnrollSite
) -> None:
    creds = await enroll_site("s1")
    link = RawLink.for_edge(system.link_endpoints[0], creds)
    cp = system.control_plane
    try:
        now = system.clock.now_ms()
        start = now - 200_000  # 2 minutes of history, sampled every 10 s
        rows, soc = honest_battery(start, 13, -4.0, 40.0)
        r = await send(link, creds.signer, system, batch("s1", creds.next_seq, now, rows))
        assert r.status == lpb.RECEIPT_STATUS_COMMITTED and r.quarantined == 0
        t = start + 130_000
        lie = [
            ("s1-bat", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, -4.0, t),
            ("s1-bat", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, round(soc, 1) + 30.0, t),
        ]
        r = await send(link, creds.signer, system, batch("s1", creds.next_seq + 1, now, lie))
        assert r.status == lpb.RECEIPT_STATUS_COMMITTED
        assert (r.committed, r.quarantined) == (1, 1)
        assert [q.reason for q in r.quarantined_detail] == [Reason.FDI_TEMPORAL_INCONSISTENT.value]
        assert r.quarantined_detail[0].index == 1

        # Fleet state: the last honest SOC, and the asset is suspect.
        latest = cp.pipeline.state.get("s1-bat", Q.QUANTITY_STATE_OF_CHARGE)
        assert latest is not None and latest.value == round(soc, 1)
        assert cp.pipeline.state.is_suspect("s1-bat", system.clock.now_ms())

        # The store keeps the falsified value and the reason for forensics.
        with sqlite3.connect(cp.paths.telemetry_db) as db:
            stored = db.execute("SELECT asset_id, value, reason FROM quarantine").fetchall()
        assert stored == [("s1-bat", round(soc, 1) + 30.0, "FDI_TEMPORAL_INCONSISTENT")]

        # The audit chain has the verdict with evidence; the SOC has one open alert.
        records = [json.loads(line) for line in cp.audit.path.read_text().splitlines()]
        verdicts = [x for x in records if x["event"] == "gate_verdict"]
        assert len(verdicts) == 1
        evidence = verdicts[0]["details"]["evidence"][0]
        assert evidence["detector"] == "temporal:soc_balance"
        assert evidence["score"] > evidence["threshold"]
        alerts = cp.alerts.list(status="open")
        assert [(a.site_id, a.detector, a.assets) for a in alerts] == [
            ("s1", "temporal:soc_balance", ("s1-bat",))
        ]
        # the alert is written (and audited) by the alert book's own thread; list()
        # waited for it, so the audit chain now has it too
        records = [json.loads(line) for line in cp.audit.path.read_text().splitlines()]
        assert any(x["event"] == "alert_raised" for x in records)

        # The lie goes on: the same alert is extended, not duplicated.
        t += 10_000
        lie2 = [
            ("s1-bat", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, -4.0, t),
            ("s1-bat", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, round(soc, 1) + 30.5, t),
        ]
        r = await send(link, creds.signer, system, batch("s1", creds.next_seq + 2, now, lie2))
        assert r.quarantined == 1
        alerts = cp.alerts.list()
        assert len(alerts) == 1 and alerts[0].batches == 2 and alerts[0].measurements == 2
        acked = cp.alerts.acknowledge(alerts[0].alert_id, "spiffe://gridfort.test/soc/alice")
        assert acked.status == "acknowledged"
    finally:
        await link.close()


async def test_grid_points_without_a_loaded_model_are_refused(
    system: EmbeddedSystem, enroll_site: EnrollSite
) -> None:
    creds = await enroll_site("rtu")
    system.register_site(
        "rtu",
        [
            Asset("cigre_mv.bus1", "rtu", AssetKind.GRID_BUS, rated_p_kw=20_000.0),
            Asset("cigre_mv.line1", "rtu", AssetKind.GRID_LINE, rated_p_kw=10_000.0),
        ],
    )
    link = RawLink.for_edge(system.link_endpoints[0], creds)
    try:
        now = system.clock.now_ms()
        rows: list[Row] = [
            ("cigre_mv.bus1", Q.QUANTITY_VOLTAGE_PU, U.UNIT_PU, 1.01, now),
            ("cigre_mv.line1", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1200.0, now),
            ("rtu-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 3.0, now),
        ]
        r = await send(link, creds.signer, system, batch("rtu", creds.next_seq, now, rows))
        assert r.status == lpb.RECEIPT_STATUS_COMMITTED and (r.committed, r.quarantined) == (1, 2)
        assert {q.reason for q in r.quarantined_detail} == {Reason.GATE_NO_CONTEXT.value}
    finally:
        await link.close()
