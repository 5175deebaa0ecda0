"""``gridfort policy``: check one market action against the policy, run the policy's tests.

``policy check --action FILE.json`` reads ``{"action": {...}, "context": {...}}`` (see
docs/policy-writing.md), loads the policy directory only if its tests pass, decides
through the same fail-closed, audited gate the market gateway uses, and prints the
decision as JSON. Exit status 0: allowed; 1: denied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from control_plane.markets.actions import action_from_dict
from control_plane.markets.policy.backends import EngineKind, backend_for
from control_plane.markets.policy.gateway import MarketContext, PolicyGate
from control_plane.markets.policy.isolated_check import check_isolated
from control_plane.markets.policy.loader import PolicyLoader
from control_plane.markets.policy.policy_set import read_policy_dir
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.refusals import GridfortError

DEFAULT_POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEFAULT_AUDIT_LOG = Path(".gridfort/state/audit.jsonl")


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="market policy (Rego): check an action, run tests")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    p = policy_sub.add_parser("check", help="decide one market action; print the decision JSON")
    p.add_argument("--action", type=Path, required=True, metavar="FILE.json")
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES, metavar="DIR")
    p.add_argument(
        "--audit-log", type=Path, default=DEFAULT_AUDIT_LOG, help="where the decision is audited"
    )
    _engine_argument(p)
    p.set_defaults(handler=policy_check)
    p = policy_sub.add_parser(
        "test", help="run the test_* rules and cases tables of the *_test.rego files"
    )
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES, metavar="DIR")
    _engine_argument(p)
    p.set_defaults(handler=policy_test)


def _engine_argument(p: Any) -> None:
    p.add_argument(
        "--engine",
        choices=[k.value for k in EngineKind],
        default=EngineKind.REGOPY.value,
        help="policy engine (default: regopy, embedded)",
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridfortError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise GridfortError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("action"), dict):
        raise GridfortError(f'{path}: expected {{"action": {{...}}, "context": {{...}}}}')
    return doc


def policy_check(args: argparse.Namespace) -> int:
    doc = _read_json(args.action)
    clock = SystemClock()
    action = action_from_dict(doc["action"])
    context_doc = doc.get("context", {})
    if not isinstance(context_doc, dict):
        raise GridfortError(f"{args.action}: context must be a JSON object")
    context = MarketContext.from_dict(context_doc, now_ms=clock.now_ms())
    backend = backend_for(getattr(args, "engine", EngineKind.REGOPY))
    with AuditLog(args.audit_log, clock) as audit:
        loader = PolicyLoader(args.policies, audit=audit, backend=backend)
        loaded = loader.reload()
        if not loaded.loaded:
            print(f"gridfort: policy not loaded: {loaded.reason}", file=sys.stderr)
        gate = PolicyGate(
            lambda: loader.engine,
            audit,
            engine_name=backend.name,
            why_no_engine=loader.why_no_engine,
        )
        decision = gate.check(action, context)
    print(json.dumps(decision.to_dict(), indent=2))
    return 0 if decision.allow else 1


def policy_test(args: argparse.Namespace) -> int:
    policy = read_policy_dir(args.policies)
    backend = backend_for(getattr(args, "engine", EngineKind.REGOPY))
    why, results = check_isolated(policy, backend)
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        detail = f" ({r.detail})" if r.detail else ""
        print(f"{status} {r.test.label}{detail}")
    failed = sum(1 for r in results if not r.passed)
    print(
        f"policy {policy.version[:16]} ({backend.name}): "
        f"{len(results) - failed} passed, {failed} failed"
    )
    if why:
        print(f"not loadable: {why}")
    return 0 if not why else 1
