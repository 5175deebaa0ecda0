"""Part (a) of ``gridfort bench fanout``: local fast frequency response at one edge.

Real: the SunSpec site simulator (pymodbus TCP server on loopback) in its own OS
process, as the device; in this process the edge: a :class:`SunSpecBattery` adapter and a
:class:`SunSpecFrequencyMeter` (separate Modbus connections), the product's
:class:`FrequencyResponder`, armed through the product's :class:`CommandExecutor` with an
Ed25519-signed ``ArmFrequencyResponse`` (FFR: trigger, power, hold; droop gain 0 so only
FFR writes). The simulator plays a script of frequency dips below the trigger.

Latency per event, measured at the device (both instants in the simulator process, on
``time.monotonic_ns``): from the frequency crossing the trigger (the new ``Hz`` value is
in the registers) to the battery's model 124 controls holding the FFR setpoint. It
includes the wait for the next poll (at most one poll interval), the Modbus read, the
decision and the Modbus writes. The edge's own view (reading that saw the crossing ->
write returned) is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.fanout_edges import percentile
from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState, TrustedController
from edge_node.devices.sunspec import SunSpecBattery
from edge_node.frequency_meter import SunSpecFrequencyMeter
from edge_node.frequency_response import FrequencyResponder
from edge_node.safety_limits import SiteLimits
from edge_node.simulators.sunspec_server import (
    BATTERY_UNIT_ID,
    FrequencyStep,
    SunSpecSiteSimulator,
)
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.envelope import EnvelopeSigner, generate_signing_key

NOMINAL_HZ = 50.0
TARGET_P99_MS = 100.0
SETTLE_S = 0.5


@dataclass(frozen=True)
class FfrParams:
    events: int = 100
    poll_ms: float = 20.0
    trigger_hz: float = 49.7
    dip_hz: float = 49.6
    ffr_p_kw: float = 3.0
    hold_ms: int = 60
    dip_s: float = 0.12
    gap_s: float = 0.15
    jitter_s: float = 0.1  # random extra gap: the crossing falls anywhere in the poll cycle
    seed: int = 1

    def __post_init__(self) -> None:
        if self.events < 1 or not 1 <= self.poll_ms <= 1000:
            raise ValueError("ffr events must be >= 1 and poll_ms in [1, 1000]")
        if self.dip_s * 1000 <= self.hold_ms + 2 * self.poll_ms:
            raise ValueError("dip_s must outlast the FFR hold plus two polls")


def script(params: FfrParams) -> list[tuple[float, float]]:
    """(after_s, hz) steps: a dip below the trigger per event, then back to nominal."""
    rng = random.Random(params.seed)
    t, steps = SETTLE_S, []
    for _ in range(params.events):
        t += params.gap_s + rng.uniform(0.0, params.jitter_s)
        steps.append((t, params.dip_hz))
        t += params.dip_s
        steps.append((t, NOMINAL_HZ))
    return steps


# -- the device, in its own process -------------------------------------------------------


def simulator_main(conn: Connection) -> None:
    try:
        asyncio.run(_simulate(conn))
    except Exception:
        conn.send(("error", traceback.format_exc()))


async def _simulate(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=20.0,
        battery_soc_pct=50.0,
        clock=SystemClock(),
    )
    conn.send(("port", await sim.start()))
    try:
        steps: list[tuple[float, float]] = await loop.run_in_executor(None, conn.recv)
        await sim.script_frequency([FrequencyStep(a, hz) for a, hz in steps])
        await asyncio.sleep(SETTLE_S)
        frequency = [(c.mono_ns, c.hz) for c in sim.frequency_log]
        control = [(c.mono_ns, c.p_kw) for c in sim.control_log if c.unit_id == BATTERY_UNIT_ID]
        conn.send(("logs", (frequency, control)))
        # the device stays up until the edge has stopped polling it (a device that goes
        # away under a polling client is an error in pymodbus's log, not a clean end)
        with contextlib.suppress(EOFError, OSError):
            await loop.run_in_executor(None, conn.recv)
    finally:
        await sim.stop()


# -- the edge, in this process ------------------------------------------------------------


def _arming(params: FfrParams, now_ms: int) -> cpb.Command:
    asset = cpb.FrequencyResponseParams(
        asset_id="ffr-bat",
        nominal_hz=NOMINAL_HZ,
        fcr_deadband_hz=0.01,
        fcr_kw_per_hz=0.0,
        fcr_max_kw=0.0,
        ffr_trigger_hz=params.trigger_hz,
        ffr_p_kw=params.ffr_p_kw,
        ffr_duration_ms=params.hold_ms,
    )
    arming = cpb.ArmFrequencyResponse(
        active_from_ms=now_ms - 1_000, active_until_ms=now_ms + 3_600_000, assets=[asset]
    )
    return cpb.Command(
        command_id="ffr-arming",
        site_id="ffr-site",
        seq=1,
        issued_ms=now_ms,
        expires_ms=now_ms + 30_000,
        arm_frequency_response=arming,
    )


def _latencies(
    params: FfrParams, frequency: list[tuple[int, float]], control: list[tuple[int, float]]
) -> tuple[list[float], int]:
    """Per dip: crossing -> the battery holds the FFR setpoint [ms]; and how many were missed."""
    crossings = [t for t, hz in frequency if hz <= params.trigger_hz]
    reached = [t for t, p in control if abs(p - params.ffr_p_kw) < 0.02]
    out, missed = [], 0
    for i, t in enumerate(crossings):
        end = crossings[i + 1] if i + 1 < len(crossings) else None
        hit = next((r for r in reached if r >= t and (end is None or r < end)), None)
        if hit is None:
            missed += 1
        else:
            out.append((hit - t) / 1e6)
    return out, missed


async def run_ffr(params: FfrParams, workdir: Path) -> dict[str, Any]:
    """Run part (a); returns its JSON section."""
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=simulator_main, args=(child,), name="bench-ffr-device", daemon=True)
    proc.start()
    clock = SystemClock()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        kind, port = await loop.run_in_executor(None, parent.recv)
        if kind != "port":
            raise RuntimeError(f"simulator failed:\n{port}")
        battery = SunSpecBattery("ffr-bat", "127.0.0.1", port, BATTERY_UNIT_ID)
        limits = await battery.connect()
        soc = [
            r.value
            for r in await battery.read(clock.now_ms())
            if r.quantity == tpb.QUANTITY_STATE_OF_CHARGE
        ]
        devices = {"ffr-bat": DeviceState(battery, limits, soc_pct=soc[0])}
        audit = AuditLog(workdir / "audit.jsonl", clock)
        cp_key = generate_signing_key()
        cp = EnvelopeSigner(cp_key, "spiffe://bench.gridfort.local/control-plane/bench")
        edge_signer = EnvelopeSigner(
            generate_signing_key(), "spiffe://bench.gridfort.local/edge/ffr-site"
        )
        responder = FrequencyResponder(
            devices=devices,
            meters={
                "ffr-bat": SunSpecFrequencyMeter("ffr-bat#hz", "127.0.0.1", port, BATTERY_UNIT_ID)
            },
            site_limits=SiteLimits(),
            clock=clock,
            audit=audit,
            controller_id=cp.signer,
            interval_s=params.poll_ms / 1000,
        )
        seq_store = CommandSeqStore(workdir / "commands.db")
        executor = CommandExecutor(
            site_id="ffr-site",
            controller=TrustedController(cp.signer, cp.key_id, cp_key.public_key()),
            devices=devices,
            signer=edge_signer,
            seq_store=seq_store,
            audit=audit,
            clock=clock,
            frequency=responder,
        )
        now = clock.now_ms()
        answer = await executor.handle(
            cp.sign(epb.PAYLOAD_TYPE_COMMAND, _arming(params, now).SerializeToString(), now)
        )
        armed = cpb.CommandResult.FromString(answer.payload)
        if armed.status != cpb.COMMAND_STATUS_APPLIED:
            raise RuntimeError(f"arming refused: {armed.reason} {armed.message}")
        cpu0, t0 = time.process_time(), time.perf_counter()
        parent.send(script(params))
        kind, logs = await loop.run_in_executor(None, parent.recv)
        if kind != "logs":
            raise RuntimeError(f"simulator failed:\n{logs}")
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - t0
        await responder.stop()
        await battery.close()
        seq_store.close()
        audit.close()
        parent.send("stop")  # the device may go now
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
    latencies, missed = _latencies(params, *logs)
    edge_side = [a.latency_ms for a in responder.activations]
    p99 = percentile(latencies, 99)
    return {
        "params": asdict(params),
        "events": params.events,
        "measured": len(latencies),
        "missed": missed,
        "latency_ms": _summary(latencies),
        "edge_side_latency_ms": _summary(edge_side),
        "edge_cpu_cores": round(cpu_s / wall_s, 3) if wall_s else None,
        "target_p99_ms": TARGET_P99_MS,
        "met": bool(latencies) and missed == 0 and p99 < TARGET_P99_MS,
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }
