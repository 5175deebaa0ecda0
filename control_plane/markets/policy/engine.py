"""The one interface every policy engine implements, the decision it returns, and the
backend that makes engines: one per engine technology, chosen by config.

A :class:`PolicyBackend` runs a policy set's own tests and compiles a tested set into a
:class:`PolicyEngine`; the loader uses one backend for both, so a policy is tested by the
engine that will decide with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from security.refusals import GridfortError

if TYPE_CHECKING:
    from control_plane.markets.policy.policy_set import PolicySet
    from control_plane.markets.policy.policy_tests import RegoTestResult

#: The Rego rule every engine evaluates: ``{"allow": bool, "reasons": [str]}``.
DECISION_RULE = "data.gridfort.market.decision"


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision. ``reasons`` are ``"CODE: message"`` strings; empty iff allowed."""

    allow: bool
    reasons: list[str] = field(default_factory=list)
    decision_id: str = ""
    policy_version: str = ""

    @property
    def reason_codes(self) -> list[str]:
        return [r.split(":", 1)[0] for r in self.reasons]

    def to_dict(self) -> dict[str, object]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "decision_id": self.decision_id,
            "policy_version": self.policy_version,
        }


class PolicyEngineError(GridfortError):
    """The engine could not decide (broken output, evaluation error). Callers deny."""


class PolicyEngineUnavailable(PolicyEngineError):
    """The engine cannot be reached or is not installed. Callers deny."""


class PolicyEngine(Protocol):
    """Decides one input document. Raises :class:`PolicyEngineError` when it cannot decide."""

    @property
    def policy_version(self) -> str: ...

    def decide(self, input_doc: Mapping[str, object]) -> Decision: ...


class PolicyBackend(Protocol):
    """One engine technology (regopy, OPA): tests policy sets and compiles tested ones."""

    @property
    def name(self) -> str: ...

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (not installed), or None if it can."""
        ...

    def run_tests(self, policy: PolicySet) -> list[RegoTestResult]:
        """The set's own tests, evaluated by this engine (see ``policy_tests.py``)."""
        ...

    def compile(self, policy: PolicySet) -> PolicyEngine:
        """An engine deciding with ``policy``; PolicyEngineError if it does not compile."""
        ...


def decision_from_result(result: object, *, decision_id: str, policy_version: str) -> Decision:
    """Validate an engine's raw result; anything but a clean decision raises (deny upstream)."""
    if not isinstance(result, dict):
        raise PolicyEngineError("policy returned no decision object")
    allow, reasons = result.get("allow"), result.get("reasons")
    if not isinstance(allow, bool) or not isinstance(reasons, list):
        raise PolicyEngineError("policy decision lacks a boolean allow and a reasons list")
    if not all(isinstance(r, str) for r in reasons):
        raise PolicyEngineError("policy decision reasons must be strings")
    if allow and reasons:
        raise PolicyEngineError("policy decision allows with reasons to deny")
    if not allow and not reasons:
        raise PolicyEngineError("policy decision denies without a reason")
    return Decision(
        allow=allow, reasons=list(reasons), decision_id=decision_id, policy_version=policy_version
    )
