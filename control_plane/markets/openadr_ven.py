"""Gridfort as an OpenADR 2.0b VEN: demand-response events in, fleet constraints out, reports back.

Pure core: :func:`event_from_openleadr` turns an event (openleadr's dict form) into a
:class:`DemandResponseEvent`; :func:`refusal_for` refuses hostile or unservable events with a
stable :class:`OpenAdrReason`; :func:`constraint_for` maps an event to a
:class:`FleetConstraint` (a load reduction [kW] over a time window); :func:`opt_for` opts in
only when the reduction fits the fleet's available reduction, which the caller computes from
gated state only (:func:`control_plane.markets.openadr_planning.available_reduction`).

Adapter: :class:`GridfortVen` wraps an ``openleadr`` client: it registers with the VTN,
answers each event (new or modified) with the ``optIn``/``optOut`` its ``decide`` callable
returns (any exception: ``optOut``), and reports the fleet's real power [W] when the VTN
asks. :class:`control_plane.markets.openadr_service.OpenAdrService` supplies both.

Signal mapping (the two signals of the OpenADR 2.0b "simple" and load-dispatch programs):

| signal_name    | signal_type | reduction [kW]                                   |
|----------------|-------------|--------------------------------------------------|
| SIMPLE         | level       | level 0/1/2/3 -> 0, 1/3, 2/3, all of the flexible load |
| LOAD_DISPATCH  | delta       | -payload [kW] (a negative delta asks for less load) |

Anything else is opted out, as is an event with more than one signal. The largest
reduction of any interval is the window's reduction; the window spans all intervals.
Transport security (TLS client certificates, XML signatures with the VTN's fingerprint) is
configured by the caller (``[control_plane.openadr]``); the tests run plain HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from control_plane.optimizer.assets import EVENT_ID_PATTERN

log = logging.getLogger(__name__)

OPT_IN = "optIn"
OPT_OUT = "optOut"
_SIMPLE_FRACTION = {0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0}
SERVED_SIGNALS = frozenset({("SIMPLE", "level"), ("LOAD_DISPATCH", "delta")})
CANCELLED = "cancelled"


class OpenAdrReason(StrEnum):
    """Why an event was opted out: stable codes for the audit log and the operator."""

    MALFORMED_EVENT = "MALFORMED_EVENT"  # not an event we can read (missing fields, NaN, ...)
    UNSUPPORTED_SIGNAL = "UNSUPPORTED_SIGNAL"  # not SIMPLE/level or LOAD_DISPATCH/delta
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"  # a level not 0..3, a load increase, too large
    WINDOW_IN_PAST = "WINDOW_IN_PAST"
    WINDOW_TOO_FAR = "WINDOW_TOO_FAR"  # starts further ahead than max_lead_ms
    WINDOW_TOO_LONG = "WINDOW_TOO_LONG"  # longer than max_duration_ms
    ABOVE_VERIFIED_FLEXIBILITY = "ABOVE_VERIFIED_FLEXIBILITY"  # gated flexibility too small
    INTERNAL = "INTERNAL"  # audit or storage failed: never commit what is not recorded


@dataclass(frozen=True, slots=True)
class EventRefusal:
    """An event we opt out of: a stable reason and a message for the operator."""

    reason: OpenAdrReason
    message: str


@dataclass(frozen=True, slots=True)
class EventLimits:
    """What an acceptable event looks like: windows no longer than ``max_duration_ms`` [ms],
    starting at most ``max_lead_ms`` [ms] ahead, asking at most ``max_reduction_kw`` [kW],
    with at most ``max_intervals`` intervals."""

    max_duration_ms: int = 12 * 3_600_000
    max_lead_ms: int = 48 * 3_600_000
    max_reduction_kw: float = 100_000.0
    max_intervals: int = 96


@dataclass(frozen=True, slots=True)
class DrInterval:
    start_ms: int
    duration_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class DemandResponseEvent:
    """One event's first signal; ``n_signals`` counts all of them (only 1 is served)."""

    event_id: str
    signal_name: str
    signal_type: str
    intervals: tuple[DrInterval, ...]
    event_status: str = "far"
    modification_number: int = 0
    n_signals: int = 1

    def __post_init__(self) -> None:
        if not self.event_id or not self.intervals:
            raise ValueError("an event has an ID and at least one interval")
        if not EVENT_ID_PATTERN.match(self.event_id):
            raise ValueError(
                f"event_id {self.event_id[:64]!r} must match {EVENT_ID_PATTERN.pattern}"
            )
        for k, i in enumerate(self.intervals):
            if i.duration_ms <= 0 or not math.isfinite(i.value):
                raise ValueError(
                    f"event {self.event_id}: interval {k} has duration {i.duration_ms} ms and "
                    f"value {i.value!r} (need a positive duration and a finite value)"
                )

    @property
    def start_ms(self) -> int:
        return min(i.start_ms for i in self.intervals)

    @property
    def end_ms(self) -> int:
        return max(i.start_ms + i.duration_ms for i in self.intervals)


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
        descriptor = event["event_descriptor"]
        event_id = str(descriptor["event_id"])
        signals = event["event_signals"]
        signal = signals[0]
        raw_intervals = signal["intervals"]
        if len(raw_intervals) > 10_000:
            raise ValueError(f"{len(raw_intervals)} intervals")
        intervals = tuple(
            DrInterval(
                _ms(i["dtstart"]),
                int(i["duration"] / timedelta(milliseconds=1)),
                float(i["signal_payload"]),
            )
            for i in raw_intervals
        )
        return DemandResponseEvent(
            event_id,
            str(signal["signal_name"])[:64],
            str(signal["signal_type"])[:64],
            intervals,
            event_status=str(descriptor.get("event_status", "far"))[:32],
            modification_number=int(descriptor.get("modification_number", 0)),
            n_signals=len(signals),
        )
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise ValueError(f"malformed OpenADR event: {str(e)[:200]}") from None


def refusal_for(
    event: DemandResponseEvent, now_ms: int, limits: EventLimits
) -> EventRefusal | None:
    """Why ``event`` must be opted out regardless of the fleet, or None. Pure."""
    r = OpenAdrReason
    if event.n_signals != 1:
        return EventRefusal(r.UNSUPPORTED_SIGNAL, f"{event.n_signals} signals; exactly 1 served")
    if (event.signal_name, event.signal_type) not in SERVED_SIGNALS:
        return EventRefusal(
            r.UNSUPPORTED_SIGNAL,
            f"signal {event.signal_name}/{event.signal_type} is not served "
            "(SIMPLE/level, LOAD_DISPATCH/delta)",
        )
    if len(event.intervals) > limits.max_intervals:
        return EventRefusal(
            r.MALFORMED_EVENT, f"{len(event.intervals)} intervals > {limits.max_intervals}"
        )
    for k, i in enumerate(event.intervals):
        if event.signal_name == "SIMPLE" and i.value not in _SIMPLE_FRACTION:
            return EventRefusal(r.VALUE_OUT_OF_RANGE, f"interval {k}: level {i.value!r} not 0..3")
        if event.signal_name == "LOAD_DISPATCH" and i.value > 0:
            return EventRefusal(
                r.VALUE_OUT_OF_RANGE,
                f"interval {k}: delta {i.value!r} kW asks for more load; only reductions served",
            )
        if event.signal_name == "LOAD_DISPATCH" and -i.value > limits.max_reduction_kw:
            return EventRefusal(
                r.VALUE_OUT_OF_RANGE,
                f"interval {k}: reduction {-i.value:g} kW > {limits.max_reduction_kw:g} kW",
            )
    start, end = event.start_ms, event.end_ms
    if end <= now_ms:
        return EventRefusal(r.WINDOW_IN_PAST, f"window ended {(now_ms - end) / 1000:.0f} s ago")
    if start - now_ms > limits.max_lead_ms:
        return EventRefusal(
            r.WINDOW_TOO_FAR,
            f"window starts in {(start - now_ms) / 3.6e6:.1f} h > {limits.max_lead_ms / 3.6e6:g} h",
        )
    if end - start > limits.max_duration_ms:
        return EventRefusal(
            r.WINDOW_TOO_LONG,
            f"window lasts {(end - start) / 3.6e6:.1f} h > {limits.max_duration_ms / 3.6e6:g} h",
        )
    return None


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
    return FleetConstraint(event.event_id, event.start_ms, event.end_ms, max(reductions))


def opt_for(constraint: FleetConstraint | None, available_flexible_load_kw: float) -> str:
    """optIn only for a constraint the fleet's available flexible load (gated) can meet."""
    if constraint is None or not math.isfinite(available_flexible_load_kw):
        return OPT_OUT
    return OPT_IN if constraint.reduce_load_kw <= available_flexible_load_kw else OPT_OUT


class GridfortVen:
    """An ``openleadr`` VEN wired to the fleet through two callables.

    ``decide(event)``: the opt (``optIn``/``optOut``) for an openleadr event dict, new or
    modified; it runs in a worker thread (it audits and persists), and any exception or
    other answer is ``optOut``. ``fleet_power_w()``: the fleet's real power [W] for the
    telemetry report. ``poll_interval`` (None: the VTN's requested frequency) overrides how
    often the VEN polls; ``client_options`` go to ``OpenADRClient`` (``ven_id``, ``cert``,
    ``key``, ``ca_file``, ``vtn_fingerprint``).
    """

    def __init__(
        self,
        ven_name: str,
        vtn_url: str,
        *,
        decide: Callable[[Mapping[str, Any]], str],
        fleet_power_w: Callable[[], float],
        report_sampling: timedelta = timedelta(seconds=10),
        poll_interval: timedelta | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        from openleadr import OpenADRClient, enums

        self._decide = decide
        self._fleet_power_w = fleet_power_w
        self.decisions: list[tuple[str, str]] = []
        self.client = OpenADRClient(
            ven_name=ven_name, vtn_url=vtn_url, show_fingerprint=False, **(client_options or {})
        )
        self.client.add_handler("on_event", self._on_event)
        self.client.add_handler("on_update_event", self._on_event)
        self.client.add_report(
            callback=self._report_value,
            resource_id="fleet",
            measurement=enums.MEASUREMENTS.POWER_REAL,
            sampling_rate=report_sampling,
        )
        if poll_interval is not None:
            register = self.client.create_party_registration

            async def register_then_poll_at_our_rate(*args: Any, **kwargs: Any) -> Any:
                result = await register(*args, **kwargs)
                self.client.poll_frequency = poll_interval
                return result

            self.client.create_party_registration = register_then_poll_at_our_rate

    async def _on_event(self, event: Mapping[str, Any]) -> str:
        try:
            opt = await asyncio.to_thread(self._decide, event)
        except Exception:  # the VTN gets an answer, never a crashed VEN
            log.exception("OpenADR event handler failed; opting out")
            opt = OPT_OUT
        if opt not in (OPT_IN, OPT_OUT):
            opt = OPT_OUT
        try:
            event_id = str(event["event_descriptor"]["event_id"])[:128]
        except (KeyError, TypeError):
            event_id = "?"
        self.decisions.append((event_id, opt))
        return opt

    def _report_value(self) -> float:
        return float(self._fleet_power_w())

    @property
    def registered(self) -> bool:
        """True once the VTN assigned a registration."""
        return self.client.registration_id is not None

    async def start(self) -> None:
        """Register, sync events, start polling and reporting (returns once set up)."""
        await self.client.run()

    async def stop(self) -> None:
        await self.client.stop()


def received_values(data: Sequence[tuple[datetime, float]]) -> list[float]:
    """Values of an openleadr report callback's ``(datetime, value)`` pairs."""
    return [float(v) for _, v in data]
