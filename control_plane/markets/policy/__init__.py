"""Policy decisions for market actions: one engine interface, the embedded regopy engine,
a loader that only loads tested policy sets, and the fail-closed, audited gate."""

from control_plane.markets.policy.engine import Decision, PolicyEngine, PolicyEngineError
from control_plane.markets.policy.gateway import MarketContext, PolicyGate, build_input
from control_plane.markets.policy.loader import LoadResult, PolicyLoader

__all__ = [
    "Decision",
    "LoadResult",
    "MarketContext",
    "PolicyEngine",
    "PolicyEngineError",
    "PolicyGate",
    "PolicyLoader",
    "build_input",
]
