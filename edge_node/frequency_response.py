"""Local frequency response at the edge: signed arming, a watcher per armed asset, and the
measured latency of every FFR activation.

The control plane pre-arms the edge with signed droop/trigger parameters
(``ArmFrequencyResponse``, verified by :class:`~edge_node.commands.CommandExecutor`);
from then on the edge reacts on its own. One watcher per armed asset polls the
frequency at the asset (its inverter's SunSpec 103 ``Hz``) every ``interval_s``,
computes the response with :mod:`edge_node.frequency_control`, clamps ``base + response``
to what local safety limits allow at that moment, and writes it to the device when it
moved by at least ``write_threshold_kw`` (always when FFR fires). The base is the last
setpoint the command executor applied (0 kW until one is).

Latency per FFR activation: from the reading that saw the crossing to the device write
returning (monotonic clock, :class:`FfrActivation`). The part before that reading (at
most one poll interval) is measured at the device by the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_node.commands import DeviceState
from edge_node.devices.base import DeviceError
from edge_node.frequency_control import ArmedResponse, ResponseState, clamp, react
from edge_node.frequency_meter import FrequencySource
from edge_node.safety_limits import (
    FrequencyResponseParams,
    SiteLimits,
    active_power_bounds,
    check_frequency_arming,
)
from gridfort.v1 import command_pb2 as cpb
from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import Reason, Refusal
from security.tasks import reap

log = logging.getLogger(__name__)

MAX_ARMED_WINDOW_MS = 24 * 3_600_000
MAX_ARMED_ASSETS = 256
EVENTS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class FfrActivation:
    """One FFR activation: the reading that fired it [Hz], the setpoint written [kW], and
    monotonic times [s] of the reading's arrival and of the device write's return."""

    asset_id: str
    hz: float
    p_kw: float
    observed_s: float
    written_s: float

    @property
    def latency_ms(self) -> float:
        return (self.written_s - self.observed_s) * 1000


def params_from_proto(p: cpb.FrequencyResponseParams) -> FrequencyResponseParams:
    return FrequencyResponseParams(
        nominal_hz=p.nominal_hz,
        fcr_deadband_hz=p.fcr_deadband_hz,
        fcr_kw_per_hz=p.fcr_kw_per_hz,
        fcr_max_kw=p.fcr_max_kw,
        ffr_trigger_hz=p.ffr_trigger_hz,
        ffr_p_kw=p.ffr_p_kw,
        ffr_duration_ms=p.ffr_duration_ms,
    )


class FrequencyResponder:
    """Arms, runs and disarms the local frequency response of one edge."""

    def __init__(
        self,
        *,
        devices: Mapping[str, DeviceState],
        meters: Mapping[str, FrequencySource],
        site_limits: SiteLimits,
        clock: Clock,
        audit: AuditLog,
        controller_id: str,
        interval_s: float = 0.02,
        write_threshold_kw: float = 0.05,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0.001 <= interval_s <= 1.0:
            raise ValueError("interval_s must be in [0.001, 1] s")
        self._devices = devices
        self._meters = meters
        self._limits = site_limits
        self._clock = clock
        self._audit = audit
        self._controller = controller_id
        self._interval_s = interval_s
        self._threshold_kw = write_threshold_kw
        self._mono = monotonic
        self._armed: dict[str, ArmedResponse] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._base_kw: dict[str, float] = {}
        self._written: dict[str, float] = {}  # what each device holds, as far as we know [kW]
        self.activations: deque[FfrActivation] = deque(maxlen=EVENTS_KEPT)

    @property
    def armed(self) -> Mapping[str, ArmedResponse]:
        return dict(self._armed)

    def check(self, arming: cpb.ArmFrequencyResponse, now_ms: int) -> Refusal | None:
        """Why ``arming`` cannot be accepted here, or None (nothing changes)."""
        if len(arming.assets) > MAX_ARMED_ASSETS:
            return Refusal(Reason.COMMAND_MALFORMED, f"more than {MAX_ARMED_ASSETS} armed assets")
        window_ms = arming.active_until_ms - arming.active_from_ms
        if arming.assets and not 0 < window_ms <= MAX_ARMED_WINDOW_MS:
            return Refusal(Reason.COMMAND_MALFORMED, "armed window must be 0 < length <= 24 h")
        if arming.assets and arming.active_until_ms <= now_ms:
            return Refusal(Reason.COMMAND_EXPIRED, "the armed window has already ended")
        seen: set[str] = set()
        for entry in arming.assets:
            aid = entry.asset_id
            state = self._devices.get(aid)
            if state is None or aid in seen:
                return Refusal(Reason.COMMAND_UNKNOWN_ASSET, f"no asset {aid[:64]!r} here (once)")
            seen.add(aid)
            if aid not in self._meters:
                return Refusal(Reason.COMMAND_UNSAFE, f"asset {aid} has no frequency meter")
            problem = check_frequency_arming(
                state.adapter.kind, params_from_proto(entry), state.limits, self._limits
            )
            if problem is not None:
                return Refusal(Reason.COMMAND_UNSAFE, f"asset {aid}: {problem}")
        return None

    async def arm(self, arming: cpb.ArmFrequencyResponse, now_ms: int) -> Refusal | None:
        """Replace the armed set with ``arming`` (checked first; empty: disarm everything)."""
        refusal = self.check(arming, now_ms)
        if refusal is not None:
            return refusal
        await self.disarm()
        for entry in arming.assets:
            armed = ArmedResponse(
                entry.asset_id,
                params_from_proto(entry),
                arming.active_from_ms,
                arming.active_until_ms,
            )
            self._armed[armed.asset_id] = armed
            self._tasks[armed.asset_id] = asyncio.ensure_future(self._watch(armed))
        return None

    async def disarm(self) -> None:
        """Stop every watcher and put each device back on its base setpoint."""
        tasks, self._tasks = self._tasks, {}
        self._armed = {}
        for task in tasks.values():
            await reap(task)
        for asset_id in tasks:
            await self._restore(asset_id, self._clock.now_ms())

    def set_base(self, asset_id: str, p_kw: float) -> None:
        """The command executor applied ``p_kw`` [kW]: the device holds it, and responses
        are added to it from now on."""
        self._base_kw[asset_id] = p_kw
        self._written[asset_id] = p_kw

    def base_kw(self, asset_id: str) -> float:
        return self._base_kw.get(asset_id, 0.0)

    async def stop(self) -> None:
        await self.disarm()
        for meter in self._meters.values():
            with contextlib.suppress(DeviceError, TimeoutError):
                await asyncio.wait_for(meter.close(), 2.0)

    async def _watch(self, armed: ArmedResponse) -> None:
        meter = self._meters[armed.asset_id]
        state = self._devices[armed.asset_id]
        try:
            await self._run(armed, meter, state)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a watcher die silently: it is safety-relevant
            log.exception("frequency watcher of %s failed", armed.asset_id)
        finally:
            self._armed.pop(armed.asset_id, None)

    async def _run(self, armed: ArmedResponse, meter: FrequencySource, state: DeviceState) -> None:
        aid, params = armed.asset_id, armed.params
        connected = False
        response = ResponseState()
        while True:
            now_ms = self._clock.now_ms()
            if now_ms >= armed.active_until_ms:
                break
            if now_ms < armed.active_from_ms:
                await asyncio.sleep(min(1.0, (armed.active_from_ms - now_ms) / 1000))
                continue
            t_start = self._mono()
            try:
                if not connected:
                    await meter.connect()
                    connected = True
                hz = await meter.read_frequency_hz()
            except DeviceError as e:
                log.warning("frequency meter of %s: %s", aid, e)
                connected = False
                await asyncio.sleep(max(self._interval_s, 0.5))
                continue
            observed = self._mono()
            reaction = react(params, response, hz, observed)
            response = reaction.state
            base = self.base_kw(aid)
            written = self._written.get(aid, base)
            target = self._safe(state, base + reaction.response_kw, now_ms)
            due = target is not None and abs(target - written) >= self._threshold_kw
            if reaction.ffr_fired and (target is None or abs(target - written) < 1e-9):
                self._audit_clamped(aid, hz, target)  # local limits leave nothing to do
            elif (
                target is not None
                and (reaction.ffr_fired or due)
                and await self._write(state, target, now_ms)
            ):
                self._written[aid] = target
                if reaction.ffr_fired:
                    self._record(aid, hz, target, observed)
            await asyncio.sleep(max(0.0, self._interval_s - (self._mono() - t_start)))
        await self._restore(aid, self._clock.now_ms())  # the armed window ended

    async def _restore(self, asset_id: str, now_ms: int) -> None:
        """Back to the base setpoint if a response moved the device away from it."""
        base = self.base_kw(asset_id)
        if abs(self._written.get(asset_id, base) - base) <= 1e-9:
            return
        state = self._devices[asset_id]
        target = self._safe(state, base, now_ms)
        if target is not None and await self._write(state, target, now_ms):
            self._written[asset_id] = target

    def _safe(self, state: DeviceState, p_kw: float, now_ms: int) -> float | None:
        bounds = active_power_bounds(
            state.adapter.kind,
            state.limits,
            soc_pct=state.soc_pct,
            ev=None,
            site=self._limits,
            now_ms=now_ms,
        )
        return clamp(p_kw, bounds)

    async def _write(self, state: DeviceState, p_kw: float | None, now_ms: int) -> bool:
        if p_kw is None:
            return False
        try:
            async with state.write_lock:
                await state.adapter.apply_active_power(p_kw, now_ms)
        except DeviceError as e:
            log.warning("frequency response write to %s failed: %s", state.adapter.asset_id, e)
            return False
        return True

    def _record(self, asset_id: str, hz: float, p_kw: float, observed_s: float) -> None:
        event = FfrActivation(asset_id, hz, p_kw, observed_s, self._mono())
        self.activations.append(event)
        self._audit.append(
            "frequency_response",
            decision="info",
            identity=self._controller,
            details={
                "asset": asset_id,
                "hz": round(hz, 4),
                "p_kw": round(p_kw, 3),
                "latency_ms": round(event.latency_ms, 3),
            },
        )

    def _audit_clamped(self, asset_id: str, hz: float, p_kw: float | None) -> None:
        self._audit.append(
            "frequency_response",
            decision="deny",
            identity=self._controller,
            reason=Reason.COMMAND_UNSAFE.value,
            details={
                "asset": asset_id,
                "hz": round(hz, 4),
                "message": "FFR fired but local safety limits allow no change",
                "held_kw": None if p_kw is None else round(p_kw, 3),
            },
        )
