"""Policies load only when their own Rego tests pass; a bad update keeps the last good set."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from control_plane.markets.policy.gateway import PolicyGate
from control_plane.markets.policy.loader import PolicyLoader
from control_plane.markets.policy.policy_set import read_policy_dir
from control_plane.markets.policy.rego_engine import run_rego_tests
from security.audit_log import AuditLog
from tests.markets.conftest import POLICIES, audit_records, context, submit

_REPO_TESTS = run_rego_tests(read_policy_dir(POLICIES))


def test_repository_policy_has_tests() -> None:
    assert len(_REPO_TESTS) >= 30


@pytest.mark.parametrize("result", _REPO_TESTS, ids=lambda r: r.test.name)
def test_rego_test_passes(result: object) -> None:
    assert getattr(result, "passed", False), getattr(result, "detail", "")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(POLICIES, d)
    return d


def test_version_is_sha256_of_sorted_files(policy_dir: Path) -> None:
    h = hashlib.sha256()
    for path in sorted([*policy_dir.glob("*.rego"), *policy_dir.glob("*.json")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    assert read_policy_dir(policy_dir).version == h.hexdigest()


def test_loader_loads_tested_policy(policy_dir: Path, audit: AuditLog, tmp_path: Path) -> None:
    loader = PolicyLoader(policy_dir, audit=audit)
    result = loader.reload()
    assert result.loaded, result.reason
    assert loader.engine is not None
    assert loader.engine.policy_version == read_policy_dir(policy_dir).version
    rec = audit_records(tmp_path / "audit.jsonl")[-1]
    assert rec["event"] == "policy.load" and rec["decision"] == "allow"


def test_policy_with_failing_tests_is_not_loaded_and_last_good_is_kept(
    policy_dir: Path, audit: AuditLog, tmp_path: Path
) -> None:
    loader = PolicyLoader(policy_dir, audit=audit)
    good = loader.reload()
    assert good.loaded
    # A "harmless" update that lifts the lot minimum: its own tests catch it.
    params = policy_dir / "market_params.json"
    params.write_text(
        params.read_text().replace('"day_ahead": 100, "intraday"', '"day_ahead": 10, "intraday"', 1)
    )
    bad = loader.reload()
    assert not bad.loaded
    assert "gridfort.market_test.cases.undersized_bid_is_denied" in bad.reason
    assert bad.active_version == good.active_version
    assert loader.engine is not None and loader.engine.policy_version == good.active_version
    # The kept policy still decides: 0.05 MW is still too small.
    d = PolicyGate(lambda: loader.engine, audit).check(submit(volume_mw=0.05), context())
    assert "LOT_TOO_SMALL" in d.reason_codes
    rec = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "policy.load"][-1]
    assert rec["decision"] == "deny" and rec["reason"] == "POLICY_NOT_LOADED"
    assert "gridfort.market_test.cases.undersized_bid_is_denied" in rec["details"]["tests_failed"]


def test_policy_that_does_not_parse_is_not_loaded(policy_dir: Path) -> None:
    loader = PolicyLoader(policy_dir)
    assert loader.reload().loaded
    before = loader.engine
    (policy_dir / "market.rego").write_text("package gridfort.market\nallow if {{{\n")
    result = loader.reload()
    assert not result.loaded
    assert loader.engine is before


def test_policy_without_tests_is_not_loaded(policy_dir: Path) -> None:
    (policy_dir / "market_test.rego").unlink()
    loader = PolicyLoader(policy_dir)
    result = loader.reload()
    assert not result.loaded
    assert "no tests" in result.reason
    assert loader.engine is None


def test_always_allow_update_is_caught_by_its_own_tests(policy_dir: Path) -> None:
    # An update that always allows while keeping tests: the deny tests fail.
    src = (policy_dir / "market.rego").read_text()
    (policy_dir / "market.rego").write_text(
        src.replace('decision := {"allow": count(reasons) == 0', 'decision := {"allow": true', 1)
    )
    result = PolicyLoader(policy_dir).reload()
    assert not result.loaded
    assert len(result.failed_tests) > 10


def test_missing_directory_is_not_loaded(tmp_path: Path) -> None:
    result = PolicyLoader(tmp_path / "nope").reload()
    assert not result.loaded and "does not exist" in result.reason


def test_policy_that_crashes_the_engine_is_refused_and_the_process_survives(
    policy_dir: Path, audit: AuditLog, tmp_path: Path
) -> None:
    # An OPA-style test: the embedded engine aborts the process on `with input as`.
    loader = PolicyLoader(policy_dir, audit=audit)
    good = loader.reload()
    assert good.loaded
    tests = policy_dir / "market_test.rego"
    tests.write_text(
        tests.read_text()
        + "\ntest_opa_style if {\n\tdata.gridfort.market.decision.allow with input as base\n}\n"
    )
    bad = loader.reload()
    assert not bad.loaded
    assert "crashed the regopy engine" in bad.reason
    assert loader.engine is not None and loader.engine.policy_version == good.active_version
    d = PolicyGate(lambda: loader.engine, audit).check(submit(volume_mw=0.05), context())
    assert "LOT_TOO_SMALL" in d.reason_codes
    rec = [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "policy.load"][-1]
    assert rec["decision"] == "deny" and "crashed" in rec["details"]["message"]


def test_data_file_that_is_not_an_object_is_not_loaded(policy_dir: Path) -> None:
    loader = PolicyLoader(policy_dir)
    assert loader.reload().loaded
    (policy_dir / "market_params.json").write_text("[1, 2, 3]\n")
    result = loader.reload()
    assert not result.loaded and "not a JSON object" in result.reason
    assert loader.engine is not None  # the last good set stays
