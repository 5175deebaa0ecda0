"""The safe fallback plan: no market bids (no FCR, no aFRR), batteries idle, EVs and loads
charging at full power from the start of their window until their energy is met, PV
uncurtailed (scaled down only where a site's export limit would otherwise be exceeded)."""

from __future__ import annotations

import numpy as np

from control_plane.optimizer.assets import DT_H, STEPS, FleetState
from control_plane.optimizer.constraints import FloatArray, build_tables
from control_plane.optimizer.plan import Diagnosis, Plan


def earliest_fill(p_max_kw: FloatArray, e_kwh: FloatArray) -> FloatArray:
    """Import per step [kW] (n, STEPS): full ``p_max_kw`` from the first step until ``e_kwh``
    [kWh] is delivered (the last step partial); everything if ``e_kwh`` is out of reach."""
    cum_before = np.hstack([np.zeros((len(e_kwh), 1)), np.cumsum(p_max_kw, axis=1)[:, :-1]])
    room = (e_kwh[:, None] / DT_H) - cum_before
    return np.asarray(np.clip(np.minimum(p_max_kw, room), 0.0, None), dtype=np.float64)


def fallback_plan(
    fleet: FleetState, blocks: int = 6, diagnosis: tuple[Diagnosis, ...] = ()
) -> Plan:
    """The fallback plan of ``fleet`` (module docstring); ``diagnosis`` says why it was used."""
    t = build_tables(fleet)
    nb = len(fleet.batteries)
    demand = -earliest_fill(t.demand.p_import_max_kw, t.demand.e_required_kwh)
    pv = t.pv.p_avail_kw.copy()
    n_pv = len(fleet.pvs)
    for lim in t.limits:
        if not lim.name.startswith("site ") or not len(lim.pv_rows):
            continue
        others = -demand[lim.demand_rows].sum(axis=0)
        gen = pv[lim.pv_rows].sum(axis=0)
        allowed = np.clip(lim.export_max_kw + others, 0.0, None)
        scale = np.where(gen > allowed, allowed / np.maximum(gen, 1e-12), 1.0)
        pv[lim.pv_rows] *= scale[None, :]
    p = np.vstack([np.zeros((nb, STEPS)), demand, pv.reshape(n_pv, STEPS)])
    return Plan(
        asset_ids=fleet.asset_ids,
        p_kw=p,
        reserve_kw=np.zeros((nb, blocks)),
        afrr_up_kw=np.zeros((nb, blocks)),
        afrr_down_kw=np.zeros((nb, blocks)),
        status="fallback",
        bids=False,
        diagnosis=diagnosis,
    )
