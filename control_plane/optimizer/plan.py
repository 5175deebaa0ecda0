"""The optimizer's output: per-asset power per step and FCR capacity per block, with provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from control_plane.optimizer.constraints import FloatArray


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why the optimal schedule could not be used: a named constraint (group), the assets or
    sites that need it relaxed, and a message; ``slack`` is the relaxation needed [kW or kWh]."""

    constraint: str
    subjects: tuple[str, ...]
    message: str
    slack: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """A day-ahead plan for a fleet.

    ``p_kw`` (n_assets, STEPS) [kW], rows in :attr:`FleetState.asset_ids` order, + export /
    - import. ``reserve_kw`` (n_batteries, blocks) [kW] symmetric FCR per battery and block.
    ``status``: ``optimal``, ``feasible`` (time limit hit with an incumbent) or ``fallback``.
    ``bids`` is False for a fallback plan: it places no market bids, so integral market rules
    do not apply to it. ``solve_s`` is solver-side time [s]; ``wall_s`` the whole call [s].
    """

    asset_ids: tuple[str, ...]
    p_kw: FloatArray
    reserve_kw: FloatArray
    status: str
    bids: bool
    objective_eur: float = float("nan")
    solve_s: float = 0.0
    wall_s: float = 0.0
    diagnosis: tuple[Diagnosis, ...] = ()
    info: dict[str, float] = field(default_factory=dict)

    def portfolio_kw(self) -> FloatArray:
        """Net portfolio power per step [kW]."""
        return np.asarray(self.p_kw.sum(axis=0), dtype=np.float64)
