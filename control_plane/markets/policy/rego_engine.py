"""The embedded policy engine: Rego evaluated in-process by regopy (rego-cpp), the default.

The policy is compiled once into a bundle with one entry point (the decision rule), so a
decision costs one input conversion and one bundle evaluation, not a compilation.

Two regopy 1.5.2 behaviours shape this adapter: reading the text of a *failed* output
through ``regopy.Output`` can crash the process, so outputs are read through the C
functions, error text via the interpreter; and the interpreter is not thread-safe, so
every call holds a lock.

What a decision costs here, and how the policy is shaped for it: docs/policy-writing.md,
"Decision latency".
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping, Sequence

from control_plane.markets.policy.engine import (
    DECISION_RULE,
    Decision,
    PolicyEngineError,
    decision_from_result,
)
from control_plane.markets.policy.policy_set import PolicySet
from control_plane.markets.policy.policy_tests import RegoTestResult, run_policy_tests

try:
    import regopy
    from regopy import rego_shared
except ImportError:  # pragma: no cover - regopy is a dependency; stays importable without it
    regopy = None
    rego_shared = None

DECISION_ENTRYPOINT = DECISION_RULE.removeprefix("data.").replace(".", "/")


def _interpreter(policy: PolicySet, *, with_tests: bool) -> object:
    if regopy is None:
        raise PolicyEngineError("regopy is not installed")
    interp = regopy.Interpreter()
    files = policy.modules if with_tests else policy.policy_files
    for name, source in files:
        try:
            interp.add_module(name, source)
        except regopy.RegoError as e:
            raise PolicyEngineError(f"{name} does not parse: {e}") from None
    for name, doc in policy.data_documents():
        try:
            interp.add_data_json(json.dumps(doc))
        except regopy.RegoError as e:
            raise PolicyEngineError(f"{name} is not usable data: {e}") from None
    return interp


def _error_text(interp: object) -> str:
    assert rego_shared is not None
    try:
        return str(rego_shared.rego_get_error(interp._impl))  # type: ignore[attr-defined]
    except Exception:
        return "unknown regopy error"


def _build(interp: object, entrypoints: list[str]) -> object:
    assert regopy is not None
    try:
        bundle = interp.build(None, entrypoints)  # type: ignore[attr-defined]
    except regopy.RegoError as e:
        raise PolicyEngineError(f"policy does not compile: {_first_line(str(e))}") from None
    if not bundle.ok():
        raise PolicyEngineError(f"policy does not compile: {_first_line(_error_text(interp))}")
    return bundle


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "Errors:"]
    return " | ".join(lines[:3]) if lines else "no detail"


def _query_entrypoint(interp: object, bundle: object, entrypoint: str) -> object:
    """The value of ``entrypoint`` (``None`` if undefined); PolicyEngineError on engine errors."""
    assert rego_shared is not None
    out = rego_shared.rego_bundle_query_entrypoint(
        interp._impl,  # type: ignore[attr-defined]
        bundle._impl,  # type: ignore[attr-defined]
        entrypoint,
    )
    try:
        if not rego_shared.rego_output_ok(out):
            raise PolicyEngineError(f"policy evaluation failed: {_first_line(_error_text(interp))}")
        text = rego_shared.rego_output_string(out)
    finally:
        rego_shared.rego_free_output(out)
    if text == "undefined":
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        raise PolicyEngineError("policy output is not JSON") from None
    results = parsed if isinstance(parsed, list) else [parsed]
    if len(results) != 1 or not isinstance(results[0], dict):
        raise PolicyEngineError("policy output has no single result")
    expressions = results[0].get("expressions")
    if not isinstance(expressions, list) or len(expressions) != 1:
        raise PolicyEngineError("policy output has no single expression")
    return expressions[0]


class RegoEngine:
    """A compiled :class:`PolicySet` (its policy files, not its tests), thread-safe."""

    name = "regopy"

    def __init__(self, policy: PolicySet) -> None:
        self._version = policy.version
        self._lock = threading.Lock()
        self._interp = _interpreter(policy, with_tests=False)
        self._bundle = _build(self._interp, [DECISION_ENTRYPOINT])

    @property
    def policy_version(self) -> str:
        return self._version

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        try:
            term = json.dumps(input_doc, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise PolicyEngineError(f"input document is not JSON: {e}") from None
        decision_id = uuid.uuid4().hex
        with self._lock:
            assert regopy is not None
            try:
                self._interp.set_input_term(term)  # type: ignore[attr-defined]
            except regopy.RegoError as e:
                raise PolicyEngineError(f"input rejected by the engine: {e}") from None
            result = _query_entrypoint(self._interp, self._bundle, DECISION_ENTRYPOINT)
        return decision_from_result(result, decision_id=decision_id, policy_version=self._version)


def _ref_entrypoint(ref: str) -> str:
    """``data.a.b.c`` -> ``a/b/c`` (the bundle's name for a rule)."""
    return ref.removeprefix("data.").replace(".", "/")


class _RegoTestEvaluator:
    """The policy and its tests in one interpreter; one bundle for every test rule."""

    def __init__(self, policy: PolicySet, refs: Sequence[str]) -> None:
        self._interp = _interpreter(policy, with_tests=True)
        entrypoints = [_ref_entrypoint(r) for r in refs] + [DECISION_ENTRYPOINT]
        self._bundle = _build(self._interp, entrypoints)

    def rule_value(self, ref: str) -> object:
        return _query_entrypoint(self._interp, self._bundle, _ref_entrypoint(ref))

    def decision(self, input_doc: object) -> object:
        assert regopy is not None
        try:
            term = json.dumps(input_doc, allow_nan=False)
            self._interp.set_input_term(term)  # type: ignore[attr-defined]
        except (TypeError, ValueError, regopy.RegoError) as e:
            raise PolicyEngineError(f"input rejected: {e}") from None
        return _query_entrypoint(self._interp, self._bundle, DECISION_ENTRYPOINT)


class RegoBackend:
    """The embedded default: regopy (rego-cpp) in-process."""

    name = "regopy"

    def unavailable_reason(self) -> str | None:
        return None if regopy is not None else "regopy is not installed"

    def run_tests(self, policy: PolicySet) -> list[RegoTestResult]:
        return run_policy_tests(policy, _RegoTestEvaluator)

    def compile(self, policy: PolicySet) -> RegoEngine:
        return RegoEngine(policy)


def run_rego_tests(policy: PolicySet) -> list[RegoTestResult]:
    """The set's own tests through regopy (see :mod:`policy_tests`)."""
    return RegoBackend().run_tests(policy)
