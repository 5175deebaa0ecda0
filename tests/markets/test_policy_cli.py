"""CLI smoke: ``gridfort policy check`` prints the decision JSON; ``policy test`` runs Rego tests."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from control_plane.cli import policy as policy_cli
from security.audit_log import verify_audit_log
from tests.markets.conftest import ALICE, DELIVERY_MS, NOW_MS, POLICIES, TD


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gridfort")
    sub = parser.add_subparsers(dest="command", required=True)
    policy_cli.register(sub)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def _action_file(tmp_path: Path, **overrides: Any) -> Path:
    doc = {
        "action": {
            "kind": "submit",
            "actor": {"spiffe_id": ALICE.spiffe_id, "role": "operator"},
            "product": "day_ahead",
            "side": "sell",
            "volume_mw": 5,
            "price_eur_per_mwh": 80,
            "delivery_start_ms": DELIVERY_MS,
        },
        "context": {
            "trust_domain": TD,
            "now_ms": NOW_MS,
            "verified_flexibility_mw": 20,
            "reference_price_eur_per_mwh": 75,
        },
    }
    doc["action"].update(overrides)
    path = tmp_path / "action.json"
    path.write_text(json.dumps(doc))
    return path


def test_policy_check_allows_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit.jsonl"
    code = _run(
        ["policy", "check", "--action", str(_action_file(tmp_path)), "--audit-log", str(audit)]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["allow"] is True and out["reasons"] == []
    assert len(out["policy_version"]) == 64 and out["decision_id"]
    assert verify_audit_log(audit).ok


def test_policy_check_denies_with_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _action_file(tmp_path, volume_mw=5.05)
    code = _run(
        ["policy", "check", "--action", str(path), "--audit-log", str(tmp_path / "a.jsonl")]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["allow"] is False
    assert out["reasons"][0].startswith("LOT_INCREMENT:")


def test_policy_check_with_untested_policy_denies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(POLICIES / "market.rego", policies)
    shutil.copy(POLICIES / "market_params.json", policies)
    code = _run(
        [
            "policy",
            "check",
            "--action",
            str(_action_file(tmp_path)),
            "--policies",
            str(policies),
            "--audit-log",
            str(tmp_path / "a.jsonl"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["reasons"][0].startswith("NO_POLICY_LOADED:")
    assert "policy not loaded" in captured.err


def test_policy_test_runs_rego_tests(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["policy", "test"]) == 0
    out = capsys.readouterr().out
    assert "PASS gridfort.market_test.cases.valid_order_is_allowed" in out
    assert " 0 failed" in out
