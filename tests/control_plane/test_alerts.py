"""The alert book: episodes per site and detector, written by its own thread in the
running control plane (a flood of quarantines must not cost the event loop a commit each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.alerts import AlertBook
from control_plane.ingest.types import GatedBatch
from security.audit_log import AuditLog
from security.clock import ManualClock
from tests.markets.gated_fleet import SOC, battery, gated_batch

NOW = 1_800_000_000_000
FLEET = [battery("b1"), battery("b2")]


def lie(asset: str, t: int) -> GatedBatch:
    return gated_batch(FLEET, [], [(asset, SOC, t, 99.0)], now_ms=t)


@pytest.mark.parametrize("background", [False, True])
def test_a_flood_is_one_episode_per_site_and_detector(tmp_path: Path, background: bool) -> None:
    clock = ManualClock(NOW)
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    book = AlertBook(tmp_path / "alerts.db", clock, audit, background=background)
    try:
        for k in range(300):
            book.raise_from(lie("b1" if k % 3 else "b2", NOW + k))
            clock.advance(100)
        (alert,) = book.list()  # reads wait for the queued writes
        assert alert.measurements == 300 and alert.batches == 300
        assert alert.assets == ("b1", "b2") and alert.status == "open"
        raised = [line for line in audit.path.read_text().splitlines() if '"alert_raised"' in line]
        assert len(raised) == 1
    finally:
        book.close()
        audit.close()


def test_close_writes_what_is_queued_and_another_reader_sees_it(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    book = AlertBook(tmp_path / "alerts.db", clock, background=True)
    for k in range(50):
        book.raise_from(lie("b1", NOW + k))
    book.close()
    other = AlertBook(tmp_path / "alerts.db", clock)  # e.g. the CLI, another process
    (alert,) = other.list()
    assert alert.measurements == 50
