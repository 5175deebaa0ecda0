"""Load generator of the ingest benchmark; runs in its own OS process (multiprocessing, spawn).

Each enrolled edge identity gets its own mutual-TLS channel and one
``EdgeLink.Connect`` stream. Payload bodies (the measurements) are built before
the phase starts; per batch the generator only stamps ``site_id``, ``seq`` and
``sealed_ms`` into a small header, appends a pre-serialized body (protobuf
concatenation is a merge, so header + body parses as one ``TelemetryBatch``),
and signs with the edge's enrolled Ed25519 key right before the write, so
``signed_ms`` is always fresh for the replay window.

Two sending modes:
* saturation: each site keeps ``window`` batches in flight (closed loop);
* rate: each site sends on a fixed schedule (open loop, ``rate_batches_per_s``
  over all sites of this process); the lag behind schedule is reported.

Sample-to-commit latency of a batch = from sealing (``sealed_ms`` is stamped just
before signing) to the arrival of its COMMITTED receipt here, measured with
``time.perf_counter`` in this process.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import random
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import verify_signature

METHOD = "/gridfort.v1.EdgeLink/Connect"
BODY_VARIANTS = 8  # distinct pre-built measurement bodies per site, used in turn

#: (asset_id, quantity, unit, low, high): one channel of an asset and its physical bounds.
Channel = tuple[str, int, int, float, float]
#: A batch awaiting its receipt: (perf_counter at sealing, SHA-256 of the payload, sealed in
#: the measured window).
_InFlight = tuple[float, bytes, bool]
#: Sample times in the pre-built bodies must stay within the validation's 15 min age limit.
MAX_PHASE_S = 600.0


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    edge_dir: Path
    first_seq: int
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class LoadSpec:
    """One phase for one generator process. Times in s; the window is in batches per site.

    ``transport`` "grpc" dials ``endpoint``; "nats" publishes to ``nats_servers`` (see
    ``ingest_nats_load``). ``raw`` (NATS only): no pipeline, no receipts; a batch is
    done when JetStream acknowledges the publish (the raw NATS rate).
    """

    endpoint: str
    sites: tuple[SiteSpec, ...]
    batch_size: int
    window: int
    warmup_s: float
    seconds: float
    rate_batches_per_s: float | None  # None: saturation (closed loop)
    verify_every: int  # verify the signature of every n-th receipt (0: never)
    drain_timeout_s: float = 30.0
    transport: str = "grpc"
    nats_servers: tuple[str, ...] = ()
    raw: bool = False


@dataclass
class SiteReport:
    site_id: str
    first_seq: int
    sent: int = 0
    committed: int = 0
    duplicate: int = 0
    refused: int = 0
    measurements_committed: int = 0
    quarantined: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.sent - 1


@dataclass
class LoadReport:
    sites: list[SiteReport]
    window_batches: int = 0  # COMMITTED receipts that arrived inside the measured window
    window_measurements: int = 0
    window_sent_batches: int = 0  # batches sealed inside the measured window
    window_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # batches sealed in the window
    receipts_verified: int = 0
    max_schedule_lag_ms: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time [s] during the measured window
    error: str = ""


def generator_main(conn: Connection) -> None:
    """Entry point of a generator process: run one phase per ``LoadSpec`` received."""
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the orchestrator is gone
            return
        if spec is None:
            return
        try:
            report = asyncio.run(_run_phase(spec, conn))
        except Exception:  # the orchestrator fails loudly on an error report
            report = LoadReport(sites=[], error=traceback.format_exc())
        conn.send(report)


#: Quantities the gate's temporal judge checks against the power sampled with them.
_LEVELS = frozenset(
    {tpb.QUANTITY_STATE_OF_CHARGE, tpb.QUANTITY_ENERGY_EXPORTED, tpb.QUANTITY_ENERGY_IMPORTED}
)


def _bodies(site: SiteSpec, batch_size: int, base_ms: int, rng: random.Random) -> list[bytes]:
    """Pre-serialized measurement bodies: every channel in turn, values inside its bounds.

    The bodies are re-sent with their sample times, so a device's level (SOC, energy
    counters) and the active power sampled with it are one fixed sample in every body:
    the gate accepts the exact repeat of an accepted sample, as it must a level sampled
    with its power; everything else varies from body to body."""

    def value(low: float, high: float, unit: int) -> float:
        if unit == tpb.UNIT_BOOL:
            return float(rng.random() < 0.5)
        return low + (high - low) * (0.05 + 0.9 * rng.random())

    with_levels = {c[0] for c in site.channels if c[1] in _LEVELS}
    fixed_ts = {a: base_ms - rng.randrange(0, 1000) for a in sorted(with_levels)}
    fixed = {
        (a, q): (fixed_ts[a], value(low, high, unit))
        for a, q, unit, low, high in site.channels
        if a in with_levels and (q in _LEVELS or q == tpb.QUANTITY_ACTIVE_POWER)
    }
    bodies = []
    for _ in range(BODY_VARIANTS):
        measurements = []
        used: set[tuple[str, int]] = set()
        for i in range(batch_size):
            asset_id, quantity, unit, low, high = site.channels[i % len(site.channels)]
            key = (asset_id, quantity)
            if key in fixed and key not in used:
                used.add(key)
                ts_ms, v = fixed[key]
            else:  # sampled during the last second
                ts_ms, v = base_ms - rng.randrange(0, 1000), value(low, high, unit)
            measurements.append(
                tpb.Measurement(
                    asset_id=asset_id,
                    quantity=quantity,  # type: ignore[arg-type]
                    unit=unit,  # type: ignore[arg-type]
                    value=v,
                    ts_ms=ts_ms,
                )
            )
        bodies.append(tpb.TelemetryBatch(measurements=measurements).SerializeToString())
    return bodies


class SiteLoadBase(abc.ABC):
    """One edge identity's bookkeeping, whatever the transport: the pre-built bodies, the
    batches in flight, the window, and what a receipt means for the report."""

    def __init__(self, site: SiteSpec, spec: LoadSpec, report: LoadReport) -> None:
        self.site = site
        self.spec = spec
        self.load = report
        self.report = SiteReport(site.site_id, site.first_seq)
        self.creds = EdgeCredentials.load(site.edge_dir)
        self.bodies = _bodies(site, spec.batch_size, int(time.time() * 1000), random.Random(7))
        self.in_flight: dict[int, _InFlight] = {}  # by seq
        self.window = asyncio.Semaphore(spec.window)
        self.sending_done = False
        self.drained = asyncio.Event()
        self.received = 0

    async def ready(self) -> None:  # noqa: B027 (optional hook: nothing to wait for by default)
        """Connected and able to send."""

    async def receive(self, t_begin: float, t_end: float) -> None:
        """Read receipts until cancelled (transports with callbacks just wait)."""
        await asyncio.Event().wait()

    async def send(self, t_begin: float, t_end: float, rate: float, offset_s: float) -> None:
        """Send until ``t_end`` (perf_counter time [s]): closed loop, or ``rate`` batches/s
        if > 0 with the first batch due ``offset_s`` [s] from now."""
        seq = self.site.first_seq
        interval_s = 1.0 / rate if rate else 0.0
        due = time.perf_counter() + offset_s
        n = 0
        while True:
            if rate:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await self.window.acquire()
            now = time.perf_counter()
            if now >= t_end:
                self.window.release()
                break
            if rate:
                lag_ms = (now - due) * 1000.0
                self.load.max_schedule_lag_ms = max(self.load.max_schedule_lag_ms, lag_ms)
                due += interval_s
            await self.transmit(self.seal(seq, n, t_begin, t_end), seq)
            seq += 1
            n += 1
        self.sending_done = True
        if not self.in_flight:
            self.drained.set()

    @abc.abstractmethod
    async def transmit(self, envelope: epb.SignedEnvelope, seq: int) -> None:
        """Put sealed batch ``seq`` on the wire (each transport its own way)."""

    async def close(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Release the connection."""

    def seal(self, seq: int, n: int, t_begin: float, t_end: float) -> epb.SignedEnvelope:
        """Stamp, sign and record batch ``seq`` (the ``n``-th of this phase) as in flight."""
        sealed_ms = int(time.time() * 1000)
        t_seal = time.perf_counter()
        header = tpb.TelemetryBatch(site_id=self.site.site_id, seq=seq, sealed_ms=sealed_ms)
        payload = header.SerializeToString() + self.bodies[n % BODY_VARIANTS]
        envelope = self.creds.signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, payload, sealed_ms)
        in_window = t_begin <= t_seal < t_end
        self.in_flight[seq] = (t_seal, hashlib.sha256(payload).digest(), in_window)
        self.load.window_sent_batches += in_window
        self.report.sent += 1
        return envelope

    def on_receipt_envelope(
        self, envelope: epb.SignedEnvelope, arrived: float, t_begin: float, t_end: float
    ) -> None:
        self.received += 1
        verify_every = self.spec.verify_every
        if verify_every and self.received % verify_every == 0:
            if not verify_signature(envelope, self.creds.controller.public_key):
                self.report.problems.append("a receipt signature does not verify")
            self.load.receipts_verified += 1
        self._account(lpb.BatchReceipt.FromString(envelope.payload), arrived, t_begin, t_end)
        if self.sending_done and not self.in_flight:
            self.drained.set()

    def _account(
        self, receipt: lpb.BatchReceipt, arrived: float, t_begin: float, t_end: float
    ) -> None:
        r = self.report
        entry = self.in_flight.pop(receipt.seq, None)
        if entry is None or receipt.site_id != self.site.site_id:
            r.problems.append(f"unexpected receipt {receipt.site_id}/{receipt.seq}")
            return
        self.window.release()
        t_seal, digest, in_window = entry
        if receipt.batch_sha256 != digest:
            r.problems.append(f"receipt of seq {receipt.seq} names another digest")
        if receipt.status == lpb.RECEIPT_STATUS_DUPLICATE:
            r.duplicate += 1
            r.problems.append(f"seq {receipt.seq} acknowledged as DUPLICATE")
            return
        if receipt.status != lpb.RECEIPT_STATUS_COMMITTED:
            r.refused += 1
            r.problems.append(f"seq {receipt.seq} refused: {receipt.reason} {receipt.message}")
            return
        r.committed += 1
        r.measurements_committed += receipt.committed
        r.quarantined += receipt.quarantined
        if receipt.committed != self.spec.batch_size:
            r.problems.append(
                f"seq {receipt.seq}: {receipt.committed} of {self.spec.batch_size} committed"
            )
        if t_begin <= arrived < t_end:
            self.load.window_batches += 1
            self.load.window_measurements += receipt.committed
        if in_window:
            self.load.latencies_ms.append((arrived - t_seal) * 1000.0)


class _SiteLoad(SiteLoadBase):
    """One edge identity over gRPC: its channel, its stream, its batches in flight."""

    def __init__(self, site: SiteSpec, spec: LoadSpec, report: LoadReport) -> None:
        super().__init__(site, spec, report)
        self.channel = grpc.aio.secure_channel(
            spec.endpoint,
            self.creds.channel_credentials(),
            options=[
                ("grpc.ssl_target_name_override", self.creds.target_name()),
                ("grpc.max_receive_message_length", 1 << 20),
            ],
        )
        self.call = self.channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=lpb.ControlMessage.FromString
        )()

    async def ready(self) -> None:
        await self.channel.channel_ready()

    async def transmit(self, envelope: epb.SignedEnvelope, seq: int) -> None:
        await self.call.write(lpb.EdgeMessage(telemetry=envelope).SerializeToString())

    async def receive(self, t_begin: float, t_end: float) -> None:
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            if message.WhichOneof("kind") != "receipt":
                continue
            self.on_receipt_envelope(message.receipt, time.perf_counter(), t_begin, t_end)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(grace=None)


async def _run_phase(spec: LoadSpec, conn: Connection) -> LoadReport:
    loop = asyncio.get_running_loop()
    report = LoadReport(sites=[])
    loads: list[SiteLoadBase]
    if spec.transport == "nats":
        from benchmarks.ingest_nats_load import NatsSiteLoad

        loads = [NatsSiteLoad(site, spec, report) for site in spec.sites]
    else:
        loads = [_SiteLoad(site, spec, report) for site in spec.sites]
    try:
        await asyncio.gather(*(s.ready() for s in loads))
        conn.send("ready")
        start_wall: float = await loop.run_in_executor(None, conn.recv)
        t_start = time.perf_counter() + max(0.0, start_wall - time.time())
        t_begin = t_start + spec.warmup_s
        t_end = t_begin + spec.seconds
        cpu = asyncio.ensure_future(cpu_seconds_between(t_begin, t_end))
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        rate = (spec.rate_batches_per_s or 0.0) / len(loads)  # per site
        receivers = [asyncio.ensure_future(s.receive(t_begin, t_end)) for s in loads]
        senders = [
            asyncio.ensure_future(
                s.send(t_begin, t_end, rate, (i / len(loads)) / rate if rate else 0.0)
            )
            for i, s in enumerate(loads)
        ]
        await asyncio.gather(*senders)
        drains = [asyncio.ensure_future(s.drained.wait()) for s in loads]
        _done, pending = await asyncio.wait(drains, timeout=spec.drain_timeout_s)
        for task in (*pending, *receivers):
            task.cancel()
        await asyncio.gather(*pending, *receivers, return_exceptions=True)
        report.window_s = t_end - t_begin
        report.cpu_s = await cpu
    finally:
        for s in loads:
            await s.close()
    for s in loads:
        s.report.missing = len(s.in_flight)
        if s.in_flight:
            s.report.problems.append(f"{len(s.in_flight)} batches got no receipt")
        report.sites.append(s.report)
    return report


async def cpu_seconds_between(t_begin: float, t_end: float) -> float:
    """CPU time [s] this process (all threads) uses between two perf_counter instants."""
    await asyncio.sleep(max(0.0, t_begin - time.perf_counter()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    return time.process_time() - cpu0


def split_sites(sites: Sequence[SiteSpec], parts: int) -> list[tuple[SiteSpec, ...]]:
    """Deal sites round-robin to ``parts`` generator processes (no empty part)."""
    parts = max(1, min(parts, len(sites)))
    return [tuple(sites[i::parts]) for i in range(parts)]
