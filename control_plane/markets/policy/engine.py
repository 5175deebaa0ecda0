"""The one interface every policy engine implements, and the decision it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from security.refusals import GridfortError

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
    """The engine could not decide (unreachable, broken output, no policy). Callers deny."""


class PolicyEngine(Protocol):
    """Decides one input document. Raises :class:`PolicyEngineError` when it cannot decide."""

    @property
    def policy_version(self) -> str: ...

    def decide(self, input_doc: Mapping[str, object]) -> Decision: ...


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
