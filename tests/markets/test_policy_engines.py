"""Every policy engine runs the policy's own tests, and an engine that cannot run fails
closed: the loader refuses with the reason, and the gate denies with it, audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.markets.policy import opa_engine
from control_plane.markets.policy.backends import EngineKind, all_backends, backend_for
from control_plane.markets.policy.engine import PolicyBackend
from control_plane.markets.policy.gateway import PolicyGate
from control_plane.markets.policy.loader import PolicyLoader
from control_plane.markets.policy.policy_set import read_policy_dir
from security.audit_log import AuditLog
from tests.markets.conftest import POLICIES, audit_records, context, submit


def _available(backend: PolicyBackend) -> PolicyBackend:
    why = backend.unavailable_reason()
    if why is not None:
        pytest.skip(f"policy engine {backend.name} is not available here: {why}")
    return backend


@pytest.mark.parametrize("backend", all_backends(), ids=lambda b: b.name)
def test_policy_own_tests_pass_in_every_engine(backend: PolicyBackend) -> None:
    results = _available(backend).run_tests(read_policy_dir(POLICIES))
    assert len(results) >= 40
    failed = [(r.test.label, r.detail) for r in results if not r.passed]
    assert failed == []


@pytest.mark.parametrize("backend", all_backends(), ids=lambda b: b.name)
def test_every_engine_loads_and_decides_through_the_loader(
    backend: PolicyBackend, audit: AuditLog, tmp_path: Path
) -> None:
    loader = PolicyLoader(POLICIES, audit=audit, backend=_available(backend))
    assert loader.reload().loaded
    gate = PolicyGate(lambda: loader.engine, audit, engine_name=loader.engine_name)
    assert gate.check(submit(), context()).allow
    assert gate.check(submit(volume_mw=0.05), context()).reason_codes == [
        "LOT_INCREMENT",
        "LOT_TOO_SMALL",
    ]
    load = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "policy.load"]
    assert load[-1]["details"]["engine"] == backend.name


def test_engine_not_installed_fails_closed_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, audit: AuditLog, tmp_path: Path
) -> None:
    monkeypatch.setattr(opa_engine, "_opa", None)  # exactly the state without the package
    backend = backend_for(EngineKind.OPA)
    loader = PolicyLoader(POLICIES, audit=audit, backend=backend)
    result = loader.reload()
    assert not result.loaded and loader.engine is None
    assert "policy engine opa is unavailable" in result.reason
    gate = PolicyGate(
        lambda: loader.engine, audit, engine_name="opa", why_no_engine=loader.why_no_engine
    )
    d = gate.check(submit(), context())
    assert not d.allow and d.reason_codes == ["NO_POLICY_LOADED"]
    assert "opa-golib-python-bindings" in d.reasons[0]
    decisions = [
        r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "market.policy_decision"
    ]
    assert decisions[-1]["decision"] == "deny"
    assert decisions[-1]["reason"] == "NO_POLICY_LOADED"
    assert decisions[-1]["details"]["engine"] == "opa"


def test_unknown_engine_name_is_refused_at_config_time() -> None:
    with pytest.raises(ValueError, match="not one of regopy, opa"):
        backend_for("opa-server")
