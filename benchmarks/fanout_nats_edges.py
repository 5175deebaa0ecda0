"""Lightweight NATS edges of ``gridfort bench fanout --transport nats``; many per process.

What is real per site, as in :class:`edge_node.uplinks.nats.NatsUplink`: its enrolled
credentials (real enrollment), one mutual-TLS NATS connection with the site's own
certificate and inbox prefix, a subscription to its own command subject only (the
broker's permissions allow nothing else), and the product's
:class:`~edge_node.commands.CommandExecutor` (Ed25519 verification of the one group
signature, validity window, group replay state in the site's own SQLite file, this
site's section only, local limits per entry, hash-chained audit log, signed result).
The signed result goes back exactly as the real edge sends it: an ``EdgeMessage`` with
``command_result``, JetStream-published on the site's telemetry subject with a
``Nats-Msg-Id`` header, awaited inside the subscription callback.
What is not: the devices (:class:`~benchmarks.fanout_edges.RegisterMapDevice`, an
in-memory register map), and the uplink's telemetry loop (nothing to send here).

Timing (``time.monotonic_ns``, one clock for every process): a command message's arrival,
the moment the executor accepted it (signature, validity, section and replay check
passed: it reserves the group sequence number), the last device write, and the broker's
acknowledgement of the published result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from benchmarks.fanout_edges import (
    EdgeSpec,
    RegisterMap,
    RegisterMapDevice,
    answer_requests,
    run_edge_process,
)
from control_plane.transports.nats_config import command_subject, inbox_prefix, telemetry_subject
from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState
from edge_node.credentials import EdgeCredentials
from edge_node.devices.base import DeviceLimits
from edge_node.uplinks.nats import MSG_ID, message_id
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.heap import settle_heap

CONNECT_BATCH = 50  # connections opened at once (the broker's TLS handshake timeout is 2 s)
CONNECT_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NatsEdgeProcSpec:
    servers: tuple[str, ...]
    runtime_dir: Path
    sites: tuple[EdgeSpec, ...]


@dataclass(frozen=True, slots=True)
class NatsRecord:
    """One command at one site (times: ``time.monotonic_ns``; 0 = did not happen)."""

    command_id: str
    site_id: str
    message_bytes: int  # the NATS message as received
    received_ns: int
    verified_ns: int  # the executor accepted signature, validity, section and replay check
    applied_ns: int  # the last device write of the section
    answered_ns: int  # the broker acknowledged the published result
    status: int


@dataclass
class NatsProcReport:
    records: list[NatsRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


class TimedSeqStore(CommandSeqStore):
    """The product's replay store, noting when the executor reserves a group sequence
    number: the instant the group passed every check before the devices move."""

    reserved_ns = 0

    def reserve_group(self, key_id: str, seq: int) -> None:
        self.reserved_ns = time.monotonic_ns()
        super().reserve_group(key_id, seq)


class NatsLightEdge:
    """One site: credentials, NATS connection, real executor, in-memory devices."""

    def __init__(self, spec: EdgeSpec, proc: NatsEdgeProcSpec, report: NatsProcReport) -> None:
        self.spec = spec
        self.servers = proc.servers
        self.report = report
        clock = SystemClock()
        self.creds = EdgeCredentials.load(spec.edge_dir)
        self.registers = RegisterMap()
        devices = {
            aid: DeviceState(
                RegisterMapDevice(aid, 40_000 + i, rated, self.registers),
                DeviceLimits(rated, 2 * rated, 5.0, 95.0),
                soc_pct=spec.soc_pct,
            )
            for i, (aid, rated) in enumerate(spec.assets)
        }
        runtime = proc.runtime_dir / spec.site_id
        runtime.mkdir(parents=True, exist_ok=True)
        self.seq_store = TimedSeqStore(runtime / "commands.db")
        self.seq_store.advance(self.creds.next_command_seq - 1)
        self.audit = AuditLog(runtime / "audit.jsonl", clock)
        self.executor = CommandExecutor(
            site_id=spec.site_id,
            controller=self.creds.controller,
            devices=devices,
            signer=self.creds.signer,
            seq_store=self.seq_store,
            audit=self.audit,
            clock=clock,
        )
        self.subject = telemetry_subject(spec.site_id)
        self.nc: Any = None
        self.js: Any = None

    def _tls(self) -> ssl.SSLContext:
        """As ``NatsUplink._tls``: the deployment's bundle, the site's own certificate."""
        d = self.creds.directory
        ctx = ssl.create_default_context(cadata=self.creds.bundle_pem.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(d / "tls.pem", d / "tls.key")
        return ctx

    async def _error(self, e: Exception) -> None:
        self.report.problems.append(f"{self.spec.site_id}: nats: {e}")

    async def start(self) -> None:
        """Connect and subscribe as ``NatsUplink._serve`` does."""
        self.nc = await nats.connect(
            list(self.servers),
            tls=self._tls(),
            inbox_prefix=inbox_prefix(self.creds.spiffe_id),
            name=str(self.creds.spiffe_id),
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=self._error,
        )
        await self.nc.subscribe(command_subject(self.spec.site_id), cb=self._on_message)
        await self.nc.flush(timeout=int(CONNECT_TIMEOUT_S))
        self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_S)

    async def _on_message(self, msg: Msg) -> None:
        """``NatsUplink._on_message`` for commands, with timestamps."""
        received = time.monotonic_ns()
        message = lpb.ControlMessage()
        try:
            message.ParseFromString(msg.data)
        except Exception as e:  # the real edge counts and drops it
            self.report.problems.append(f"{self.spec.site_id}: undecodable message: {e}")
            return
        if message.WhichOneof("kind") != "command":
            return  # receipts: this edge sends no telemetry
        before_write, before_check = self.registers.last_write_ns, self.seq_store.reserved_ns
        result = await self.executor.handle(message.command)
        applied, verified = self.registers.last_write_ns, self.seq_store.reserved_ns
        data = lpb.EdgeMessage(command_result=result).SerializeToString()
        answered = 0
        try:
            await self.js.publish(self.subject, data, headers={MSG_ID: message_id(result)})
            answered = time.monotonic_ns()
        except Exception as e:  # the real edge suppresses it; here it is reported
            self.report.problems.append(f"{self.spec.site_id}: result not published: {e!r}")
        answer = cpb.CommandResult.FromString(result.payload)
        self.report.records.append(
            NatsRecord(
                answer.command_id,
                self.spec.site_id,
                len(msg.data),
                received,
                verified if verified != before_check else 0,
                applied if applied != before_write else 0,
                answered,
                int(answer.status),
            )
        )

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.seq_store.close()
        self.audit.close()


def nats_edge_proc_main(conn: Connection) -> None:
    """Entry point of a NATS edge process: connect every site, serve until told to stop
    (the protocol of :class:`benchmarks.fanout.EdgePool`)."""
    run_edge_process(conn, _serve)


async def _serve(spec: NatsEdgeProcSpec, conn: Connection) -> None:
    report = NatsProcReport()
    edges = [NatsLightEdge(site, spec, report) for site in spec.sites]
    try:
        for i in range(0, len(edges), CONNECT_BATCH):
            await asyncio.gather(*(e.start() for e in edges[i : i + CONNECT_BATCH]))
        settle_heap()  # startup done, as the edge service does (security/heap.py)
        conn.send(("ready", len(edges)))
        await answer_requests(conn, report)
    finally:
        # asyncio warns once per TLS connection the broker closes first: noise here
        logging.getLogger("asyncio").setLevel(logging.ERROR)
        for edge in edges:
            await edge.close()
    conn.send(("stopped", len(edges)))
