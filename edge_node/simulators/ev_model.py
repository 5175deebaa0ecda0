"""Pure EV-charging physics for one charge point with at most one vehicle plugged in. No I/O.

Sign convention *inside this module*: ``charge_kw`` >= 0 is the power the charger
draws from the grid [kW]. Adapters convert to Gridfort's generator sign
(charging is negative, ``p_kw = -charge_kw``) at their boundary, once.

Behaviour
---------
* No vehicle, or the battery is full (100 %): the charger draws nothing.
* A setpoint was written: the charger draws the setpoint (already validated to
  0..``max_charge_kw``) until the battery is full.
* No setpoint was ever written: it behaves like a dumb charger and draws
  ``max_charge_kw`` until the owner's target state of charge is reached.
* Energy reaching the battery is ``charge_kw * efficiency * dt``.
* A vehicle leaves at its ``departure_ms``; scheduled visits arrive when the
  charge point is free and their window ``[arrival_ms, departure_ms)`` is open.

All times are simulated time, Unix epoch [ms]; ``SimulatedTime`` maps the
injected clock onto it with a ``time_scale`` factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

_MS_PER_HOUR = 3_600_000.0


def _check_pct(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise ValueError(f"{name} must be within 0..100 %, got {value}")


@dataclass(frozen=True, slots=True)
class ChargerSpec:
    """The charge point's ratings.

    Parameters
    ----------
    max_charge_kw : float
        Highest charging power the charger (and cable) allows [kW], > 0.
    efficiency : float
        Fraction of grid energy that reaches the battery [-], in (0, 1].
    """

    max_charge_kw: float
    efficiency: float = 0.92

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_charge_kw) and self.max_charge_kw > 0.0):
            raise ValueError(f"max_charge_kw must be > 0, got {self.max_charge_kw}")
        if not (math.isfinite(self.efficiency) and 0.0 < self.efficiency <= 1.0):
            raise ValueError(f"efficiency must be within (0, 1], got {self.efficiency}")


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A plugged-in vehicle and its owner's constraint.

    Parameters
    ----------
    e_kwh : float
        Usable battery capacity [kWh], > 0.
    soc_pct : float
        State of charge [%], 0..100.
    target_soc_pct : float
        The owner's target state of charge [%], 0..100.
    departure_ms : int
        When the owner unplugs, simulated Unix epoch [ms]; 0 means unknown
        (the vehicle stays until the simulation removes it).
    """

    e_kwh: float
    soc_pct: float
    target_soc_pct: float
    departure_ms: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.e_kwh) and self.e_kwh > 0.0):
            raise ValueError(f"e_kwh must be > 0, got {self.e_kwh}")
        _check_pct("soc_pct", self.soc_pct)
        _check_pct("target_soc_pct", self.target_soc_pct)
        if self.departure_ms < 0:
            raise ValueError(f"departure_ms must be >= 0, got {self.departure_ms}")


@dataclass(frozen=True, slots=True)
class Visit:
    """A scheduled visit: ``vehicle`` (as it arrives) plugs in at ``arrival_ms`` [ms].

    The vehicle's ``departure_ms`` [ms] must be after ``arrival_ms``.
    """

    arrival_ms: int
    vehicle: Vehicle

    def __post_init__(self) -> None:
        if self.vehicle.departure_ms <= self.arrival_ms:
            raise ValueError("a scheduled visit must depart after it arrives")


@dataclass(frozen=True, slots=True)
class ChargerState:
    """The charge point at simulated time ``ts_ms`` [ms].

    ``setpoint_kw`` [kW] is None until a setpoint is written (dumb charging).
    """

    spec: ChargerSpec
    ts_ms: int
    vehicle: Vehicle | None = None
    setpoint_kw: float | None = None

    def __post_init__(self) -> None:
        if self.setpoint_kw is not None:
            check_setpoint(self.spec, self.setpoint_kw)

    @property
    def connected(self) -> bool:
        return self.vehicle is not None

    @property
    def charge_kw(self) -> float:
        """Power drawn from the grid right now [kW], >= 0."""
        return charge_power_kw(self.spec, self.vehicle, self.setpoint_kw)


def check_setpoint(spec: ChargerSpec, setpoint_kw: float) -> None:
    """Raise ValueError unless ``setpoint_kw`` [kW] is finite and within 0..max_charge_kw."""
    if not (math.isfinite(setpoint_kw) and 0.0 <= setpoint_kw <= spec.max_charge_kw):
        raise ValueError(
            f"setpoint {setpoint_kw} kW is outside 0..{spec.max_charge_kw} kW",
        )


def _stop_soc_pct(vehicle: Vehicle, setpoint_kw: float | None) -> float:
    """State of charge [%] at which charging stops: the target when dumb, else full."""
    return vehicle.target_soc_pct if setpoint_kw is None else 100.0


def charge_power_kw(spec: ChargerSpec, vehicle: Vehicle | None, setpoint_kw: float | None) -> float:
    """Instantaneous grid power drawn [kW], >= 0.

    Zero without a vehicle or once the stop state of charge is reached (100 %, or
    the target when no setpoint was written); otherwise the setpoint clamped to
    0..``max_charge_kw``, or ``max_charge_kw`` when no setpoint was written.
    """
    if vehicle is None or vehicle.soc_pct >= _stop_soc_pct(vehicle, setpoint_kw):
        return 0.0
    if setpoint_kw is None:
        return spec.max_charge_kw
    return min(max(setpoint_kw, 0.0), spec.max_charge_kw)


def with_setpoint(state: ChargerState, setpoint_kw: float) -> ChargerState:
    """The same state with a new setpoint [kW]; ValueError when out of range."""
    check_setpoint(state.spec, setpoint_kw)
    return replace(state, setpoint_kw=setpoint_kw)


def _integrate(state: ChargerState, end_ms: int) -> ChargerState:
    """Charge at constant demand from ``state.ts_ms`` to ``end_ms``, stopping at the stop SOC."""
    vehicle = state.vehicle
    p_kw = state.charge_kw
    if vehicle is None or p_kw <= 0.0:
        return replace(state, ts_ms=end_ms)
    stop_pct = _stop_soc_pct(vehicle, state.setpoint_kw)
    dt_h = (end_ms - state.ts_ms) / _MS_PER_HOUR
    stored_kwh = p_kw * state.spec.efficiency * dt_h
    soc_pct = min(vehicle.soc_pct + 100.0 * stored_kwh / vehicle.e_kwh, stop_pct)
    return replace(state, ts_ms=end_ms, vehicle=replace(vehicle, soc_pct=soc_pct))


def _active_visit(schedule: Sequence[Visit], ts_ms: int) -> Visit | None:
    for visit in schedule:
        if visit.arrival_ms <= ts_ms < visit.vehicle.departure_ms:
            return visit
    return None


def _next_event_ms(state: ChargerState, schedule: Sequence[Visit]) -> int | None:
    """The next departure (if plugged in) or arrival (if free) strictly after ``ts_ms``."""
    if state.vehicle is not None:
        return state.vehicle.departure_ms or None
    arrivals = [v.arrival_ms for v in schedule if v.arrival_ms > state.ts_ms]
    return min(arrivals, default=None)


def _settle(state: ChargerState, schedule: Sequence[Visit]) -> ChargerState:
    """Apply a due departure, then a due arrival, at ``state.ts_ms``."""
    vehicle = state.vehicle
    if vehicle is not None and 0 < vehicle.departure_ms <= state.ts_ms:
        state = replace(state, vehicle=None)
    if state.vehicle is None:
        visit = _active_visit(schedule, state.ts_ms)
        if visit is not None:
            state = replace(state, vehicle=visit.vehicle)
    return state


def advance(state: ChargerState, to_ms: int, schedule: Sequence[Visit] = ()) -> ChargerState:
    """Integrate the charge point from ``state.ts_ms`` to ``to_ms`` [ms].

    Arrivals and departures inside the interval split it, so the result does not
    depend on how finely the caller steps. ``to_ms`` must not be in the past.
    """
    if to_ms < state.ts_ms:
        raise ValueError(f"time went backwards: {to_ms} < {state.ts_ms}")
    while True:
        state = _settle(state, schedule)
        if state.ts_ms >= to_ms:
            return state
        event_ms = _next_event_ms(state, schedule)
        end_ms = to_ms if event_ms is None else min(to_ms, event_ms)
        state = _integrate(state, end_ms)


@dataclass(frozen=True, slots=True)
class SimulatedTime:
    """Maps the injected clock onto simulated time.

    ``sim_ms = origin_ms + (now_ms - origin_ms) * time_scale``: with
    ``time_scale`` = 60 one clock second is one simulated minute.

    Parameters
    ----------
    origin_ms : int
        Clock time at which both timelines coincide, Unix epoch [ms].
    time_scale : float
        Simulated seconds per clock second [-], > 0.
    """

    origin_ms: int
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0.0):
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    def at(self, now_ms: int) -> int:
        """Simulated time [ms] at clock time ``now_ms`` [ms]."""
        return self.origin_ms + round((now_ms - self.origin_ms) * self.time_scale)
