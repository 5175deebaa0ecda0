"""The gate fails closed and audits every decision, allowed or denied."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from control_plane.markets.policy.engine import Decision, PolicyEngineError
from control_plane.markets.policy.gateway import PolicyGate, build_input
from control_plane.markets.policy.rego_engine import RegoEngine
from security.audit_log import AuditLog, verify_audit_log
from security.refusals import GridfortError
from tests.markets.conftest import ALICE, audit_records, context, submit


class RaisingEngine:
    policy_version = "v-raising"

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        raise PolicyEngineError("connection refused")


class CrashingEngine:
    policy_version = "v-crashing"

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        raise RuntimeError("segfault-ish")


class HangingEngine:
    policy_version = "v-hanging"

    def __init__(self) -> None:
        self.release = threading.Event()

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        self.release.wait(5)
        return Decision(True, [], "late", self.policy_version)


class LyingEngine:
    """Says allow while giving reasons: malformed, must not allow."""

    policy_version = "v-lying"

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        return Decision(True, ["LOT_TOO_SMALL: x"], "d", self.policy_version)


@pytest.fixture
def hanging() -> Iterator[HangingEngine]:
    engine = HangingEngine()
    yield engine
    engine.release.set()


def _only_decision(tmp_path: Path) -> dict[str, Any]:
    records = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] != "audit.genesis"]
    assert len(records) == 1
    return records[0]


def test_policy_engine_down_denies_and_audits(audit: AuditLog, tmp_path: Path) -> None:
    d = PolicyGate(lambda: RaisingEngine(), audit).check(submit(), context())
    assert not d.allow
    assert d.reason_codes == ["ENGINE_ERROR"]
    assert d.policy_version == "v-raising"
    rec = _only_decision(tmp_path)
    assert rec["decision"] == "deny" and rec["reason"] == "ENGINE_ERROR"
    assert rec["details"]["decision_id"] == d.decision_id


def test_engine_crash_never_reaches_the_caller(audit: AuditLog) -> None:
    d = PolicyGate(lambda: CrashingEngine(), audit).check(submit(), context())
    assert d.reason_codes == ["ENGINE_ERROR"]
    assert "segfault" not in d.reasons[0]


def test_policy_engine_timeout_denies_and_audits(
    audit: AuditLog, tmp_path: Path, hanging: HangingEngine
) -> None:
    d = PolicyGate(lambda: hanging, audit, timeout_s=0.05).check(submit(), context())
    assert not d.allow
    assert d.reasons == ["ENGINE_TIMEOUT: no policy decision within 50 ms"]
    assert _only_decision(tmp_path)["reason"] == "ENGINE_TIMEOUT"


def test_no_policy_loaded_denies_and_audits(audit: AuditLog, tmp_path: Path) -> None:
    d = PolicyGate(lambda: None, audit).check(submit(), context())
    assert d.reason_codes == ["NO_POLICY_LOADED"]
    assert d.policy_version == "none"
    assert _only_decision(tmp_path)["decision"] == "deny"


def test_malformed_allow_from_engine_is_a_deny(audit: AuditLog) -> None:
    d = PolicyGate(lambda: LyingEngine(), audit).check(submit(), context())
    assert d.reason_codes == ["ENGINE_ERROR"]


def test_allow_and_deny_are_audited_with_id_version_input(
    gate: PolicyGate, rego_engine: RegoEngine, tmp_path: Path
) -> None:
    allowed = gate.check(submit(), context())
    denied = gate.check(submit(volume_mw=5.05), context())
    assert allowed.allow and not denied.allow
    assert allowed.decision_id != denied.decision_id
    records = audit_records(tmp_path / "audit.jsonl")[1:]
    assert [r["decision"] for r in records] == ["allow", "deny"]
    for rec, dec in zip(records, (allowed, denied), strict=True):
        assert rec["event"] == "market.policy_decision"
        assert rec["identity"] == ALICE.spiffe_id
        assert rec["details"]["decision_id"] == dec.decision_id
        assert rec["details"]["policy_version"] == rego_engine.policy_version
        assert rec["details"]["reasons"] == dec.reasons
        assert rec["details"]["input"] == build_input(
            submit(volume_mw=5.05 if not dec.allow else 5.0), context()
        )
    assert records[1]["reason"] == "LOT_INCREMENT"
    assert verify_audit_log(tmp_path / "audit.jsonl").ok


class BrokenAudit:
    def append(self, *args: object, **kwargs: object) -> None:
        raise GridfortError("disk full")


def test_unauditable_allow_becomes_deny(rego_engine: RegoEngine) -> None:
    gate = PolicyGate(lambda: rego_engine, BrokenAudit())  # type: ignore[arg-type]
    d = gate.check(submit(), context())
    assert not d.allow
    assert d.reason_codes == ["AUDIT_UNAVAILABLE"]


def test_build_input_carries_gate_closure_and_kw(rego_engine: RegoEngine) -> None:
    doc = build_input(submit(volume_mw=5.1), context(verified_flexibility_mw=4.9999))
    ctx = doc["context"]
    assert isinstance(ctx, dict)
    assert ctx["gate_closure_local"] == "2026-06-01T12:00:00+02:00"
    assert ctx["verified_flexibility_kw"] == 4999  # floored: never round flexibility up
    assert ctx["delivery_aligned"] is True
