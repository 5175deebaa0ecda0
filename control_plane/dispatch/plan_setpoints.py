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

from control_plane.commands.group_messages import SiteSetpoints
from control_plane.optimizer.assets import STEPS, FleetState
from control_plane.optimizer.plan import Plan

QUARTER_HOUR_MS = 900_000
CURTAILMENT_EPS_KW = 0.01


@dataclass(frozen=True, slots=True)
class Expected:
    """What one asset should do during a step: follow ``p_kw`` (``setpoint``) or stay at or
    below it (``cap``, PV) [kW]."""

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
    activation within the capacity the plan reserved, :mod:`control_plane.dispatch.afrr`)."""
    if not 0 <= step < STEPS:
        raise ValueError(f"step must be in 0..{STEPS - 1}, got {step}")
    if plan.asset_ids != fleet.asset_ids:
        raise ValueError("the plan was not made for this fleet (asset order differs)")
    start = day_start_ms + step * QUARTER_HOUR_MS
    out = StepSetpoints(step, start, start + QUARTER_HOUR_MS)
    row = {aid: i for i, aid in enumerate(plan.asset_ids)}
    per_site: dict[str, list[tuple[str, float]]] = defaultdict(list)

    def add(asset_id: str, site_id: str, mode: str, p_kw: float) -> None:
        per_site[site_id].append((asset_id, p_kw))
        out.expected[asset_id] = Expected(asset_id, site_id, mode, p_kw)

    offsets = offsets_kw or {}
    for bat in fleet.batteries:
        planned = float(plan.p_kw[row[bat.asset_id], step]) + offsets.get(bat.asset_id, 0.0)
        add(bat.asset_id, bat.site_id, "setpoint", planned)
    for ev in fleet.evs:
        add(ev.asset_id, ev.site_id, "setpoint", min(0.0, float(plan.p_kw[row[ev.asset_id], step])))
    for pv in fleet.pvs:
        planned = max(0.0, float(plan.p_kw[row[pv.asset_id], step]))
        rated = rated_kw.get(pv.asset_id)
        if planned < pv.forecast_kw[step] - CURTAILMENT_EPS_KW:
            add(pv.asset_id, pv.site_id, "cap", planned if rated is None else min(planned, rated))
        elif rated is not None:
            add(pv.asset_id, pv.site_id, "cap", rated)
        else:
            out.skipped[pv.asset_id] = "PV rating unknown: cannot lift its cap"
    for load in fleet.loads:
        max_draw_kw = min(load.p_max_kw, rated_kw.get(load.asset_id, load.p_max_kw))
        planned = float(plan.p_kw[row[load.asset_id], step])
        # the device takes it as a maximum draw: a load drawing less (a hot tank) follows
        add(load.asset_id, load.site_id, "draw_limit", min(0.0, max(-max_draw_kw, planned)))
    out.sections = [
        SiteSetpoints(site, tuple(a for a, _ in entries), tuple(p for _, p in entries))
        for site, entries in sorted(per_site.items())
    ]
    return out
