"""Durable outbox: ordered sequence numbers, acknowledge by digest, dead letters, restarts."""

from __future__ import annotations

from pathlib import Path

from edge_node.devices.base import Reading
from edge_node.outbox import Outbox
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import EnvelopeSigner, generate_signing_key, verify_signature

Q, U = tpb.Quantity, tpb.Unit


def readings(n: int = 2) -> list[Reading]:
    return [Reading("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, float(i), 1000) for i in range(n)]


def test_batches_drain_in_order_and_survive_reopen(tmp_path: Path) -> None:
    signer = EnvelopeSigner(generate_signing_key(), "spiffe://gridfort.test/edge/s1")
    box = Outbox(tmp_path / "o.db")
    box.ensure_next_seq(40)
    entries = [box.seal("s1", readings(), 1000 + i, signer) for i in range(3)]
    assert [e.seq for e in entries] == [40, 41, 42]
    box.close()
    box = Outbox(tmp_path / "o.db")  # a crash and restart loses nothing
    pending = box.pending()
    assert [e.seq for e in pending] == [40, 41, 42]
    assert box.acknowledge(pending[1].digest, committed=2, quarantined=0) == 41
    assert box.acknowledge(pending[1].digest, committed=2, quarantined=0) is None  # idempotent
    assert [e.seq for e in box.pending(after_seq=40)] == [42]
    stats = box.stats()
    assert (stats.sealed_measurements, stats.pending_batches, stats.committed_measurements) == (
        6,
        2,
        2,
    )


def test_resign_keeps_payload_and_digest(tmp_path: Path) -> None:
    key = generate_signing_key()
    signer = EnvelopeSigner(key, "spiffe://gridfort.test/edge/s1")
    box = Outbox(tmp_path / "o.db")
    entry = box.seal("s1", readings(), 1000, signer)
    fresh = box.resign(entry, signer, 99_000)
    assert fresh.digest == entry.digest and fresh.envelope.payload == entry.envelope.payload
    assert fresh.envelope.signed_ms == 99_000 and verify_signature(fresh.envelope, key.public_key())
    assert box.get(entry.seq) is not None and box.get(entry.seq).signed_ms == 99_000  # type: ignore[union-attr]


def test_dead_letter_moves_a_refused_batch_out(tmp_path: Path) -> None:
    signer = EnvelopeSigner(generate_signing_key(), "spiffe://gridfort.test/edge/s1")
    box = Outbox(tmp_path / "o.db")
    entry = box.seal("s1", readings(3), 1000, signer)
    assert box.dead_letter(entry.digest, "ASSET_NOT_AUTHORIZED", "no", 2000) == entry.seq
    stats = box.stats()
    assert (stats.pending_batches, stats.dead_letter_batches, stats.dead_letter_measurements) == (
        0,
        1,
        3,
    )
