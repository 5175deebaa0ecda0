"""The plan's current quarter-hour as per-site setpoints. Pure: no I/O, time passed in.

A :class:`~control_plane.optimizer.plan.Plan` holds power per asset and quarter-hour
[kW, + export]. What an edge is asked for depends on the asset kind:

* battery, EV charger: the planned power is the setpoint;
* PV: the edge takes an export *cap*; the plan's power becomes the cap only where the
  plan curtails (planned < forecast), otherwise the cap is lifted to the inverter's
  rating, so a sunnier quarter-hour than forecast is not curtailed by accident;
* flexible load (heat pump, boiler): the planned power is the setpoint, clipped to
  [-rated, 0] (a load only imports; rated = its maximum draw ``p_max_kw``, or the
  registry's rating where that is lower). The edge writes it as the device's draw
  limit (``edge_node/devices/modbus_load.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from control_plane.commands.group_messages import SiteSetpoints
from control_plane.optimizer.assets import STEPS, FleetState
from control_plane.optimizer.plan import Plan

QUARTER_HOUR_MS = 900_000
CURTAILMENT_EPS_KW = 0.01


class Expected(NamedTuple):
    """What one asset should do during a step: follow ``p_kw`` (``setpoint``) or stay at or
    below it (``cap``, PV) [kW]. A named tuple: a plan step makes one per asset (100,000
    for a large fleet), and a tuple is built several times faster than a dataclass."""

    asset_id: str
    site_id: str
    mode: str  # "setpoint" | "cap" (PV: at most) | "draw_limit" (a load: import at most)
    p_kw: float


@dataclass
class StepSetpoints:
    """One step's sections, the expectation per asset, and what was left out and why."""

    step: int
    start_ms: int
    end_ms: int
    sections: list[SiteSetpoints] = field(default_factory=list)
    expected: dict[str, Expected] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # asset_id -> why


def step_at(day_start_ms: int, now_ms: int) -> int | None:
    """Index of the quarter-hour of the plan's day that holds ``now_ms``, None outside it."""
    step = (now_ms - day_start_ms) // QUARTER_HOUR_MS
    return int(step) if 0 <= step < STEPS else None


def plan_step(
    plan: Plan,
    fleet: FleetState,
    step: int,
    *,
    day_start_ms: int,
    rated_kw: Mapping[str, float],
    offsets_kw: Mapping[str, float] | None = None,
) -> StepSetpoints:
    """The setpoints of ``step`` per site; ``rated_kw`` gives ratings from the registry [kW]
    (PV: needed to lift a cap; flexible loads: bounds the draw with ``p_max_kw``).
    ``offsets_kw``: added to those batteries' planned power [kW, + export] (an aFRR
    activation within the capacity the plan reserved, :mod:`control_plane.dispatch.afrr`).
    Pure: may run in a worker thread (it costs about 5 us per asset)."""
    if not 0 <= step < STEPS:
        raise ValueError(f"step must be in 0..{STEPS - 1}, got {step}")
    if plan.asset_ids != fleet.asset_ids:
        raise ValueError("the plan was not made for this fleet (asset order differs)")
    start = day_start_ms + step * QUARTER_HOUR_MS
    out = StepSetpoints(step, start, start + QUARTER_HOUR_MS)
    # Plan rows are in fleet order (batteries, EVs, loads, PVs): one column, sliced by kind.
    p = plan.p_kw[:, step]
    nb, ne, nl = len(fleet.batteries), len(fleet.evs), len(fleet.loads)
    entries: list[Expected] = []
    bat = p[:nb].tolist()
    if offsets_kw:
        index = {b.asset_id: i for i, b in enumerate(fleet.batteries)}
        for asset_id, offset in offsets_kw.items():
            i = index.get(asset_id)
            if i is not None:
                bat[i] += offset
    entries += [
        Expected(b.asset_id, b.site_id, "setpoint", v)
        for b, v in zip(fleet.batteries, bat, strict=True)
    ]
    ev_kw = np.minimum(p[nb : nb + ne], 0.0).tolist()
    entries += [
        Expected(ev.asset_id, ev.site_id, "setpoint", v)
        for ev, v in zip(fleet.evs, ev_kw, strict=True)
    ]
    for pv, value in zip(fleet.pvs, p[nb + ne + nl :].tolist(), strict=True):
        planned = max(0.0, value)
        rated = rated_kw.get(pv.asset_id)
        if planned < pv.forecast_kw[step] - CURTAILMENT_EPS_KW:
            cap = planned if rated is None else min(planned, rated)
            entries.append(Expected(pv.asset_id, pv.site_id, "cap", cap))
        elif rated is not None:
            entries.append(Expected(pv.asset_id, pv.site_id, "cap", rated))
        else:
            out.skipped[pv.asset_id] = "PV rating unknown: cannot lift its cap"
    for load, planned in zip(fleet.loads, p[nb + ne : nb + ne + nl].tolist(), strict=True):
        max_draw_kw = min(load.p_max_kw, rated_kw.get(load.asset_id, load.p_max_kw))
        # the device takes it as a maximum draw: a load drawing less (a hot tank) follows
        draw = min(0.0, max(-max_draw_kw, planned))
        entries.append(Expected(load.asset_id, load.site_id, "draw_limit", draw))
    per_site: dict[str, list[Expected]] = defaultdict(list)
    for e in entries:
        per_site[e.site_id].append(e)
    out.expected = {e.asset_id: e for e in entries}
    out.sections = [
        SiteSetpoints(site, tuple(e.asset_id for e in group), tuple(e.p_kw for e in group))
        for site, group in sorted(per_site.items())
    ]
    return out
