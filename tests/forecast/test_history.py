"""Gated PV history: quarter-hour means of accepted active power only, late samples merged,
restart-safe, pruned after the retention; fed by a real pipeline commit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import AssetRegistry
from control_plane.forecast.history import ACTIVE_POWER, DAY_MS, QUARTER_HOUR_MS, GatedHistory
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.types import (
    AuthorizedBatch,
    GatedBatch,
    MeasurementRow,
    Peer,
    QuarantinedMeasurement,
    ValidatedBatch,
    VerifiedBatch,
)
from control_plane.store.telemetry_store import TelemetryStore
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.envelope import EnvelopeSigner
from security.identity import Role, SpiffeId
from security.refusals import Reason
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry

QH0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a quarter-hour
SOC = int(tpb.Quantity.QUANTITY_STATE_OF_CHARGE)
PEER = Peer(SpiffeId("gridfort.test", Role.EDGE, "s1"), 1, 0, 2**62)


def gated(
    accepted: list[MeasurementRow], quarantined: list[QuarantinedMeasurement] | None = None
) -> GatedBatch:
    verified = VerifiedBatch(PEER, epb.SignedEnvelope(), tpb.TelemetryBatch(), b"", 0)
    validated = ValidatedBatch(AuthorizedBatch(verified, {}), accepted, [], [])
    return GatedBatch(validated, accepted, quarantined or [], "test")


@pytest.fixture
def history(tmp_path: Path) -> GatedHistory:
    return GatedHistory(tmp_path / "history.db")


def test_means_per_quarter_hour_with_exact_boundaries(history: GatedHistory) -> None:
    history.observe(
        gated(
            [
                ("pv", ACTIVE_POWER, QH0, 2.0),
                ("pv", ACTIVE_POWER, QH0 + QUARTER_HOUR_MS - 1, 4.0),  # last ms of the first
                ("pv", ACTIVE_POWER, QH0 + QUARTER_HOUR_MS, 10.0),  # first ms of the second
                ("pv", SOC, QH0, 99.0),  # not active power
                ("other", ACTIVE_POWER, QH0, 7.0),
            ]
        )
    )
    assert history.flush(QH0 + 3 * QUARTER_HOUR_MS) == 3
    got = history.series("pv", QH0 - QUARTER_HOUR_MS, 4)
    assert math.isnan(got[0]) and got[1] == 3.0 and got[2] == 10.0 and math.isnan(got[3])
    assert history.series("other", QH0, 1)[0] == 7.0


def test_an_open_quarter_hour_is_not_written_before_its_grace(history: GatedHistory) -> None:
    history.observe(gated([("pv", ACTIVE_POWER, QH0 + 1000, 5.0)]))
    assert history.flush(QH0 + QUARTER_HOUR_MS) == 0  # just ended: samples may be in flight
    assert history.open_cells() == 1 and math.isnan(history.series("pv", QH0, 1)[0])
    assert history.flush(QH0 + QUARTER_HOUR_MS + 60_000) == 1


def test_quarantined_rows_never_enter(history: GatedHistory) -> None:
    fake = QuarantinedMeasurement(0, "pv", ACTIVE_POWER, QH0, 500.0, Reason.FDI_GRID_INCONSISTENT)
    history.observe(gated([("pv", ACTIVE_POWER, QH0, 1.0)], [fake]))
    history.flush_all(QH0)
    assert history.series("pv", QH0, 1)[0] == 1.0
    assert history.samples_observed == 1


def test_late_samples_merge_into_a_written_quarter_hour(history: GatedHistory) -> None:
    history.observe(gated([("pv", ACTIVE_POWER, QH0, 1.0), ("pv", ACTIVE_POWER, QH0 + 5, 3.0)]))
    history.flush(QH0 + 2 * QUARTER_HOUR_MS)
    history.observe(gated([("pv", ACTIVE_POWER, QH0 + 10, 8.0)]))  # arrives late
    history.flush(QH0 + 3 * QUARTER_HOUR_MS)
    assert history.series("pv", QH0, 1)[0] == pytest.approx(4.0)  # (1 + 3 + 8) / 3
    assert history.stored_rows() == 1


def test_history_survives_a_restart_and_partial_quarter_hours_merge(tmp_path: Path) -> None:
    first = GatedHistory(tmp_path / "history.db")
    first.observe(gated([("pv", ACTIVE_POWER, QH0, 2.0)]))
    first.flush_all(QH0)  # stop in the middle of the quarter-hour
    first.close()
    second = GatedHistory(tmp_path / "history.db")
    assert second.series("pv", QH0, 1)[0] == 2.0
    second.observe(gated([("pv", ACTIVE_POWER, QH0 + 60_000, 4.0)]))
    second.flush(QH0 + 2 * QUARTER_HOUR_MS)
    assert second.series("pv", QH0, 1)[0] == 3.0
    second.close()


def test_rows_older_than_the_retention_are_pruned_and_counted(tmp_path: Path) -> None:
    history = GatedHistory(tmp_path / "history.db", retention_days=2)
    history.observe(gated([("pv", ACTIVE_POWER, QH0, 1.0)]))
    history.flush(QH0 + DAY_MS)
    assert history.stored_rows() == 1
    history.observe(gated([("pv", ACTIVE_POWER, QH0 + 3 * DAY_MS, 1.0)]))
    history.flush(QH0 + 3 * DAY_MS + 2 * QUARTER_HOUR_MS)  # the first row is now too old
    assert history.stored_rows() == 1 and math.isnan(history.series("pv", QH0, 1)[0])
    history.observe(gated([("pv", ACTIVE_POWER, QH0, 1.0)]))  # very late: dropped
    history.flush(QH0 + 3 * DAY_MS + 2 * QUARTER_HOUR_MS)
    assert history.dropped_expired == 1 and history.stored_rows() == 1


def test_keep_records_only_the_chosen_assets(history: GatedHistory) -> None:
    history.observe(gated([("pv", ACTIVE_POWER, QH0, 1.0), ("bat", ACTIVE_POWER, QH0, 2.0)]))
    history.flush_all(QH0, keep=lambda a: a == "pv")
    assert history.stored_rows() == 1


def test_series_refuses_an_unaligned_start(history: GatedHistory) -> None:
    with pytest.raises(ValueError):
        history.series("pv", QH0 + 1, 4)


async def test_a_real_pipeline_commit_feeds_the_history(tmp_path: Path) -> None:
    clock = SystemClock()
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    registry = AssetRegistry(tmp_path / "registry.db")
    registry.add_site("s1", clock.now_ms())
    registry.add_assets([Asset("s1-pv", "s1", AssetKind.PV_INVERTER, rated_p_kw=10.0)])
    keys = SigningKeyRegistry(tmp_path / "registry.db")
    signer = EnvelopeSigner(Ed25519PrivateKey.generate(), str(PEER.spiffe_id))
    keys.enroll(PEER.spiffe_id, signer.public_key_raw, clock.now_ms())
    store = TelemetryStore(tmp_path / "telemetry.db", clock, synchronous="NORMAL")
    pipeline = IngestPipeline(
        trust_domain="gridfort.test",
        registry=registry,
        keys=keys,
        revocations=RevocationList(tmp_path / "registry.db", clock),
        store=store,
        audit=audit,
        clock=clock,
    )
    history = GatedHistory(tmp_path / "history.db")
    pipeline.add_commit_observer(history.observe)
    now = clock.now_ms()
    t = now - 5_000
    batch = tpb.TelemetryBatch(
        site_id="s1",
        seq=1,
        sealed_ms=now,
        measurements=[
            tpb.Measurement(
                asset_id="s1-pv",
                quantity=tpb.Quantity.QUANTITY_ACTIVE_POWER,
                unit=tpb.Unit.UNIT_KW,
                value=v,
                ts_ms=t,
            )
            for v in (4.0, 6.0)
        ],
    )
    envelope = signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, batch.SerializeToString(), now)
    peer = Peer(PEER.spiffe_id, 1, now - 60_000, now + 3_600_000)
    try:
        result = await pipeline.ingest(peer, envelope)
        assert result.committed == 2, result
        history.flush_all(now)
        qh = t - t % QUARTER_HOUR_MS
        assert history.series("s1-pv", qh, 1)[0] == 5.0
        assert np.isnan(history.series("s1-pv", qh - QUARTER_HOUR_MS, 1)[0])
    finally:
        history.close()
        store.close()
        registry.close()
        audit.close()
