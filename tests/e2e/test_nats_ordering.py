"""Order and fairness on the NATS path: batches that reach the stream out of order are
committed in order, and a site flooding the broker does not cost the others anything."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from control_plane.embedded import EmbeddedSystem
from control_plane.transports.nats_config import (
    DEFAULT_MAX_MSGS_PER_SITE,
    command_subject,
    telemetry_subject,
)
from edge_node.credentials import EdgeCredentials
from edge_node.uplinks.nats import MSG_ID, SEQ_HEADER, message_id
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from tests.e2e.edge_harness import drain_and_check, start_edge, wait_until
from tests.e2e.raw_link import make_batch, sign_batch
from tests.e2e.test_nats_hostile import connect, enroll


def signed(creds: EdgeCredentials, seq: int, now_ms: int) -> epb.SignedEnvelope:
    return sign_batch(creds.signer, make_batch(creds.site_id, seq, now_ms), now_ms)


async def publish(nc: NatsClient, creds: EdgeCredentials, envelope: epb.SignedEnvelope) -> None:
    seq = make_seq(envelope)
    await nc.jetstream().publish(
        telemetry_subject(creds.site_id),
        lpb.EdgeMessage(telemetry=envelope).SerializeToString(),
        headers={MSG_ID: message_id(envelope), SEQ_HEADER: str(seq)},
    )


def make_seq(envelope: epb.SignedEnvelope) -> int:
    from gridfort.v1 import telemetry_pb2 as tpb

    return int(tpb.TelemetryBatch.FromString(envelope.payload).seq)


async def test_batches_stored_out_of_order_are_committed_in_order(
    nats_system: EmbeddedSystem, tmp_path: Path
) -> None:
    """As after a cluster fail-over: the stream holds s+2 before the edge re-sends s+1."""
    creds = await enroll(nats_system, tmp_path, "s1")
    nc = await connect(nats_system, creds)
    receipts: asyncio.Queue[Msg] = asyncio.Queue()
    await nc.subscribe(command_subject("s1"), cb=receipts.put)
    await nc.flush()
    first = creds.next_seq
    now = nats_system.clock.now_ms()
    try:
        await publish(nc, creds, signed(creds, first, now))
        await publish(nc, creds, signed(creds, first + 2, now))  # its predecessor is missing
        await asyncio.sleep(0.5)
        cp = nats_system.control_plane
        assert cp.store.sequences("s1") == [first]  # held, not refused as a replay
        await publish(nc, creds, signed(creds, first + 1, now))  # the re-send arrives
        got = []
        for _ in range(3):
            msg = await asyncio.wait_for(receipts.get(), 10)
            got.append(
                lpb.BatchReceipt.FromString(lpb.ControlMessage.FromString(msg.data).receipt.payload)
            )
    finally:
        await nc.close()
    assert [r.seq for r in got] == [first, first + 1, first + 2]
    assert all(r.status == lpb.RECEIPT_STATUS_COMMITTED for r in got)
    assert cp.store.sequences("s1") == [first, first + 1, first + 2]
    ingest = cp.nats_ingest
    assert ingest is not None and ingest.stats.gaps_waited >= 1 and ingest.stats.gaps_skipped == 0


async def test_a_flooding_site_does_not_starve_the_honest_sites(
    nats_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    """A compromised but enrolled gateway publishes validly signed batches as fast as it can,
    never waiting for receipts. The broker caps its unconsumed messages (the stream's
    per-site limit); the consumer gives it one batch at a time like every site. The honest
    sites keep committing during the flood and lose nothing. (Beyond the cap nats-server
    drops the flood's publishes without an acknowledgement: an honest edge would time out
    and re-send, a flooder just loses its excess.)"""
    cp = nats_system.control_plane
    urls = cp.nats_urls
    honest = [
        await start_edge(
            nats_system,
            tmp_path,
            site,
            modbus,
            nats_system.link_endpoints,
            transport="nats",
            nats_servers=urls,
            pv_only=True,
        )
        for site in ("h1", "h2")
    ]
    flooder = await enroll(nats_system, tmp_path, "flood")
    nc = await connect(nats_system, flooder)
    stored = not_stored = 0
    try:
        await wait_until(lambda: cp.store.counts(["h1", "h2"]).batches >= 10)
        js = nc.jetstream()
        subject = telemetry_subject("flood")
        futures = []
        now = nats_system.clock.now_ms()
        for i in range(3000):
            envelope = signed(flooder, flooder.next_seq + i, now)
            data = lpb.EdgeMessage(telemetry=envelope).SerializeToString()
            headers = {MSG_ID: message_id(envelope), SEQ_HEADER: str(flooder.next_seq + i)}
            futures.append(await js.publish_async(subject, data, headers=headers))
        during = cp.store.counts(["h1", "h2"]).batches
        done, _pending = await asyncio.wait(futures, timeout=10)
        stored = sum(f.exception() is None for f in done)
        not_stored = len(futures) - stored
        # the honest sites keep committing while the flood is consumed
        await wait_until(lambda: cp.store.counts(["h1", "h2"]).batches >= during + 20, 20.0)
        for node, site in zip(honest, ("h1", "h2"), strict=True):
            await drain_and_check(nats_system, node, site)
    finally:
        await nc.close()
        for node in honest:
            await node.stop()
    # the broker capped the flood's unconsumed messages (a few were consumed meanwhile)
    assert DEFAULT_MAX_MSGS_PER_SITE <= stored < 2 * DEFAULT_MAX_MSGS_PER_SITE
    assert not_stored == 3000 - stored


async def test_a_control_plane_restart_keeps_the_brokers_url_and_loses_nothing(
    nats_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    """The embedded broker comes back on the same port, so an edge configured with its URL
    reconnects by itself; the outbox re-sends what was not committed."""
    url = nats_system.control_plane.nats_urls
    node = await start_edge(
        nats_system,
        tmp_path,
        "s1",
        modbus,
        nats_system.link_endpoints,
        transport="nats",
        nats_servers=url,
        pv_only=True,
    )
    try:
        cp = nats_system.control_plane
        await wait_until(lambda: cp.store.counts(["s1"]).batches >= 5)
        await nats_system.restart()
        assert nats_system.control_plane.nats_urls == url
        after = nats_system.control_plane
        await wait_until(lambda: after.store.counts(["s1"]).batches >= 15, 30.0)
        await drain_and_check(nats_system, node, "s1")
    finally:
        await node.stop()
