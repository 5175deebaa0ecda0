"""The real OPA engine, in-process: OPA's Go ``rego`` package via opa-golib-python-bindings.

The issue's production option is an OPA *server* over REST (``opa-python-client``). No
OPA server binary can be installed from the registries this project reaches (PyPI,
Debian, npm: see docs/policy-writing.md, "Engines"); the real OPA Go engine can:
``opa-golib-python-bindings`` 0.4.4 ships OPA v1.20.2 compiled as a c-shared library
with a stdlib-only ctypes wrapper. This adapter evaluates the same ``.rego`` files with
it, behind the same :class:`~control_plane.markets.policy.engine.PolicyEngine` interface,
and its backend runs the policy's own tests with OPA itself.

Chosen by config (``engine = "opa"``); absent the package, the backend says why and the
gate denies every action with that reason (fail closed). The wheel declares Python
>= 3.14 but is a pure-ctypes ``py3-none`` wheel that works on 3.11: it is installed
with ``--ignore-requires-python`` (see the Makefile line in the report / docs).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.markets.policy.engine import (
    DECISION_RULE,
    Decision,
    PolicyEngineError,
    PolicyEngineUnavailable,
    decision_from_result,
)
from control_plane.markets.policy.policy_set import PolicySet
from control_plane.markets.policy.policy_tests import RegoTestResult, run_policy_tests

_opa: Any = None
try:
    import opa_bindings  # type: ignore[import-untyped,import-not-found,unused-ignore]

    _opa = opa_bindings
except (ImportError, OSError):  # not installed, or its shared library does not load here
    pass

DECISION_PATH = DECISION_RULE.removeprefix("data.")
PACKAGE = "opa-golib-python-bindings"


def _unavailable() -> str | None:
    if _opa is None:
        return f"the opa engine is not installed ({PACKAGE} 0.4.4)"
    return None


def _load(policy: PolicySet, *, with_tests: bool) -> Any:
    """A fresh OPA engine holding the set's modules (tests too if ``with_tests``) and data
    documents; PolicyEngineError if one does not compile."""
    why = _unavailable()
    if why is not None:
        raise PolicyEngineUnavailable(why)
    try:
        lib = _opa.OpaEngine()
    except OSError as e:  # the Go library does not load on this machine (e.g. glibc < 2.34)
        raise PolicyEngineUnavailable(f"the opa engine does not load here: {e}") from None
    lib.print_handler = lambda _message, _location: None  # policy print() is not logged
    for name, source in policy.modules if with_tests else policy.policy_files:
        try:
            lib.add_policy(name, source)
        except _opa.OpaError as e:
            lib.close()
            raise PolicyEngineError(f"{name} does not compile: {_short(e)}") from None
    for name, doc in policy.data_documents():
        try:
            lib.add_data(doc)
        except _opa.OpaError as e:
            lib.close()
            raise PolicyEngineError(f"{name} is not usable data: {_short(e)}") from None
    return lib


def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else type(e).__name__


def _document(lib: Any, path: str, input_doc: object) -> object:
    """The value of ``data.<path>`` (None if undefined); PolicyEngineError otherwise."""
    try:
        return lib.eval_document(path, input_doc)
    except _opa.OpaUndefinedError:
        return None
    except _opa.OpaError as e:
        raise PolicyEngineError(f"policy evaluation failed: {_short(e)}") from None
    except (TypeError, ValueError) as e:
        raise PolicyEngineError(f"input document is not JSON: {e}") from None


class OpaInProcessEngine:
    """A :class:`PolicySet` (its policy files, not its tests) loaded into OPA. Thread-safe:
    the bindings serialize evaluations per engine."""

    name = "opa"

    def __init__(self, policy: PolicySet) -> None:
        self._version = policy.version
        self._lib = _load(policy, with_tests=False)
        # Compile-time errors that only evaluation reveals (conflicts) fail the load, not a
        # later decision: evaluate once with an empty input.
        _document(self._lib, DECISION_PATH, {})

    @property
    def policy_version(self) -> str:
        return self._version

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        decision_id = uuid.uuid4().hex
        result = _document(self._lib, DECISION_PATH, dict(input_doc))
        return decision_from_result(result, decision_id=decision_id, policy_version=self._version)


class _OpaTestEvaluator:
    def __init__(self, policy: PolicySet, refs: Sequence[str]) -> None:
        self._lib = _load(policy, with_tests=True)

    def rule_value(self, ref: str) -> object:
        return _document(self._lib, ref.removeprefix("data."), None)

    def decision(self, input_doc: object) -> object:
        return _document(self._lib, DECISION_PATH, input_doc)


class OpaBackend:
    """Real OPA (Go) in-process; tests run by OPA too."""

    name = "opa"

    def unavailable_reason(self) -> str | None:
        return _unavailable()

    def run_tests(self, policy: PolicySet) -> list[RegoTestResult]:
        return run_policy_tests(policy, _OpaTestEvaluator)

    def compile(self, policy: PolicySet) -> OpaInProcessEngine:
        return OpaInProcessEngine(policy)
