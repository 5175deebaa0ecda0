"""The optimizer's output: per-asset power per step, FCR and aFRR capacity per block, with
provenance."""

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
    ``afrr_up_kw`` / ``afrr_down_kw`` (n_batteries, blocks) [kW] aFRR capacity per battery and
    block: up (positive aFRR, the battery can raise its export / cut its import on call) and
    down (negative aFRR); omitted, they are zeros of ``reserve_kw``'s shape (no aFRR).
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
    afrr_up_kw: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    afrr_down_kw: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        for name in ("afrr_up_kw", "afrr_down_kw"):
            if np.asarray(getattr(self, name)).size == 0:  # not given: no aFRR
                object.__setattr__(self, name, np.zeros_like(self.reserve_kw, dtype=np.float64))

    def portfolio_kw(self) -> FloatArray:
        """Net portfolio power per step [kW]."""
        return np.asarray(self.p_kw.sum(axis=0), dtype=np.float64)
