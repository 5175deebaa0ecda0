"""Frequency-response arming from the plan: each battery's FCR capacity per 4-h block as
signed droop parameters for its edge (sent with ``CommandDispatcher.send_frequency_arming``).

FCR as the European TSOs define it: full activation of the contracted capacity at
``full_activation_hz`` (200 mHz) deviation, a deadband of at most 10 mHz. FFR is a
separate product; it is armed only when ``ffr`` parameters are given. Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from control_plane.dispatch.plan_setpoints import QUARTER_HOUR_MS
from control_plane.optimizer.assets import FleetState
from control_plane.optimizer.market import MarketRules
from control_plane.optimizer.plan import Plan
from gridfort.v1 import command_pb2 as cpb

MIN_RESERVE_KW = 1e-3


@dataclass(frozen=True, slots=True)
class FcrSettings:
    """[Hz]: nominal, deadband, deviation of full activation."""

    nominal_hz: float = 50.0
    deadband_hz: float = 0.01
    full_activation_hz: float = 0.2

    def __post_init__(self) -> None:
        if self.full_activation_hz <= self.deadband_hz or self.deadband_hz < 0:
            raise ValueError("full_activation_hz must exceed the deadband (>= 0)")


@dataclass(frozen=True, slots=True)
class FfrSettings:
    """FFR: trigger [Hz], activation power as a fraction of the battery's FCR capacity [-]
    (capped at its rating), hold time [ms]."""

    trigger_hz: float = 49.7
    fraction_of_reserve: float = 1.0
    duration_ms: int = 5_000


def block_arming(
    plan: Plan,
    fleet: FleetState,
    rules: MarketRules,
    block: int,
    *,
    day_start_ms: int,
    fcr: FcrSettings | None = None,
    ffr: FfrSettings | None = None,
) -> dict[str, cpb.ArmFrequencyResponse]:
    """Per site: the arming of every battery with FCR capacity in ``block`` (0-based)."""
    if not 0 <= block < rules.blocks:
        raise ValueError(f"block must be in 0..{rules.blocks - 1}")
    if plan.reserve_kw.shape[0] != len(fleet.batteries):
        raise ValueError("the plan's reserve rows do not match the fleet's batteries")
    fcr = fcr or FcrSettings()
    start = day_start_ms + int(rules.starts()[block]) * QUARTER_HOUR_MS
    end = start + int(rules.block_steps()[block]) * QUARTER_HOUR_MS
    per_site: dict[str, list[cpb.FrequencyResponseParams]] = defaultdict(list)
    for row, bat in enumerate(fleet.batteries):
        reserve = float(plan.reserve_kw[row, block])
        if reserve < MIN_RESERVE_KW:
            continue
        params = cpb.FrequencyResponseParams(
            asset_id=bat.asset_id,
            nominal_hz=fcr.nominal_hz,
            fcr_deadband_hz=fcr.deadband_hz,
            fcr_kw_per_hz=reserve / (fcr.full_activation_hz - fcr.deadband_hz),
            fcr_max_kw=reserve,
        )
        if ffr is not None:
            params.ffr_trigger_hz = ffr.trigger_hz
            params.ffr_p_kw = min(bat.p_max_kw, ffr.fraction_of_reserve * reserve)
            params.ffr_duration_ms = ffr.duration_ms
        per_site[bat.site_id].append(params)
    return {
        site: cpb.ArmFrequencyResponse(active_from_ms=start, active_until_ms=end, assets=assets)
        for site, assets in sorted(per_site.items())
    }
