"""Gridfort as an OpenADR 2.0b VEN: demand-response events in, fleet constraints out, reports back.

Pure core: :func:`event_from_openleadr` turns an event (openleadr's dict form) into a
:class:`DemandResponseEvent`; :func:`constraint_for` maps it to a :class:`FleetConstraint`
(a load reduction [kW] over a time window); :func:`opt_for` opts in only when the
reduction fits the fleet's available flexible load, which must be computed from gated
state only.

Adapter: :class:`GridfortVen` wraps an ``openleadr`` client: it registers with the VTN,
answers each event with ``optIn``/``optOut`` after handing accepted constraints to the
dispatcher (``on_constraint``), and reports the fleet's real power [W] when the VTN asks.

Signal mapping (the two signals of the OpenADR 2.0b "simple" and load-dispatch programs):

| signal_name    | signal_type | reduction [kW]                                   |
|----------------|-------------|--------------------------------------------------|
| SIMPLE         | level       | level 0/1/2/3 -> 0, 1/3, 2/3, all of the flexible load |
| LOAD_DISPATCH  | delta       | -payload [kW] (a negative delta asks for less load) |

Anything else is opted out. The first interval with a non-zero reduction decides the
window's reduction; the window spans all intervals. Transport security (TLS client
certificates, XML signatures with the VTN's fingerprint) is configured by the caller;
the tests run plain HTTP on loopback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

OPT_IN = "optIn"
OPT_OUT = "optOut"
_SIMPLE_FRACTION = {0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0}


@dataclass(frozen=True, slots=True)
class DrInterval:
    start_ms: int
    duration_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class DemandResponseEvent:
    event_id: str
    signal_name: str
    signal_type: str
    intervals: tuple[DrInterval, ...]

    def __post_init__(self) -> None:
        if not self.event_id or not self.intervals:
            raise ValueError("an event has an ID and at least one interval")
        for i in self.intervals:
            if i.duration_ms <= 0 or not math.isfinite(i.value):
                raise ValueError(f"event {self.event_id}: interval with bad duration or value")


@dataclass(frozen=True, slots=True)
class FleetConstraint:
    """Reduce the fleet's load by ``reduce_load_kw`` [kW] from ``start_ms`` to ``end_ms``."""

    event_id: str
    start_ms: int
    end_ms: int
    reduce_load_kw: float


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return int(value.timestamp() * 1000)


def event_from_openleadr(event: Mapping[str, Any]) -> DemandResponseEvent:
    """An openleadr event dict as a typed event; ValueError if it is not one we understand."""
    try:
        event_id = str(event["event_descriptor"]["event_id"])
        signal = event["event_signals"][0]
        intervals = tuple(
            DrInterval(
                _ms(i["dtstart"]),
                int(i["duration"] / timedelta(milliseconds=1)),
                float(i["signal_payload"]),
            )
            for i in signal["intervals"]
        )
        return DemandResponseEvent(
            event_id, str(signal["signal_name"]), str(signal["signal_type"]), intervals
        )
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"malformed OpenADR event: {e!r}") from None


def constraint_for(event: DemandResponseEvent, flexible_load_kw: float) -> FleetConstraint | None:
    """The fleet constraint an event asks for, or None for a signal we do not serve. Pure."""
    reductions: list[float] = []
    for i in event.intervals:
        if event.signal_name == "SIMPLE" and event.signal_type == "level":
            level = int(i.value)
            if level not in _SIMPLE_FRACTION or level != i.value:
                return None
            reductions.append(_SIMPLE_FRACTION[level] * flexible_load_kw)
        elif event.signal_name == "LOAD_DISPATCH" and event.signal_type == "delta":
            reductions.append(max(0.0, -i.value))
        else:
            return None
    start = min(i.start_ms for i in event.intervals)
    end = max(i.start_ms + i.duration_ms for i in event.intervals)
    return FleetConstraint(event.event_id, start, end, max(reductions))


def opt_for(constraint: FleetConstraint | None, available_flexible_load_kw: float) -> str:
    """optIn only for a constraint the fleet's available flexible load (gated) can meet."""
    if constraint is None or not math.isfinite(available_flexible_load_kw):
        return OPT_OUT
    return OPT_IN if constraint.reduce_load_kw <= available_flexible_load_kw else OPT_OUT


class GridfortVen:
    """An ``openleadr`` VEN wired to the fleet through three callables.

    ``flexible_load_kw()``: available flexible load [kW], from gated state only;
    ``on_constraint(c)``: hands an accepted constraint to dispatch;
    ``fleet_power_w()``: the fleet's real power [W] for the telemetry report.
    """

    def __init__(
        self,
        ven_name: str,
        vtn_url: str,
        *,
        flexible_load_kw: Callable[[], float],
        on_constraint: Callable[[FleetConstraint], None],
        fleet_power_w: Callable[[], float],
        report_sampling: timedelta = timedelta(seconds=10),
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        from openleadr import OpenADRClient, enums

        self._flexible_load_kw = flexible_load_kw
        self._on_constraint = on_constraint
        self._fleet_power_w = fleet_power_w
        self.decisions: list[tuple[str, str]] = []
        self.client = OpenADRClient(
            ven_name=ven_name, vtn_url=vtn_url, show_fingerprint=False, **(client_options or {})
        )
        self.client.add_handler("on_event", self._on_event)
        self.client.add_report(
            callback=self._report_value,
            resource_id="fleet",
            measurement=enums.MEASUREMENTS.POWER_REAL,
            sampling_rate=report_sampling,
        )

    async def _on_event(self, event: Mapping[str, Any]) -> str:
        try:
            parsed = event_from_openleadr(event)
        except ValueError as e:
            log.warning("OpenADR event refused: %s", e)
            return OPT_OUT
        constraint = constraint_for(parsed, self._flexible_load_kw())
        opt = opt_for(constraint, self._flexible_load_kw())
        if opt == OPT_IN and constraint is not None:
            self._on_constraint(constraint)
        self.decisions.append((parsed.event_id, opt))
        return opt

    def _report_value(self) -> float:
        return float(self._fleet_power_w())

    async def start(self) -> None:
        await self.client.run()

    async def stop(self) -> None:
        await self.client.stop()


def received_values(data: Sequence[tuple[datetime, float]]) -> list[float]:
    """Values of an openleadr report callback's ``(datetime, value)`` pairs."""
    return [float(v) for _, v in data]
