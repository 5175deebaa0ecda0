"""A policy set's own tests, run the same way by every engine.

Two forms live in the ``*_test.rego`` files (see ``policies/market_test.rego``):

- ``test_*`` rules: a test passes iff the rule evaluates to ``true``;
- a ``cases`` table: ``{name: {"input": doc, "allow": true}}`` or
  ``{name: {"input": doc, "deny": [codes]}}``. Each input is decided by
  ``data.gridfort.market.decision`` and must be allowed without reasons, or denied with
  exactly that set of reason codes.

An engine supplies a :class:`TestEvaluator` (two primitives: the value of a rule, and the
decision for an input); :func:`run_policy_tests` does the rest, so the table means the
same thing to regopy and to OPA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from control_plane.markets.policy.engine import PolicyEngineError, decision_from_result
from control_plane.markets.policy.policy_set import CASES_RULE, PolicySet, RegoTest


@dataclass(frozen=True, slots=True)
class RegoTestResult:
    test: RegoTest
    passed: bool
    detail: str = ""


class TestEvaluator(Protocol):
    """What a test run needs from an engine loaded with the policy *and* its tests."""

    def rule_value(self, ref: str) -> object:
        """The value of ``ref`` (``data.<package>.<rule>``), None if undefined.
        PolicyEngineError if it cannot be evaluated."""
        ...

    def decision(self, input_doc: object) -> object:
        """The raw value of the decision rule for ``input_doc`` (None if undefined)."""
        ...


#: Builds an evaluator for ``policy`` that can evaluate the given refs.
EvaluatorFactory = Callable[[PolicySet, Sequence[str]], TestEvaluator]


def run_policy_tests(policy: PolicySet, evaluator: EvaluatorFactory) -> list[RegoTestResult]:
    """Every ``test_*`` rule and every ``cases`` entry of ``policy``; [] if it has none."""
    rules = policy.tests()
    tables = [RegoTest(f, pkg, CASES_RULE, case=True) for f, pkg in policy.case_tables()]
    if not rules and not tables:
        return []
    try:
        ev = evaluator(policy, [t.ref for t in rules + tables])
    except PolicyEngineError as e:
        return [RegoTestResult(t, False, str(e)) for t in rules + tables]
    results = [_run_rule(ev, t) for t in rules]
    for table in tables:
        results.extend(_run_table(ev, table))
    return results


def _run_rule(ev: TestEvaluator, test: RegoTest) -> RegoTestResult:
    try:
        value = ev.rule_value(test.ref)
    except PolicyEngineError as e:
        return RegoTestResult(test, False, str(e))
    if value is True:
        return RegoTestResult(test, True)
    return RegoTestResult(test, False, "undefined" if value is None else "false")


def _run_table(ev: TestEvaluator, table: RegoTest) -> list[RegoTestResult]:
    try:
        cases = ev.rule_value(table.ref)
    except PolicyEngineError as e:
        return [RegoTestResult(table, False, str(e))]
    if not isinstance(cases, dict) or not cases:
        return [RegoTestResult(table, False, "cases is not a non-empty object")]
    return [
        _run_case(ev, RegoTest(table.file, table.package, str(name), case=True), case)
        for name, case in sorted(cases.items())
    ]


def _expected(case: object) -> str | None:
    """``"allow"`` or ``"deny A,B"`` from a well-formed case; None if malformed."""
    if not isinstance(case, dict) or "input" not in case:
        return None
    allow, deny = case.get("allow"), case.get("deny")
    if allow is True and deny is None:
        return "allow"
    if allow is None and isinstance(deny, list) and deny and all(isinstance(c, str) for c in deny):
        return "deny " + ",".join(sorted(set(deny)))
    return None


def _run_case(ev: TestEvaluator, test: RegoTest, case: object) -> RegoTestResult:
    want = _expected(case)
    if want is None or not isinstance(case, dict):
        return RegoTestResult(
            test, False, 'a case needs an input and "allow": true or "deny": [codes]'
        )
    try:
        decision = decision_from_result(
            ev.decision(case["input"]), decision_id="", policy_version=""
        )
    except PolicyEngineError as e:
        return RegoTestResult(test, False, f"no decision: {e}")
    got = "allow" if decision.allow else "deny " + ",".join(sorted(set(decision.reason_codes)))
    if got == want:
        return RegoTestResult(test, True)
    return RegoTestResult(test, False, f"expected {want}, got {got}")
