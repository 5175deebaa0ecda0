"""From an accepted OpenADR event to the optimizer, and the gated numbers the VEN decides on.

Pure functions, no I/O:

* :func:`steps_covered` / :func:`demand_response_for`: a :class:`FleetConstraint` ("reduce
  the fleet's load by X kW from start to end") on the planning day starting at
  ``day_start_ms`` becomes the optimizer's :class:`DemandResponse`, a cap on net import per
  15-minute step: ``cap = baseline_import_kw - X``. The baseline is the fleet's gated net
  import when the event was accepted (recorded with it, so the cap never moves afterwards).
  A step the event only partly covers is capped whole: the plan's power is constant within
  a step, so only a whole-step cap guarantees the covered part. Steps outside the day's
  ``STEPS`` quarter-hours are ignored; an event that misses the day gives None.
* :func:`available_reduction`: how much the fleet can reduce its net import for the event's
  duration, from gated state only: the verified *upward* (discharge) flexibility of
  :func:`control_plane.markets.flexibility.assess_fleet` (fresh, non-suspect batteries,
  energy-limited over the duration). Nothing else counts yet (never over-counted).
* :func:`fleet_import_kw`: the fleet's net import [kW] (+ import, the OpenADR load
  convention) from fresh, non-suspect gated active power; the baseline and the VTN report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from control_plane.assets.model import Asset
from control_plane.markets.flexibility import FlexibilityAssessment, FlexibilityRules, assess_fleet
from control_plane.markets.openadr_ven import FleetConstraint
from control_plane.optimizer.assets import STEPS, DemandResponse
from control_plane.state import GatedStateView
from gridfort.v1 import telemetry_pb2 as tpb

STEP_MS = 15 * 60_000  #: one optimizer step [ms]
ACTIVE_POWER = tpb.QUANTITY_ACTIVE_POWER


def steps_covered(start_ms: int, end_ms: int, day_start_ms: int) -> tuple[int, int] | None:
    """The steps ``[first, last)`` of the day starting at ``day_start_ms`` [ms] that the
    window ``[start_ms, end_ms)`` [ms] touches, partial steps included; None if none."""
    if end_ms <= start_ms:
        return None
    first = max((start_ms - day_start_ms) // STEP_MS, 0)
    last = min(-((day_start_ms - end_ms) // STEP_MS), STEPS)  # ceil division
    return (int(first), int(last)) if first < last else None


def demand_response_for(
    constraint: FleetConstraint,
    day_start_ms: int,
    *,
    baseline_import_kw: float,
    site_ids: frozenset[str] = frozenset(),
) -> DemandResponse | None:
    """The optimizer's cap for ``constraint`` on the day starting at ``day_start_ms`` [ms]:
    net import <= ``baseline_import_kw - reduce_load_kw`` [kW] in every step the event
    touches (module docstring), for the assets at ``site_ids`` (empty: the whole fleet)."""
    steps = steps_covered(constraint.start_ms, constraint.end_ms, day_start_ms)
    if steps is None:
        return None
    cap_kw = float(baseline_import_kw) - float(constraint.reduce_load_kw)
    first, last = steps
    return DemandResponse(constraint.event_id, first, (cap_kw,) * (last - first), site_ids)


def available_reduction(
    assets: Iterable[Asset],
    state: GatedStateView,
    now_ms: int,
    hours: float,
    rules: FlexibilityRules,
) -> FlexibilityAssessment:
    """The verified flexibility behind a reduction sustained for ``hours`` [h]; the
    reduction [kW] is its ``up_kw`` (module docstring). Gated state only."""
    return assess_fleet(assets, state, now_ms, hours, rules)


def fleet_import_kw(
    assets: Iterable[Asset],
    state: GatedStateView,
    now_ms: int,
    max_age_ms: int,
    site_ids: frozenset[str] = frozenset(),
) -> float:
    """Net import [kW] (+ import) of the assets at ``site_ids`` (empty: all), summing the
    latest gated active power of each asset that is not suspect and at most ``max_age_ms``
    [ms] old (older, future-dated or missing values count 0)."""
    total_export_kw = 0.0
    for asset in assets:
        if site_ids and asset.site_id not in site_ids:
            continue
        if state.is_suspect(asset.asset_id, now_ms):
            continue
        v = state.get(asset.asset_id, ACTIVE_POWER)
        if v is None or not math.isfinite(v.value) or not 0 <= now_ms - v.ts_ms <= max_age_ms:
            continue
        total_export_kw += v.value
    return -total_export_kw
