"""The policy engines Gridfort can use, by the name config gives them.

| name     | engine                                              | where it runs |
|----------|-----------------------------------------------------|---------------|
| `regopy` | rego-cpp via regopy (the embedded default)          | in-process    |
| `opa`    | OPA v1.20.2 (Go) via opa-golib-python-bindings      | in-process    |

An OPA *server* over REST would be a third backend behind the same protocol; no OPA
server binary is installable from the registries this project reaches (see
docs/policy-writing.md, "Engines").
"""

from __future__ import annotations

from enum import StrEnum

from control_plane.markets.policy.engine import PolicyBackend
from control_plane.markets.policy.opa_engine import OpaBackend
from control_plane.markets.policy.rego_engine import RegoBackend


class EngineKind(StrEnum):
    REGOPY = "regopy"
    OPA = "opa"


def backend_for(kind: EngineKind | str) -> PolicyBackend:
    """The backend named ``kind``; ValueError naming the choices for an unknown name."""
    try:
        kind = EngineKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in EngineKind)
        raise ValueError(f"policy engine {kind!r} is not one of {names}") from None
    if kind is EngineKind.OPA:
        return OpaBackend()
    return RegoBackend()


def all_backends() -> list[PolicyBackend]:
    """One backend of every kind, available here or not (``unavailable_reason`` says)."""
    return [backend_for(k) for k in EngineKind]
