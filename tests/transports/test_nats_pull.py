"""The continuous pull adapter against a real nats-server: bounded credit, no stalls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from control_plane.transports.nats_config import STREAM_NAME, partition_consumer
from control_plane.transports.nats_consumers import NatsIngestSettings, ensure_partition_consumer
from control_plane.transports.nats_pull import PullConsumer
from control_plane.transports.nats_server import EmbeddedNats, telemetry_subject
from security.ca import CertificateAuthority
from security.clock import SystemClock
from security.identity import Role, SpiffeId

DOMAIN = "gridfort.test"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    ca = CertificateAuthority.init(tmp_path / "ca", DOMAIN, SystemClock())
    srv = EmbeddedNats(tmp_path / "state", ca, DOMAIN, ["s1"], port=0, partitions=1)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def publish(srv: EmbeddedNats, n: int) -> None:
    edge = SpiffeId(DOMAIN, Role.EDGE, "s1")
    key_pem, chain_pem = srv.issue_client_identity(edge)
    nc = await nats.connect(
        srv.url, tls=srv.client_tls(chain_pem, key_pem), inbox_prefix="_INBOX.edge.s1"
    )
    js = nc.jetstream()
    acks = [await js.publish_async(telemetry_subject("s1"), b"m%d" % i) for i in range(n)]
    await asyncio.gather(*acks)
    await nc.close()


async def consumer(srv: EmbeddedNats) -> NatsClient:
    nc = await srv.connect_control_plane(allow_reconnect=True)
    await ensure_partition_consumer(nc.jetstream(), 0, NatsIngestSettings())
    return nc


async def test_many_requests_in_a_row_deliver_everything_within_the_callers_room(
    server: EmbeddedNats,
) -> None:
    """Deliveries carry their own subject, not the request's: credit must still be counted
    (a request that looks open forever stalls the pull for its whole expiry)."""
    await publish(server, 1000)
    nc = await consumer(server)
    got: list[Msg] = []
    room = 50
    wake = asyncio.Event()
    pull = PullConsumer(
        nc,
        stream=STREAM_NAME,
        consumer=partition_consumer(0),
        on_message=got.append,
        on_idle=wake.set,
        max_batch=20,
        expires_s=5.0,
    )
    await pull.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(got) < 1000 and loop.time() < deadline:
            unanswered = [m for m in got if not m._ackd]
            assert len(unanswered) + pull.requested <= room  # never more than asked for
            for m in unanswered:
                await m.ack()
            wake.clear()
            await pull.request(room - sum(not m._ackd for m in got))
            await asyncio.sleep(0.001)
        assert len(got) == 1000
        assert [m.data for m in got] == [b"m%d" % i for i in range(1000)]  # in stream order
    finally:
        await pull.stop()
        await nc.close()


async def test_an_expired_request_is_replaced(server: EmbeddedNats) -> None:
    nc = await consumer(server)
    got: list[Msg] = []
    pull = PullConsumer(
        nc,
        stream=STREAM_NAME,
        consumer=partition_consumer(0),
        on_message=got.append,
        max_batch=10,
        expires_s=0.3,
    )
    await pull.start()
    try:
        await pull.request(20)
        await asyncio.sleep(1.0)  # both requests expire: the server says 408
        assert pull.statuses["408"] == 2 and pull.requested == 0
        await pull.request(20)
        await publish(server, 3)
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(got) == 3
    finally:
        await pull.stop()
        await nc.close()
