"""Lightweight edges of the fan-out benchmark; each process runs many (multiprocessing, spawn).

What is real per site: its enrolled credentials (real enrollment), one mutual-TLS gRPC
``EdgeLink.Connect`` stream to the control plane, and the product's
:class:`~edge_node.commands.CommandExecutor`: Ed25519 verification of the one group
signature, validity window, group replay state in the site's own SQLite file (WAL,
``synchronous=FULL``), this site's section only, local safety limits per entry, a
hash-chained audit log, and an Ed25519-signed result back on the stream.
What is not: the devices. Each site's assets are :class:`RegisterMapDevice` instances
that encode the setpoint into an in-memory register map and read it back (no Modbus).

Timing: ``time.monotonic_ns`` (Linux ``CLOCK_MONOTONIC``, one clock for every process on
the machine), taken when a command message arrives, when the last device write of the
section returned ("applied") and when the signed result was handed to gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import math
import os
import resource
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState
from edge_node.credentials import EdgeCredentials
from edge_node.devices.base import AppliedSetpoint, AssetKind, DeviceLimits, Reading
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.heap import settle_heap

METHOD = "/gridfort.v1.EdgeLink/Connect"
HEARTBEAT_S = 10.0
CONNECT_BATCH = 50  # streams opened at once


@dataclass(frozen=True)
class EdgeSpec:
    """One site: its enrolled edge directory and its assets (asset_id, rated kW)."""

    site_id: str
    edge_dir: Path
    assets: tuple[tuple[str, float], ...]
    soc_pct: float = 50.0


@dataclass(frozen=True)
class EdgeProcSpec:
    endpoint: str
    runtime_dir: Path
    sites: tuple[EdgeSpec, ...]


#: (command_id, site_id, received_ns, applied_ns, answered_ns, status) of one command.
Record = tuple[str, str, int, int, int, int]


@dataclass
class ProcReport:
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


class RegisterMap:
    """A site's device registers in memory: int16 setpoints in units of 10 W, by address."""

    def __init__(self) -> None:
        self.registers: dict[int, int] = {}
        self.last_write_ns = 0


class RegisterMapDevice:
    """A battery whose active-power setpoint register lives in a :class:`RegisterMap`."""

    def __init__(self, asset_id: str, address: int, rated_kw: float, registers: RegisterMap):
        self._asset_id = asset_id
        self._address = address
        self._rated_kw = rated_kw
        self._map = registers

    @property
    def asset_id(self) -> str:
        return self._asset_id

    @property
    def kind(self) -> AssetKind:
        return AssetKind.BATTERY

    async def connect(self) -> DeviceLimits:
        return DeviceLimits(self._rated_kw, 2 * self._rated_kw, 5.0, 95.0)

    async def read(self, now_ms: int) -> list[Reading]:
        return []

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        raw = round(p_kw * 100)  # 10 W per count, like a SunSpec W_SF of 1
        if not -32768 <= raw <= 32767:
            raise ValueError("setpoint does not fit the register")
        self._map.registers[self._address] = raw
        self._map.last_write_ns = time.monotonic_ns()
        return AppliedSetpoint(self._asset_id, self._map.registers[self._address] / 100, now_ms)

    async def close(self) -> None:
        return None


class LightEdge:
    """One site: credentials, stream, real executor, in-memory devices."""

    def __init__(self, spec: EdgeSpec, proc: EdgeProcSpec, report: ProcReport) -> None:
        self.spec = spec
        self.report = report
        clock = SystemClock()
        creds = EdgeCredentials.load(spec.edge_dir)
        self.registers = RegisterMap()
        self.devices = {
            aid: DeviceState(
                RegisterMapDevice(aid, 40_000 + i, rated, self.registers),
                DeviceLimits(rated, 2 * rated, 5.0, 95.0),
                soc_pct=spec.soc_pct,
            )
            for i, (aid, rated) in enumerate(spec.assets)
        }
        runtime = proc.runtime_dir / spec.site_id
        runtime.mkdir(parents=True, exist_ok=True)
        self.seq_store = CommandSeqStore(runtime / "commands.db")
        self.seq_store.advance(creds.next_command_seq - 1)
        self.audit = AuditLog(runtime / "audit.jsonl", clock)
        self.executor = CommandExecutor(
            site_id=spec.site_id,
            controller=creds.controller,
            devices=self.devices,
            signer=creds.signer,
            seq_store=self.seq_store,
            audit=self.audit,
            clock=clock,
        )
        self.channel = grpc.aio.secure_channel(
            proc.endpoint,
            creds.channel_credentials(),
            options=[
                ("grpc.ssl_target_name_override", creds.target_name()),
                ("grpc.max_receive_message_length", 1 << 20),
            ],
        )
        self.call = self.channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=lpb.ControlMessage.FromString
        )()
        self.registered = asyncio.Event()
        self._write_lock = asyncio.Lock()  # one write at a time on a gRPC stream
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._beat())]

    async def _beat(self) -> None:
        while True:
            beat = lpb.EdgeMessage(heartbeat=lpb.Heartbeat(sent_ms=int(time.time() * 1000)))
            async with self._write_lock:
                await self.call.write(beat.SerializeToString())
            await asyncio.sleep(HEARTBEAT_S)

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    self.report.problems.append(f"{self.spec.site_id}: stream ended")
                    return
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    self.registered.set()
                elif kind == "command":
                    await self._command(message.command)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # reported, never silent
            self.report.problems.append(f"{self.spec.site_id}: {type(e).__name__}: {e}")

    async def _command(self, envelope: object) -> None:
        received = time.monotonic_ns()
        before = self.registers.last_write_ns
        answer = await self.executor.handle(envelope)  # type: ignore[arg-type]
        applied = self.registers.last_write_ns
        async with self._write_lock:
            await self.call.write(lpb.EdgeMessage(command_result=answer).SerializeToString())
        answered = time.monotonic_ns()
        result = cpb.CommandResult.FromString(answer.payload)
        self.report.records.append(
            (
                result.command_id,
                self.spec.site_id,
                received,
                applied if applied != before else 0,
                answered,
                int(result.status),
            )
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.call.cancel()
        await self.channel.close(grace=None)
        self.seq_store.close()
        self.audit.close()


def run_edge_process(
    conn: Connection, serve: Callable[[Any, Connection], Coroutine[Any, Any, None]]
) -> None:
    """An edge process's body (the protocol of :class:`benchmarks.fanout.EdgePool`): raise
    the file limit, take one spec, run ``serve(spec, conn)``, report a crash as an error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65_536)), hard))
    try:
        spec = conn.recv()
        asyncio.run(serve(spec, conn))
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


async def answer_requests(conn: Connection, report: Any) -> None:
    """After ``ready``: answer ``"report"`` (the CPU since the last one, the records) until
    ``"stop"``. ``GRIDFORT_BENCH_PROFILE=FILE`` profiles until the first report."""
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    profile_to = os.environ.get("GRIDFORT_BENCH_PROFILE")
    profile = cProfile.Profile() if profile_to else None
    if profile is not None:
        profile.enable()
    while True:
        request = await loop.run_in_executor(None, conn.recv)
        if request == "report" and profile is not None:
            profile.disable()
            profile.dump_stats(f"{profile_to}.edges-{os.getpid()}")
            profile = None
        if request == "report":
            report.cpu_s = time.process_time() - cpu0
            conn.send(("report", report))
            report.records, report.problems = [], []
            cpu0 = time.process_time()
        elif request == "stop":
            return


def edge_proc_main(conn: Connection) -> None:
    """Entry point of a gRPC edge process: connect every site, serve until told to stop."""
    run_edge_process(conn, _serve)


async def _serve(spec: EdgeProcSpec, conn: Connection) -> None:
    report = ProcReport()
    edges = [LightEdge(site, spec, report) for site in spec.sites]
    try:
        for i in range(0, len(edges), CONNECT_BATCH):
            batch = edges[i : i + CONNECT_BATCH]
            for edge in batch:
                await edge.start()
            await asyncio.wait_for(
                asyncio.gather(*(e.registered.wait() for e in batch)), timeout=60.0
            )
        settle_heap()  # startup done, as the edge service does (security/heap.py)
        conn.send(("ready", len(edges)))
        await answer_requests(conn, report)
    finally:
        for edge in edges:
            await edge.close()
    conn.send(("stopped", len(edges)))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
