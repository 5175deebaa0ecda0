"""Raw NATS consumers of ``gridfort bench ingest --transport nats`` (the ratio's denominator).

Each process connects as the control plane (mutual TLS, its own client certificate),
pulls its share of the telemetry stream's partition consumers with the same
:class:`~control_plane.transports.nats_pull.PullConsumer` the ingest workers use,
acknowledges every message at once and answers the edge on its command subject with
``R<seq>`` (from the ``Gridfort-Seq`` header): no parsing, no pipeline, no signature.
Together with the raw-mode load (``ingest_nats_load``) this is the same closed loop as
the pipeline phases - JetStream publish + store + pull + ack + reply over mutual TLS -
measured in the same run. Runs in its own OS process (multiprocessing, spawn).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from nats.aio.msg import Msg

from benchmarks.ingest_load import cpu_seconds_between
from control_plane.app import StatePaths
from control_plane.transports.nats_client import ControlPlaneClientTls, connect_control_plane
from control_plane.transports.nats_config import COMMAND_PREFIX, STREAM_NAME, partition_consumer
from control_plane.transports.nats_consumers import NatsIngestSettings, ensure_partition_consumer
from control_plane.transports.nats_pull import PullConsumer
from edge_node.uplinks.nats import SEQ_HEADER
from security.ca import CertificateAuthority
from security.clock import SystemClock

ROOM = 1024  # pull credit per partition (the workers' max_outstanding)


@dataclass(frozen=True)
class RawSpec:
    urls: tuple[str, ...]
    state_dir: Path  # the control plane's (its CA issues this process's certificate)
    name: str  # control-plane identity
    partitions: tuple[int, ...]
    warmup_s: float
    seconds: float


@dataclass
class RawReport:
    acked: int = 0
    window_acked: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    error: str = ""


def raw_main(conn: Connection) -> None:
    """Entry point: one phase per ``RawSpec`` received; None ends the process."""
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        try:
            report = asyncio.run(_phase(spec, conn))
        except Exception:
            report = RawReport(error=traceback.format_exc())
        conn.send(report)


async def _phase(spec: RawSpec, conn: Connection) -> RawReport:
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    ca = CertificateAuthority.load(StatePaths(spec.state_dir).ca, clock)
    tls = ControlPlaneClientTls(ca, spec.name, clock)
    nc = await connect_control_plane(
        spec.urls, tls.context, tls.spiffe_id, allow_reconnect=True, max_reconnect_attempts=-1
    )
    report = RawReport()
    window = (float("inf"), float("inf"))
    wake = asyncio.Event()
    acks: set[asyncio.Future[None]] = set()

    async def answer(msg: Msg) -> None:
        await nc.publish(msg.reply)  # +ACK, like msg.ack()
        seq = (msg.headers or {}).get(SEQ_HEADER, "")
        site = msg.subject.rsplit(".", 1)[-1]
        await nc.publish(f"{COMMAND_PREFIX}.{site}", b"R" + seq.encode())

    def on_message(msg: Msg) -> None:
        report.acked += 1
        now = time.perf_counter()
        if window[0] <= now < window[1]:
            report.window_acked += 1
        ack = asyncio.ensure_future(answer(msg))
        acks.add(ack)
        ack.add_done_callback(acks.discard)

    js = nc.jetstream(timeout=10)
    for p in spec.partitions:  # normally created by the workers already
        await ensure_partition_consumer(js, p, NatsIngestSettings())
    pulls = [
        PullConsumer(
            nc,
            stream=STREAM_NAME,
            consumer=partition_consumer(p),
            on_message=on_message,
            on_idle=wake.set,
        )
        for p in spec.partitions
    ]
    for pull in pulls:
        await pull.start()

    async def pull_loop() -> None:
        while True:
            wake.clear()
            for pull in pulls:
                await pull.request(ROOM)
            with suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.2)

    puller = asyncio.ensure_future(pull_loop())
    try:
        conn.send("ready")
        start_wall: float = await loop.run_in_executor(None, conn.recv)
        t_begin = time.perf_counter() + max(0.0, start_wall - time.time()) + spec.warmup_s
        window = (t_begin, t_begin + spec.seconds)
        report.window_s = spec.seconds
        report.cpu_s = await cpu_seconds_between(*window)
        await loop.run_in_executor(None, conn.recv)  # "stop": the stream is drained
    finally:
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
        for pull in pulls:
            await pull.stop()
        await nc.close()
    return report
