"""A refusal flood writes a bounded number of audit records and loses no count."""

from __future__ import annotations

import json
from pathlib import Path

from security.audit_log import AuditLog, verify_audit_log
from security.audit_throttle import ThrottledAudit
from security.clock import ManualClock
from security.refusals import Reason, Refusal


def test_flood_is_bounded_and_counted(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    log = AuditLog(tmp_path / "a.jsonl", clock)
    audit = ThrottledAudit(log, clock, burst=5, rate_per_s=2.0)
    bad = Refusal(Reason.BAD_SIGNATURE, "forged", "spiffe://d/edge/evil")
    other = Refusal(Reason.BAD_SIGNATURE, "forged", "spiffe://d/edge/honest")
    written = sum(audit.record_refusal(bad, event="ingest") for _ in range(1000))
    assert written == 5
    assert audit.record_refusal(other, event="ingest")  # another identity is not starved
    clock.advance(1000)  # two more tokens
    assert audit.record_refusal(bad, event="ingest")
    audit.flush()
    log.close()
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    refusals = [r for r in records if r["event"] == "ingest"]
    summaries = [r for r in records if r["event"] == "refusals_suppressed"]
    assert len(refusals) == 7
    assert sum(r["details"]["count"] for r in summaries) == 995
    assert verify_audit_log(tmp_path / "a.jsonl").ok
