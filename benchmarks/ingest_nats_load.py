"""NATS load of ``gridfort bench ingest --transport nats``: edges publishing to JetStream.

Each enrolled edge identity gets its own mutual-TLS NATS connection with its own
certificate, exactly like :class:`edge_node.uplinks.nats.NatsUplink`: it publishes
the signed ``EdgeMessage`` to ``gridfort.v1.telemetry.<site>`` with JetStream
publish acknowledgements (pipelined), a ``Nats-Msg-Id`` (SHA-256 of the envelope)
and the ``Gridfort-Seq`` hint, and reads the control plane's signed receipts on
``gridfort.v1.commands.<site>``. A batch leaves the window when its receipt
arrives (pipeline mode) - the end-to-end loop an edge runs.

Raw mode (the denominator of the ratio): the same envelopes, sizes, window and loop,
but the raw consumers (``ingest_nats_raw``) only acknowledge each message and answer
on the site's command subject with an unsigned ``R<seq>``: publish -> JetStream ->
pull -> ack -> reply, no pipeline. What NATS itself does on this machine, measured in
the same run.

A publish that JetStream does not acknowledge within ``PUBLISH_ACK_TIMEOUT_S`` (or
refuses) ends its batch as a problem, so the load never waits forever.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import nats
from nats.aio.msg import Msg

from benchmarks.ingest_load import LoadReport, LoadSpec, SiteLoadBase, SiteSpec
from control_plane.transports.nats_config import command_subject, inbox_prefix, telemetry_subject
from edge_node.uplinks.nats import MSG_ID, SEQ_HEADER, message_id
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb

PUBLISH_ACK_TIMEOUT_S = 30.0


class NatsSiteLoad(SiteLoadBase):
    """One edge identity over NATS: its connection, its publishes, its receipts."""

    def __init__(self, site: SiteSpec, spec: LoadSpec, report: LoadReport) -> None:
        super().__init__(site, spec, report)
        self.nc: Any = None
        self.js: Any = None
        self.subject = telemetry_subject(site.site_id)
        self.t_window = (0.0, 0.0)
        self.acks: set[asyncio.Future[Any]] = set()

    def _tls(self) -> ssl.SSLContext:
        d = self.creds.directory
        ctx = ssl.create_default_context(cadata=self.creds.bundle_pem.decode())
        ctx.load_cert_chain(d / "tls.pem", d / "tls.key")
        return ctx

    async def ready(self) -> None:
        self.nc = await nats.connect(
            list(self.spec.nats_servers),
            tls=self._tls(),
            inbox_prefix=inbox_prefix(self.creds.spiffe_id),
            name=str(self.creds.spiffe_id),
            allow_reconnect=False,
            connect_timeout=5,
            pending_size=64 << 20,
        )
        self.js = self.nc.jetstream()
        await self.nc.subscribe(command_subject(self.site.site_id), cb=self._on_control)
        await self.nc.flush()

    async def _on_control(self, msg: Msg) -> None:
        arrived = time.perf_counter()
        t_begin, t_end = self.t_window
        if self.spec.raw:
            if msg.data[:1] == b"R" and msg.data[1:].isdigit():
                self._raw_done(int(msg.data[1:]), arrived, t_begin, t_end)
            return
        message = lpb.ControlMessage.FromString(msg.data)
        if message.WhichOneof("kind") == "receipt":
            self.on_receipt_envelope(message.receipt, arrived, t_begin, t_end)

    async def send(self, t_begin: float, t_end: float, rate: float, offset_s: float) -> None:
        """Publish until ``t_end`` (perf_counter time [s]): closed loop, or ``rate`` batches/s
        if > 0; receipts arriving in [t_begin, t_end) count for the window."""
        self.t_window = (t_begin, t_end)
        await super().send(t_begin, t_end, rate, offset_s)

    async def transmit(self, envelope: epb.SignedEnvelope, seq: int) -> None:
        """Publish with a JetStream ack that ends the batch as a problem if it never comes."""
        data = lpb.EdgeMessage(telemetry=envelope).SerializeToString()
        headers = {MSG_ID: message_id(envelope), SEQ_HEADER: str(seq)}
        ack = await self.js.publish_async(self.subject, data, headers=headers)
        self.acks.add(ack)
        ack.add_done_callback(lambda f, s=seq: self._on_pub_ack(s, f))
        asyncio.get_running_loop().call_later(PUBLISH_ACK_TIMEOUT_S, ack.cancel)

    def _on_pub_ack(self, seq: int, ack: asyncio.Future[Any]) -> None:
        self.acks.discard(ack)
        if not ack.cancelled() and ack.exception() is None:
            return  # in the stream; the (raw) receipt ends the batch's flight
        why = "no answer" if ack.cancelled() else repr(ack.exception())
        self.report.problems.append(f"seq {seq}: publish not acknowledged: {why}")
        if self.in_flight.pop(seq, None) is not None:
            self.window.release()
            if self.sending_done and not self.in_flight:
                self.drained.set()

    def _raw_done(self, seq: int, arrived: float, t_begin: float, t_end: float) -> None:
        entry = self.in_flight.pop(seq, None)
        if entry is None:
            self.report.problems.append(f"unexpected raw receipt {seq}")
            return
        self.window.release()
        t_seal, _digest, in_window = entry
        self.report.committed += 1  # raw: consumed and answered
        if t_begin <= arrived < t_end:
            self.load.window_batches += 1
            self.load.window_measurements += self.spec.batch_size
        if in_window:
            self.load.latencies_ms.append((arrived - t_seal) * 1000.0)
        if self.sending_done and not self.in_flight:
            self.drained.set()

    async def close(self) -> None:
        for ack in list(self.acks):
            ack.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
