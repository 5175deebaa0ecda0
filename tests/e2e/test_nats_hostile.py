"""Hostile traffic over the NATS transport: the same pipeline refuses it exactly as over
gRPC, and what the broker refuses reaches the control plane's audit log."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from control_plane.embedded import EmbeddedSystem
from control_plane.transports.nats_config import command_subject, inbox_prefix, telemetry_subject
from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from security.envelope import EnvelopeSigner, generate_signing_key
from tests.conftest import default_assets
from tests.e2e.raw_link import make_batch, sign_batch


async def enroll(system: EmbeddedSystem, tmp_path: Path, site: str) -> EdgeCredentials:
    system.register_site(site, default_assets(site))
    await system.control_plane.sync_transports()
    return await system.enroll_edge(site, tmp_path / site)


async def connect(system: EmbeddedSystem, creds: EdgeCredentials) -> NatsClient:
    ctx = ssl.create_default_context(cadata=creds.bundle_pem.decode())
    ctx.load_cert_chain(creds.directory / "tls.pem", creds.directory / "tls.key")
    url = system.control_plane.nats_url
    assert url is not None
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    return await nats.connect(
        url,
        tls=ctx,
        inbox_prefix=inbox_prefix(creds.spiffe_id),
        error_cb=on_error,
        allow_reconnect=False,
    )


async def publish_and_receipt(
    nc: NatsClient, creds: EdgeCredentials, data: bytes, msg_id: str
) -> lpb.BatchReceipt:
    receipts: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(command_subject(creds.site_id), cb=receipts.put)
    await nc.flush()
    await nc.jetstream().publish(
        telemetry_subject(creds.site_id), data, headers={"Nats-Msg-Id": msg_id}
    )
    msg = await asyncio.wait_for(receipts.get(), 10)
    await sub.unsubscribe()
    control = lpb.ControlMessage.FromString(msg.data)
    return lpb.BatchReceipt.FromString(control.receipt.payload)


def audit(system: EmbeddedSystem) -> list[dict[str, object]]:
    path = system.control_plane.paths.audit_log
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_forged_envelope_over_nats_is_refused_like_over_grpc(
    nats_system: EmbeddedSystem, tmp_path: Path
) -> None:
    creds = await enroll(nats_system, tmp_path, "s1")
    nc = await connect(nats_system, creds)
    try:
        now = nats_system.clock.now_ms()
        forger = EnvelopeSigner(generate_signing_key(), creds.signer.signer)
        forged = forger.sign(1, make_batch("s1", creds.next_seq, now).SerializeToString(), now)
        forged.key_id = creds.signer.key_id  # claims the enrolled key
        data = lpb.EdgeMessage(telemetry=forged).SerializeToString()
        receipt = await publish_and_receipt(nc, creds, data, "forged-1")
        assert receipt.status == lpb.RECEIPT_STATUS_REFUSED and receipt.reason == "BAD_SIGNATURE"
        honest = sign_batch(creds.signer, make_batch("s1", creds.next_seq, now), now)
        data = lpb.EdgeMessage(telemetry=honest).SerializeToString()
        ok = await publish_and_receipt(nc, creds, data, "honest-1")
        assert ok.status == lpb.RECEIPT_STATUS_COMMITTED
        # an exact replay under a new Msg-Id passes JetStream but not the replay guard
        again = await publish_and_receipt(nc, creds, data, "replay-1")
        assert again.status == lpb.RECEIPT_STATUS_DUPLICATE
    finally:
        await nc.close()
    assert nats_system.control_plane.store.counts(["s1"]).batches == 1
    assert any(
        r["reason"] == "BAD_SIGNATURE" and r["decision"] == "deny" for r in audit(nats_system)
    )


async def test_publishing_on_another_sites_subject_is_refused_and_audited(
    nats_system: EmbeddedSystem, tmp_path: Path
) -> None:
    a = await enroll(nats_system, tmp_path, "site-a")
    await enroll(nats_system, tmp_path, "site-b")
    nc = await connect(nats_system, a)
    try:
        await nc.publish(telemetry_subject("site-b"), b"spoofed")
        await nc.flush()
        for _ in range(100):
            if any(r["event"] == "nats_permission" for r in audit(nats_system)):
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    records = [r for r in audit(nats_system) if r["event"] == "nats_permission"]
    assert records and records[-1]["identity"] == str(a.spiffe_id)
    assert nats_system.control_plane.store.counts(["site-b"]).batches == 0


async def test_message_without_msg_id_is_dropped_not_blamed(
    nats_system: EmbeddedSystem, tmp_path: Path
) -> None:
    creds = await enroll(nats_system, tmp_path, "s1")
    nc = await connect(nats_system, creds)
    try:
        await nc.jetstream().publish(telemetry_subject("s1"), b"noise")
        ingest = nats_system.control_plane.nats_ingest
        assert ingest is not None
        for _ in range(100):
            if ingest.stats.dropped_without_msg_id:
                break
            await asyncio.sleep(0.05)
        assert ingest.stats.dropped_without_msg_id == 1
    finally:
        await nc.close()
    assert not any(
        r.get("identity") == str(creds.spiffe_id) and r["decision"] == "deny"
        for r in audit(nats_system)
    )


async def test_revoked_edge_is_cut_off_the_broker_within_seconds(
    nats_system: EmbeddedSystem, tmp_path: Path
) -> None:
    creds = await enroll(nats_system, tmp_path, "s1")
    nc = await connect(nats_system, creds)
    try:
        assert nc.is_connected
        nats_system.control_plane.revocations.revoke(creds.spiffe_id, "gateway stolen")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while nc.is_connected and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert not nc.is_connected  # the broker cut the connection (users list reloaded)
        with pytest.raises((nats.errors.Error, OSError)):  # a new connection is refused
            await connect(nats_system, creds)
    finally:
        await nc.close()
