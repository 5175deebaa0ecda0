"""The honest path over real gRPC + mTLS: enroll, stream, commit, receipt, duplicate."""

from __future__ import annotations

from control_plane.embedded import EmbeddedSystem
from gridfort.v1 import edge_link_pb2 as lpb
from security.envelope import verify_signature
from tests.e2e.raw_link import RawLink, digest, make_batch, sign_batch


async def test_signed_batch_is_committed_and_receipt_is_signed(
    system: EmbeddedSystem, enroll_site
) -> None:  # type: ignore[no-untyped-def]
    creds = await enroll_site("s1")
    now = system.clock.now_ms()
    link = RawLink.for_edge(system.link_endpoints[0], creds)
    try:
        env = sign_batch(creds.signer, make_batch("s1", creds.next_seq, now), now)
        await link.send_envelope(env)
        message = await link.recv()
        assert message.WhichOneof("kind") == "receipt"
        assert verify_signature(message.receipt, creds.controller.public_key)
        receipt = lpb.BatchReceipt.FromString(message.receipt.payload)
        assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED
        assert receipt.batch_sha256 == digest(env)
        assert receipt.committed == 1
        # an honest retry after a lost acknowledgement: acked again, never counted twice
        await link.send_envelope(env)
        again = await link.recv_receipt()
        assert again.status == lpb.RECEIPT_STATUS_DUPLICATE
    finally:
        await link.close()
    counts = system.control_plane.store.counts(["s1"])
    assert (counts.batches, counts.measurements) == (1, 1)
