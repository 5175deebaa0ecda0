"""Store follower: fleet state and the PV history follow the batches other processes commit.

Two :class:`TelemetryStore` instances on one SQLite file stand for two processes (an ingest
worker committing, the planning control plane following), as in production: real files,
real WAL readers, no mocks of the store.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.alerts import AlertBook
from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import AssetRegistry
from control_plane.config import ControlPlaneConfig
from control_plane.forecast.history import ACTIVE_POWER, GatedHistory
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.types import (
    GatedRows,
    GateEvidence,
    MeasurementRow,
    Peer,
    QuarantinedMeasurement,
)
from control_plane.state import FleetState, GatedValue
from control_plane.store.commit_ledger import CommitLedger
from control_plane.store.follower import StoreFollower
from control_plane.store.telemetry_store import CommitOutcome, CommitRequest, TelemetryStore
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.envelope import EnvelopeSigner
from security.identity import Role, SpiffeId
from security.refusals import ConfigError, Reason
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry

SOC = int(tpb.Quantity.QUANTITY_STATE_OF_CHARGE)
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
EVIDENCE = GateEvidence("temporal:soc_balance", "t1", 9.0, 1.0, ("b1/5",), "SoC jumped")


def request(
    seq: int,
    rows: Iterable[MeasurementRow],
    quarantined: Iterable[QuarantinedMeasurement] = (),
    site: str = "s1",
) -> CommitRequest:
    return CommitRequest(site, seq, b"d%d" % seq, "k", 0, 0, 0, list(rows), list(quarantined))


def gate_verdict(asset_id: str, ts_ms: int) -> QuarantinedMeasurement:
    return QuarantinedMeasurement(
        0, asset_id, SOC, ts_ms, 99.0, Reason.FDI_TEMPORAL_INCONSISTENT, EVIDENCE
    )


def validation_refusal(asset_id: str, ts_ms: int) -> QuarantinedMeasurement:
    return QuarantinedMeasurement(1, asset_id, SOC, ts_ms, math.nan, Reason.VALUE_NOT_FINITE)


def value(state: FleetState, asset_id: str, quantity: int) -> float | None:
    latest = state.get(asset_id, quantity)
    return None if latest is None else latest.value


@dataclass
class Observed:
    batches: list[GatedRows]

    def __call__(self, rows: GatedRows) -> None:
        self.batches.append(rows)

    @property
    def accepted(self) -> list[MeasurementRow]:
        return [row for b in self.batches for row in b.accepted]


@dataclass
class Processes:
    worker: TelemetryStore  # another process's store: commits
    here: TelemetryStore  # this process's store: the follower reads it
    path: Path


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Processes]:
    path = tmp_path / "telemetry.db"
    clock = SystemClock()
    worker = TelemetryStore(path, clock, synchronous="NORMAL")
    here = TelemetryStore(path, clock, synchronous="NORMAL")
    try:
        yield Processes(worker, here, path)
    finally:
        worker.close()
        here.close()


async def test_another_processs_commit_reaches_fleet_state_and_observers(
    stores: Processes,
) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state)
    observed = Observed([])
    follower.add_observer(observed)
    await follower.poll()  # start: empty store
    assert follower.started and state.get("b1", SOC) is None
    outcome = await stores.worker.commit(
        request(
            1,
            [("b1", SOC, T0, 55.0), ("pv1", ACTIVE_POWER, T0, 4.0)],
            [gate_verdict("b2", T0), validation_refusal("b3", T0)],
        )
    )
    assert outcome is CommitOutcome.COMMITTED
    await follower.poll()
    assert value(state, "b1", SOC) == 55.0
    assert value(state, "pv1", ACTIVE_POWER) == 4.0
    assert state.get("b2", SOC) is None and state.get("b3", SOC) is None
    # the gate's verdict marks its asset suspect; validation's refusal does not
    assert state.is_suspect("b2", T0 + 1000) and not state.is_suspect("b3", T0 + 1000)
    assert sorted(observed.accepted) == [("b1", SOC, T0, 55.0), ("pv1", ACTIVE_POWER, T0, 4.0)]
    assert [q.evidence for q in observed.batches[0].gate_quarantined] == [EVIDENCE]
    status = follower.status()
    assert status["measurements_applied"] == 2 and status["quarantine_applied"] == 2
    assert status["lag_rows"] == {"measurements": 0, "quarantine": 0}


async def test_an_older_sample_never_overwrites_a_newer_one(stores: Processes) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state)
    await follower.poll()
    await stores.worker.commit(request(1, [("b1", SOC, T0 + 2000, 60.0)]))
    await follower.poll()
    await stores.worker.commit(request(2, [("b1", SOC, T0 + 1000, 10.0)]))  # late, older
    await stores.worker.commit(request(3, [("b1", SOC, T0 + 500, 11.0)]))
    await follower.poll()
    assert state.get("b1", SOC) == GatedValue(T0 + 2000, 60.0)


async def test_rows_are_read_in_bounded_chunks_and_lag_is_reported(stores: Processes) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state, chunk_rows=3, max_chunks=2)
    follower.add_observer(Observed([]))  # an observer needs every row: row by row
    await follower.poll()
    await stores.worker.commit(request(1, [("b1", SOC, T0 + i, float(i)) for i in range(10)]))
    await follower.poll()  # 2 chunks of 3 rows: 4 behind
    assert follower.stats.measurements_applied == 6
    assert follower.lag_rows == (4, 0)
    await follower.poll()
    assert follower.stats.measurements_applied == 10 and follower.lag_rows == (0, 0)
    assert value(state, "b1", SOC) == 9.0


async def test_a_pending_own_commit_holds_the_follower_until_it_settles(
    stores: Processes,
) -> None:
    """NATS redelivered a batch to a worker while this process was committing it too: the
    worker won, this process gets DUPLICATE, so the rows are not its own: apply them."""
    state = FleetState()
    ledger = CommitLedger()
    follower = StoreFollower(stores.here, state, ledger=ledger)
    follower.add_observer(Observed([]))  # an observer needs every row: row by row
    await follower.poll()
    ledger.begin("s1", 1)
    await stores.worker.commit(request(1, [("b1", SOC, T0, 40.0)]))
    await follower.poll()
    assert state.get("b1", SOC) is None and follower.lag_rows == (1, 0)
    ledger.settle("s1", 1, committed=False)  # the store said DUPLICATE here
    await follower.poll()
    assert value(state, "b1", SOC) == 40.0


async def test_own_commits_are_not_fed_to_the_observers_twice(tmp_path: Path) -> None:
    """A real pipeline commits in this process (fleet state and history see it at once);
    a worker commits in another: the follower adds the worker's rows only."""
    clock = SystemClock()
    peer_id = SpiffeId("gridfort.test", Role.EDGE, "s1")
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    registry = AssetRegistry(tmp_path / "registry.db")
    registry.add_site("s1", clock.now_ms())
    registry.add_assets([Asset("s1-pv", "s1", AssetKind.PV_INVERTER, rated_p_kw=10.0)])
    keys = SigningKeyRegistry(tmp_path / "registry.db")
    signer = EnvelopeSigner(Ed25519PrivateKey.generate(), str(peer_id))
    keys.enroll(peer_id, signer.public_key_raw, clock.now_ms())
    store = TelemetryStore(tmp_path / "telemetry.db", clock, synchronous="NORMAL")
    worker = TelemetryStore(tmp_path / "telemetry.db", clock, synchronous="NORMAL")
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
    pipeline.commit_ledger = CommitLedger()
    follower = StoreFollower(store, pipeline.state, ledger=pipeline.commit_ledger)
    follower.add_observer(history.observe)
    now = clock.now_ms()
    try:
        await follower.poll()  # start
        batch = tpb.TelemetryBatch(
            site_id="s1",
            seq=1,
            sealed_ms=now,
            measurements=[
                tpb.Measurement(
                    asset_id="s1-pv",
                    quantity=tpb.Quantity.QUANTITY_ACTIVE_POWER,
                    unit=tpb.Unit.UNIT_KW,
                    value=4.0,
                    ts_ms=now - 5_000,
                )
            ],
        )
        envelope = signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, batch.SerializeToString(), now)
        result = await pipeline.ingest(Peer(peer_id, 1, now - 60_000, now + 60_000), envelope)
        assert result.committed == 1, result
        assert history.samples_observed == 1  # the pipeline fed it
        await worker.commit(request(2, [("s1-pv", ACTIVE_POWER, now - 4_000, 6.0)]))
        await follower.poll()
        assert history.samples_observed == 2  # the worker's row once, the own row not again
        assert follower.stats.rows_skipped_own == 1
        assert pipeline.commit_ledger.own_count == 0  # read past: forgotten
        assert value(pipeline.state, "s1-pv", ACTIVE_POWER) == 6.0
        await follower.poll()  # nothing new: nothing fed
        assert history.samples_observed == 2
    finally:
        history.close()
        worker.close()
        store.close()
        registry.close()
        audit.close()


async def test_a_store_read_error_is_logged_and_retried(stores: Processes) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state, interval_s=0.05)
    await follower.start()
    try:
        with sqlite3.connect(stores.path) as other:  # the table goes away under the reader
            other.execute("ALTER TABLE measurements RENAME TO measurements_away")
        await _wait_for(lambda: follower.stats.read_errors >= 2)
        assert "no such table" in follower.stats.last_error
        with sqlite3.connect(stores.path) as other:
            other.execute("ALTER TABLE measurements_away RENAME TO measurements")
        await stores.worker.commit(request(1, [("b1", SOC, T0, 30.0)]))
        await _wait_for(lambda: state.get("b1", SOC) is not None)
        assert follower.status()["lag_rows"] == {"measurements": 0, "quarantine": 0}
    finally:
        await follower.stop()


async def test_malformed_rows_are_skipped_and_counted(stores: Processes) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state)
    await follower.poll()
    with sqlite3.connect(stores.path) as other:  # rows no pipeline writes (a damaged store)
        other.execute("INSERT INTO measurements VALUES ('s9', 1, 'b1', 999, ?, 1.0)", (T0,))
        other.execute("INSERT INTO measurements VALUES ('s9', 1, 'b2', ?, ?, 'x')", (SOC, T0))
        other.execute(
            "INSERT INTO quarantine VALUES ('s9', 1, 0, 'b3', 5, ?, 1.0, '1.0', 'NO_SUCH', NULL)",
            (T0,),
        )
        other.execute(  # a gate verdict with unreadable evidence still marks suspect
            "INSERT INTO quarantine VALUES"
            " ('s9', 1, 1, 'b4', 5, ?, 1.0, '1.0', 'FDI_TEMPORAL_INCONSISTENT', '{oops')",
            (T0,),
        )
    await stores.worker.commit(request(1, [("b5", SOC, T0, 20.0)]))
    await follower.poll()
    assert dict(follower.stats.malformed) == {
        "quantity": 1,
        "value": 1,
        "reason": 1,
        "evidence": 1,
    }
    assert state.get("b1", 999) is None and state.get("b2", SOC) is None
    assert not state.is_suspect("b3", T0) and state.is_suspect("b4", T0)
    assert value(state, "b5", SOC) == 20.0
    assert follower.lag_rows == (0, 0)


async def test_a_restarted_control_plane_replays_the_newest_rows_into_state_only(
    stores: Processes,
) -> None:
    await stores.worker.commit(request(1, [("b1", SOC, T0, 50.0), ("b2", SOC, T0, 70.0)]))
    await stores.worker.commit(request(2, [("b1", SOC, T0 + 1000, 51.0)], [gate_verdict("b3", T0)]))
    state = FleetState()  # after a restart: empty
    follower = StoreFollower(stores.here, state)
    observed = Observed([])
    follower.add_observer(observed)
    await follower.poll()  # start: replay
    assert value(state, "b1", SOC) == 51.0
    assert value(state, "b2", SOC) == 70.0
    assert state.is_suspect("b3", T0 + 1000)  # a restart does not clear suspicion
    assert observed.batches == []  # the history already holds what the last run saw
    assert follower.stats.rows_replayed == 4
    await stores.worker.commit(request(3, [("b2", SOC, T0 + 2000, 71.0)]))
    await follower.poll()
    assert observed.accepted == [("b2", SOC, T0 + 2000, 71.0)]


async def test_the_replay_is_bounded_by_rows(stores: Processes) -> None:
    await stores.worker.commit(request(1, [("b1", SOC, T0, 50.0), ("b2", SOC, T0, 70.0)]))
    state = FleetState()
    follower = StoreFollower(stores.here, state, replay_rows=1)
    await follower.poll()
    assert state.get("b1", SOC) is None and value(state, "b2", SOC) == 70.0


def test_the_follow_interval_is_validated_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nats_follow_interval_s"):
        ControlPlaneConfig(state_dir=tmp_path, nats_follow_interval_s=0.0)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_own_batches_are_forgotten_once_read_past_even_behind_a_pending_one(
    stores: Processes,
) -> None:
    state = FleetState()
    ledger = CommitLedger()
    follower = StoreFollower(stores.here, state, ledger=ledger)
    follower.add_observer(Observed([]))  # an observer needs every row: row by row
    await follower.poll()
    for seq in (1, 2):  # this process commits (and applies) two batches
        ledger.begin("s1", seq)
        await stores.here.commit(request(seq, [("b1", SOC, T0 + seq, float(seq))]))
    ledger.settle("s1", 1, committed=True)  # the second one's outcome is not in yet
    await follower.poll()
    assert follower.lag_rows == (1, 0) and follower.stats.rows_skipped_own == 1
    ledger.settle("s1", 2, committed=True)
    await follower.poll()
    assert follower.lag_rows == (0, 0) and follower.stats.rows_skipped_own == 2
    assert ledger.own_count == 0  # both read past: forgotten
    assert state.get("b1", SOC) is None  # own rows are the pipeline's to apply, not ours


async def test_the_gates_verdicts_in_a_workers_commits_raise_alerts_here(
    stores: Processes, tmp_path: Path
) -> None:
    """A worker has no alert book: the SOC sees its sites' FDI verdicts through the
    control plane's follower, once per verdict, never for its own or replayed rows."""
    await stores.worker.commit(request(1, [], [gate_verdict("b0", T0 - 5000)], site="s0"))
    alerts = AlertBook(tmp_path / "alerts.db", SystemClock())
    ledger = CommitLedger()
    follower = StoreFollower(stores.here, FleetState(), ledger=ledger)
    follower.add_gate_observer(alerts.raise_for_site)
    await follower.poll()  # start: the verdict committed before is replayed, not alerted
    assert alerts.list() == []
    await stores.worker.commit(
        request(2, [("b1", SOC, T0, 55.0)], [gate_verdict("b2", T0), validation_refusal("b3", T0)])
    )
    ledger.begin("s2", 1)  # this process's own batch: its pipeline alerted already
    await stores.here.commit(request(1, [], [gate_verdict("b9", T0)], site="s2"))
    ledger.settle("s2", 1, committed=True)
    await follower.poll()
    raised = alerts.list()
    assert [(a.site_id, a.detector, a.assets) for a in raised] == [
        ("s1", "temporal:soc_balance", ("b2",))
    ]
    await follower.poll()  # nothing new: no second alert, the episode unchanged
    assert [a.alert_id for a in alerts.list()] == [raised[0].alert_id]
    alerts.close()


async def test_a_failing_gate_observer_does_not_stop_the_follower(stores: Processes) -> None:
    state = FleetState()
    follower = StoreFollower(stores.here, state)

    def broken(site: str, verdicts: list[QuarantinedMeasurement]) -> None:
        raise RuntimeError("alert store down")

    follower.add_gate_observer(broken)
    await follower.poll()
    await stores.worker.commit(request(1, [("b1", SOC, T0, 55.0)], [gate_verdict("b2", T0)]))
    await follower.poll()
    assert value(state, "b1", SOC) == 55.0 and state.is_suspect("b2", T0 + 1000)
    await stores.worker.commit(request(2, [("b1", SOC, T0 + 1000, 56.0)]))
    await follower.poll()
    assert value(state, "b1", SOC) == 56.0


async def test_without_observers_new_rows_are_grouped_per_asset_in_sqlite(
    stores: Processes,
) -> None:
    """No commit observer (no PV history): fleet state needs only the newest sample per
    (asset, quantity); the follower groups the new rows in SQLite, own rows included
    (applying them again changes nothing), and still follows the gate's verdicts."""
    state = FleetState()
    ledger = CommitLedger()
    follower = StoreFollower(stores.here, state, ledger=ledger)
    await follower.poll()
    rows = [("b1", SOC, T0 + i * 1000, float(i)) for i in range(50)]
    rows.insert(10, ("b1", SOC, T0 - 60_000, 1.0))  # an older sample arriving late
    await stores.worker.commit(request(1, rows, [gate_verdict("b2", T0)]))
    ledger.begin("s2", 1)  # this process's own batch (its pipeline applied it already)
    await stores.here.commit(request(1, [("b3", SOC, T0, 70.0)], site="s2"))
    ledger.settle("s2", 1, committed=True)
    await follower.poll()
    assert value(state, "b1", SOC) == 49.0 and value(state, "b3", SOC) == 70.0
    assert state.is_suspect("b2", T0 + 1000)
    assert follower.stats.measurement_rows_grouped == 52
    assert follower.stats.measurements_applied == 2  # one newest row per asset
    assert follower.lag_rows == (0, 0) and ledger.own_count == 0
    await stores.worker.commit(request(2, [("b1", SOC, T0 - 1, -5.0)]))  # older: ignored
    await follower.poll()
    assert value(state, "b1", SOC) == 49.0
