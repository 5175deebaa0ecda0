"""Local frequency response, the pure core: FCR droop with a deadband and an FFR trigger.

No I/O and no clock reads: every function takes the measured frequency [Hz] and the
time [s of a monotonic clock]. The response is added to the asset's current setpoint;
positive means more export (under-frequency support), so a frequency dip makes a
battery discharge more or charge less. Sign convention of the project: + export.

FCR (containment): ``-fcr_kw_per_hz * (f - nominal -/+ deadband)`` beyond the
deadband, capped at ``+-fcr_max_kw``.
FFR (fast frequency reserve): when ``f`` falls to or below ``ffr_trigger_hz``, hold
``ffr_p_kw`` for ``ffr_duration_ms``; it fires again only after ``f`` recovered above
the trigger plus :data:`FFR_REARM_HYSTERESIS_HZ`. While FFR holds, the response is the
larger of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_node.safety_limits import FrequencyResponseParams

FFR_REARM_HYSTERESIS_HZ = 0.05
#: A reading further than this from nominal is a broken meter, not a grid event [Hz].
PLAUSIBLE_DEVIATION_HZ = 5.0


@dataclass(frozen=True, slots=True)
class ArmedResponse:
    """One asset's signed parameters and the wall-clock window they are armed for [Unix ms]."""

    asset_id: str
    params: FrequencyResponseParams
    active_from_ms: int
    active_until_ms: int

    def __post_init__(self) -> None:
        if not self.asset_id:
            raise ValueError("ArmedResponse.asset_id must be non-empty")
        if self.active_until_ms <= self.active_from_ms:
            raise ValueError("ArmedResponse: active_until_ms must be after active_from_ms")

    def active(self, now_ms: int) -> bool:
        return self.active_from_ms <= now_ms < self.active_until_ms


@dataclass(frozen=True, slots=True)
class ResponseState:
    """``ffr_started_s``: monotonic start of the latest FFR activation [s], None if never;
    ``ffr_latched``: FFR fired and the frequency has not recovered yet."""

    ffr_started_s: float | None = None
    ffr_latched: bool = False


@dataclass(frozen=True, slots=True)
class Reaction:
    """What to do after one frequency reading: the new state, the response [kW], and
    whether an FFR activation fired on this reading (the event whose latency counts)."""

    state: ResponseState
    response_kw: float
    ffr_fired: bool
    plausible: bool = True


def plausible(params: FrequencyResponseParams, hz: float) -> bool:
    """A reading a grid can have: finite and within 5 Hz of nominal."""
    return math.isfinite(hz) and abs(hz - params.nominal_hz) <= PLAUSIBLE_DEVIATION_HZ


def fcr_response_kw(params: FrequencyResponseParams, hz: float) -> float:
    """Droop response [kW] to frequency ``hz`` [Hz]: 0 inside the deadband."""
    deviation = hz - params.nominal_hz
    if abs(deviation) <= params.fcr_deadband_hz:
        return 0.0
    beyond = deviation - math.copysign(params.fcr_deadband_hz, deviation)
    return max(-params.fcr_max_kw, min(params.fcr_max_kw, -params.fcr_kw_per_hz * beyond))


def react(params: FrequencyResponseParams, state: ResponseState, hz: float, t_s: float) -> Reaction:
    """The response to one reading ``hz`` [Hz] taken at monotonic time ``t_s`` [s].

    An implausible reading changes nothing and asks for no response (a broken meter
    reading 0 Hz must not fire FFR)."""
    if not plausible(params, hz):
        return Reaction(state, 0.0, ffr_fired=False, plausible=False)
    fired = False
    trigger = params.ffr_trigger_hz
    if trigger > 0:
        if hz <= trigger and not state.ffr_latched:
            state, fired = ResponseState(t_s, True), True
        elif state.ffr_latched and hz > trigger + FFR_REARM_HYSTERESIS_HZ:
            state = ResponseState(state.ffr_started_s, False)
    response = fcr_response_kw(params, hz)
    started = state.ffr_started_s
    if started is not None and t_s - started < params.ffr_duration_ms / 1000:
        response = max(response, params.ffr_p_kw)
    return Reaction(state, response, fired)


def clamp(p_kw: float, bounds: tuple[float, float] | None) -> float | None:
    """``p_kw`` [kW] moved into ``bounds``; None if no setpoint is safe."""
    if bounds is None:
        return None
    lo, hi = bounds
    return max(lo, min(hi, p_kw))
