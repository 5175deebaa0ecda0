"""Telemetry store: group commit, idempotence, isolation of a bad batch, NaN in quarantine."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from control_plane.ingest.types import QuarantinedMeasurement
from control_plane.store.telemetry_store import CommitOutcome, CommitRequest, TelemetryStore
from security.clock import ManualClock
from security.refusals import Reason


def request(
    seq: int, digest: bytes = b"a" * 32, quarantined: list[QuarantinedMeasurement] | None = None
) -> CommitRequest:
    return CommitRequest(
        "s1", seq, digest, "k" * 32, 1, 1, 1, [("s1-pv", 1, 1, 2.5)], quarantined or []
    )


async def test_commit_is_idempotent_and_high_water_marks_survive_reopen(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.db", ManualClock(5))
    assert await store.commit(request(1)) is CommitOutcome.COMMITTED
    assert await store.commit(request(1)) is CommitOutcome.DUPLICATE
    store.close()
    store = TelemetryStore(tmp_path / "t.db", ManualClock(5))
    assert store.high_water_marks() == {"s1": 1}
    assert store.batch_digest("s1", 1) == b"a" * 32
    assert store.counts().measurements == 1
    store.close()


async def test_nan_in_quarantine_does_not_fail_its_group(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.db", ManualClock(5))
    nan = QuarantinedMeasurement(0, "s1-pv", 1, 1, math.nan, Reason.VALUE_NOT_FINITE)
    results = await asyncio.gather(
        store.commit(request(1)),
        store.commit(request(2, b"b" * 32, [nan])),
        store.commit(request(3, b"c" * 32)),
    )
    assert results == [CommitOutcome.COMMITTED] * 3
    assert store.counts().quarantined == 1
    store.close()


async def test_conflicting_batch_fails_alone(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.db", ManualClock(5))
    await store.commit(request(1))
    results = await asyncio.gather(
        store.commit(request(1, b"x" * 32)),
        store.commit(request(2, b"y" * 32)),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and results[1] is CommitOutcome.COMMITTED
    store.close()


async def test_database_files_are_owner_only(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.db", ManualClock(5))
    await store.commit(request(1))
    store.close()
    assert (tmp_path / "t.db").stat().st_mode & 0o777 == 0o600
