"""Every access decision reaches the audit chain; floods are counted, not written one by one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from control_plane.api.access_audit import SUPPRESSED_EVENT, AccessAudit, AccessDecision
from security.audit_log import AuditLog, verify_audit_log
from security.clock import ManualClock


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()][1:]  # without genesis


def deny(identity: str, route: str = "-", reason: str = "NOT_FOUND") -> AccessDecision:
    return AccessDecision("deny", identity, route, 404, reason, method="GET", target="/x")


def test_a_flood_is_bounded_and_fully_accounted_for(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    log = AuditLog(tmp_path / "audit.jsonl", clock)
    access = AccessAudit(log, clock, burst=20, rate_per_s=5.0)
    written = sum(access.record(deny("spiffe://d/soc/mallory")) for _ in range(100))
    assert written == 20 and access.suppressed_total == 80
    # someone else is not throttled by mallory's flood
    assert access.record(deny("spiffe://d/soc/alice"))
    clock.advance(1000)
    access.flush()
    recs = records(log.path)
    summaries = [r for r in recs if r["event"] == SUPPRESSED_EVENT]
    assert len(summaries) == 1 and summaries[0]["details"]["count"] == 80
    assert summaries[0]["identity"] == "spiffe://d/soc/mallory"
    denies = [r for r in recs if r["event"] == "api_request"]
    assert len(denies) == 21
    assert verify_audit_log(log.path).ok
    log.close()


def test_state_changes_are_never_throttled(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    log = AuditLog(tmp_path / "audit.jsonl", clock)
    access = AccessAudit(log, clock, burst=1, rate_per_s=0.001)
    ack = AccessDecision("allow", "spiffe://d/soc/alice", "/v1/alerts/{alert_id}/ack", 200,
                         method="POST", always=True)  # fmt: skip
    assert all(access.record(ack) for _ in range(50))
    assert len(records(log.path)) == 50
    log.close()


def test_a_record_carries_route_status_and_a_bounded_target(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    log = AuditLog(tmp_path / "audit.jsonl", clock)
    access = AccessAudit(log, clock)
    access.record(
        AccessDecision("deny", "spiffe://d/edge/s1", "/v1/alerts", 403, "ROLE_NOT_ALLOWED",
                       method="GET", target="/v1/alerts?" + "x" * 5000, message="role edge ...")
    )  # fmt: skip
    (r,) = records(log.path)
    assert (r["decision"], r["identity"], r["reason"]) == ("deny", "spiffe://d/edge/s1",
                                                           "ROLE_NOT_ALLOWED")  # fmt: skip
    assert r["details"]["route"] == "/v1/alerts" and r["details"]["status"] == 403
    assert len(r["details"]["target"]) == 256
    log.close()
