"""Hostile envelopes from authenticated edges, over the real EdgeLink stream.

Site A is a valid, enrolled edge that turned hostile (or whose gateway was
taken over); site B is an honest neighbour. Every attack is sent on A's own
mutual-TLS stream. For each one we check the signed receipt (reason,
retryable, no internals), the deny record in the audit log, and that an
honest batch on the *same* stream still commits: a refused batch never stops
the stream of an honest site.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.embedded import EmbeddedSystem
from control_plane.transports.grpc_server import GrpcSettings
from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import EnvelopeSigner, load_signing_key, verify_signature
from security.refusals import RETRYABLE, Reason
from tests.e2e.raw_link import Q, RawLink, U, digest, make_batch, sign_batch

EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]

SETTINGS = GrpcSettings()  # the limits the embedded control plane runs with
MINUTE_MS = 60_000
MAX_INT64 = 2**63 - 1

Row = tuple[str, int, int, float]


# -- helpers -------------------------------------------------------------------------------------


class Edge:
    """An enrolled site, its open stream and its next sequence number."""

    def __init__(self, system: EmbeddedSystem, creds: EdgeCredentials) -> None:
        self.system = system
        self.creds = creds
        self.site = creds.site_id
        self.uri = str(creds.spiffe_id)
        self.seq = creds.next_seq
        self.link = RawLink.for_edge(system.link_endpoints[0], creds)

    def now(self) -> int:
        return self.system.clock.now_ms()

    def next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq

    def batch(
        self, seq: int | None = None, rows: Sequence[Row] | None = None
    ) -> tpb.TelemetryBatch:
        return make_batch(self.site, self.next_seq() if seq is None else seq, self.now(), rows)

    def sign(self, batch: tpb.TelemetryBatch, signed_ms: int | None = None) -> epb.SignedEnvelope:
        return sign_batch(self.creds.signer, batch, self.now() if signed_ms is None else signed_ms)

    async def send(
        self, envelope: epb.SignedEnvelope, link: RawLink | None = None
    ) -> lpb.BatchReceipt:
        link = link or self.link
        await link.send_envelope(envelope)
        return await self.receipt(link)

    async def send_bytes(self, data: bytes, link: RawLink | None = None) -> lpb.BatchReceipt:
        link = link or self.link
        await link.send_bytes(data)
        return await self.receipt(link)

    async def receipt(self, link: RawLink) -> lpb.BatchReceipt:
        """The next receipt on ``link``, after checking the control plane signed it."""
        while True:
            message = await link.recv()
            if message.WhichOneof("kind") == "receipt":
                assert verify_signature(message.receipt, self.creds.controller.public_key)
                assert message.receipt.signer == self.creds.controller.spiffe_id
                return lpb.BatchReceipt.FromString(message.receipt.payload)

    async def commit_honest(self, link: RawLink | None = None) -> lpb.BatchReceipt:
        """An honest batch on the same stream is still committed."""
        env = self.sign(self.batch())
        receipt = await self.send(env, link)
        assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED, receipt
        assert receipt.batch_sha256 == digest(env)
        return receipt


@dataclass
class Pair:
    system: EmbeddedSystem
    a: Edge  # turned hostile
    b: Edge  # honest neighbour


@pytest.fixture
async def pair(system: EmbeddedSystem, enroll_site: EnrollSite) -> AsyncIterator[Pair]:
    a = Edge(system, await enroll_site("site-a"))
    b = Edge(system, await enroll_site("site-b"))
    try:
        yield Pair(system, a, b)
    finally:
        await a.link.close()
        await b.link.close()


def audit_records(system: EmbeddedSystem) -> list[dict[str, Any]]:
    path = system.control_plane.audit.path
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def assert_no_internals(*texts: str) -> None:
    for text in texts:
        for leak in ("Traceback", "INTERNAL", 'File "', "Exception", "Error(", "0x7f"):
            assert leak not in text, text


def assert_refused(
    system: EmbeddedSystem, receipt: lpb.BatchReceipt, reason: Reason, identity: str
) -> None:
    """REFUSED for ``reason``, retryable as documented, clean message, and audited as a deny."""
    assert receipt.status == lpb.RECEIPT_STATUS_REFUSED, receipt
    assert receipt.reason == reason.value, receipt
    assert receipt.retryable == (reason in RETRYABLE)
    assert receipt.committed == 0
    assert_no_internals(receipt.reason, receipt.message)
    records = [
        r
        for r in audit_records(system)
        if r["decision"] == "deny" and r["reason"] == reason.value and r["identity"] == identity
    ]
    assert records, f"no audit deny record with reason {reason.value} for {identity}"


def flip(data: bytes, position: int) -> bytes:
    """``data`` with every bit of the byte at ``position`` inverted (negative: from the end)."""
    i = position % len(data)
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def row(asset: str, quantity: int, unit: int, value: float) -> Row:
    return (asset, quantity, unit, value)


# -- authorization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assets",
    [["site-b-pv"], ["site-a-pv", "site-b-bat"], ["no-such-asset"]],
    ids=["neighbours-asset", "one-foreign-asset-among-own", "unregistered-asset"],
)
async def test_edge_reporting_for_an_asset_it_does_not_own_is_refused(
    pair: Pair, assets: list[str]
) -> None:
    a = pair.a
    rows = [row(asset, Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0) for asset in assets]
    receipt = await a.send(a.sign(a.batch(rows=rows)))
    assert_refused(pair.system, receipt, Reason.ASSET_NOT_AUTHORIZED, a.uri)
    await a.commit_honest()
    assert pair.system.control_plane.store.counts(["site-a", "site-b"]).measurements == 1


@pytest.mark.parametrize(
    "variant", ["fresh-seq", "seq-the-neighbour-already-used", "neighbours-exact-batch"]
)
async def test_edge_reporting_for_another_site_is_refused(pair: Pair, variant: str) -> None:
    a, b = pair.a, pair.b
    honest_b = b.batch()  # B commits seq 1 first
    assert (await b.send(b.sign(honest_b))).status == lpb.RECEIPT_STATUS_COMMITTED
    rows = [row("site-b-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 9.9)]
    if variant == "fresh-seq":
        forged = make_batch("site-b", 50, a.now(), rows)
    elif variant == "seq-the-neighbour-already-used":
        forged = make_batch("site-b", honest_b.seq, a.now(), rows)
    else:  # B's committed bytes, re-signed by A: must not even learn they are a duplicate
        forged = honest_b
    receipt = await a.send(a.sign(forged))
    assert_refused(pair.system, receipt, Reason.SITE_MISMATCH, a.uri)
    await a.commit_honest()
    await b.commit_honest()  # B's sequence space was not touched by A
    assert pair.system.control_plane.store.sequences("site-b") == [1, 2]


# -- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("fresh-key-with-my-key-id", Reason.BAD_SIGNATURE),
        ("unknown-key-id", Reason.UNKNOWN_SIGNING_KEY),
        ("neighbours-key-as-neighbour", Reason.SIGNER_MISMATCH),
        ("neighbours-key-as-me", Reason.SIGNER_MISMATCH),
    ],
)
async def test_batch_signed_with_the_wrong_key_is_refused(
    pair: Pair, attack: str, reason: Reason
) -> None:
    a, b = pair.a, pair.b
    batch = a.batch()
    rogue = EnvelopeSigner(Ed25519PrivateKey.generate(), a.uri)
    if attack == "fresh-key-with-my-key-id":
        env = sign_batch(rogue, batch, a.now())
        env.key_id = a.creds.signer.key_id
    elif attack == "unknown-key-id":
        env = sign_batch(rogue, batch, a.now())
    elif attack == "neighbours-key-as-neighbour":  # B's key (e.g. stolen) over A's connection
        env = sign_batch(b.creds.signer, batch, a.now())
    else:
        stolen = load_signing_key(b.creds.directory / "signing.key")  # B's key file, stolen
        env = sign_batch(EnvelopeSigner(stolen, a.uri), batch, a.now())
        assert env.key_id == b.creds.signer.key_id
    receipt = await a.send(env)
    assert_refused(pair.system, receipt, reason, a.uri)
    await a.commit_honest()
    assert pair.system.control_plane.store.sequences("site-a") == [batch.seq + 1]


@pytest.mark.parametrize("position", [0, 1, 7, 20, -9, -1])
async def test_one_flipped_byte_in_the_payload_is_refused(pair: Pair, position: int) -> None:
    a = pair.a
    env = a.sign(a.batch())
    env.payload = flip(env.payload, position)
    receipt = await a.send(env)
    assert_refused(pair.system, receipt, Reason.BAD_SIGNATURE, a.uri)
    await a.commit_honest()


@pytest.mark.parametrize("position", [0, 1, 31, 32, 62, 63])
async def test_one_flipped_byte_in_the_signature_is_refused(pair: Pair, position: int) -> None:
    a = pair.a
    env = a.sign(a.batch())
    env.signature = flip(env.signature, position)
    receipt = await a.send(env)
    assert_refused(pair.system, receipt, Reason.BAD_SIGNATURE, a.uri)
    await a.commit_honest()


@pytest.mark.parametrize("field", ["signed_ms", "payload_type"])
async def test_altered_signed_header_is_refused(pair: Pair, field: str) -> None:
    a = pair.a
    env = a.sign(a.batch())
    if field == "signed_ms":  # move the signing time without re-signing
        env.signed_ms -= 1
        expected = Reason.BAD_SIGNATURE
    else:  # present a telemetry signature as a command result
        env.payload_type = epb.PAYLOAD_TYPE_COMMAND_RESULT
        expected = Reason.WRONG_PAYLOAD_TYPE
    receipt = await a.send(env)
    assert_refused(pair.system, receipt, expected, a.uri)
    await a.commit_honest()


# -- replay and sequence -------------------------------------------------------------------------


async def test_replayed_batch_after_newer_ones_is_a_duplicate_and_counted_once(pair: Pair) -> None:
    a = pair.a
    store = pair.system.control_plane.store
    sent = [a.sign(a.batch()) for _ in range(3)]
    for env in sent:
        assert (await a.send(env)).status == lpb.RECEIPT_STATUS_COMMITTED
    before = store.counts(["site-a"])
    for env in (sent[0], sent[1], sent[0]):  # exact re-sends, in any order
        receipt = await a.send(env)
        assert receipt.status == lpb.RECEIPT_STATUS_DUPLICATE, receipt
        assert receipt.batch_sha256 == digest(env)
        assert receipt.committed == 0
    assert store.counts(["site-a"]) == before
    await a.commit_honest()
    assert store.sequences("site-a") == [1, 2, 3, 4]


async def test_different_batch_at_an_old_sequence_is_refused_as_replayed(pair: Pair) -> None:
    a = pair.a
    for _ in range(3):
        await a.commit_honest()
    rows = [row("site-a-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 7.7)]
    for seq in (2, 3, 0):  # an old seq, the high-water mark itself, and zero
        receipt = await a.send(a.sign(a.batch(seq=seq, rows=rows)))
        assert_refused(pair.system, receipt, Reason.REPLAYED_SEQUENCE, a.uri)
    await a.commit_honest()
    assert pair.system.control_plane.store.counts(["site-a"]).measurements == 4


async def test_sequence_going_backwards_is_refused(pair: Pair) -> None:
    a = pair.a
    a.seq = 100  # a gap forward is allowed
    await a.commit_honest()
    for seq in (99, 50, 1):
        receipt = await a.send(a.sign(a.batch(seq=seq)))
        assert_refused(pair.system, receipt, Reason.REPLAYED_SEQUENCE, a.uri)
    await a.commit_honest()
    assert pair.system.control_plane.store.sequences("site-a") == [100, 101]


@pytest.mark.parametrize("seq", [MAX_INT64 + 1, 2**64 - 1])
async def test_sequence_beyond_int64_is_refused_and_the_store_keeps_working(
    pair: Pair, seq: int
) -> None:
    a, b = pair.a, pair.b
    receipt = await a.send(a.sign(a.batch(seq=seq)))
    assert_refused(pair.system, receipt, Reason.MALFORMED_BATCH, a.uri)
    await a.commit_honest()
    await b.commit_honest()  # the store's writer is alive for every site


async def test_largest_int64_sequence_is_still_accepted(pair: Pair) -> None:
    a = pair.a
    receipt = await a.send(a.sign(a.batch(seq=MAX_INT64)))
    assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED, receipt


@pytest.mark.parametrize(
    ("offset_ms", "reason"),
    [
        (-10 * MINUTE_MS, Reason.STALE_TIMESTAMP),
        (-(30_000 + 5_000 + 2_000), Reason.STALE_TIMESTAMP),  # just outside window + skew
        (10 * MINUTE_MS, Reason.FUTURE_TIMESTAMP),
        (5_000 + 2_000, Reason.FUTURE_TIMESTAMP),  # just outside the skew
    ],
    ids=["stale", "just-stale", "future", "just-future"],
)
async def test_stale_or_future_signature_is_refused_as_retryable(
    pair: Pair, offset_ms: int, reason: Reason
) -> None:
    a = pair.a
    batch = a.batch()
    receipt = await a.send(a.sign(batch, signed_ms=a.now() + offset_ms))
    assert_refused(pair.system, receipt, reason, a.uri)
    assert receipt.retryable
    # retryable means: the same batch, re-signed now, commits at the same seq
    again = await a.send(a.sign(batch))
    assert again.status == lpb.RECEIPT_STATUS_COMMITTED, again
    assert again.seq == batch.seq
    await a.commit_honest()


# -- size and shape ------------------------------------------------------------------------------


def _bulk_envelope(a: Edge, n: int) -> bytes:
    rows = [row("site-a-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0)] * n
    return lpb.EdgeMessage(telemetry=a.sign(a.batch(rows=rows))).SerializeToString()


async def test_message_over_the_batch_limit_is_refused_and_the_stream_keeps_working(
    pair: Pair,
) -> None:
    a = pair.a
    data = _bulk_envelope(a, 20_000)
    assert SETTINGS.max_batch_bytes < len(data) < SETTINGS.max_message_bytes
    receipt = await a.send_bytes(data)
    assert_refused(pair.system, receipt, Reason.OVERSIZED, a.uri)
    await a.commit_honest()
    assert pair.system.control_plane.store.counts(["site-a"]).measurements == 1


async def test_message_over_the_transport_limit_ends_the_stream_but_not_the_server(
    pair: Pair,
) -> None:
    a, system = pair.a, pair.system
    data = _bulk_envelope(a, 40_000)
    assert len(data) > SETTINGS.max_message_bytes
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await asyncio.wait_for(a.link.send_bytes(data), 5.0)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        while True:
            message = await a.link.recv()
            assert message.WhichOneof("kind") != "receipt"
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_no_internals(failed.value.details() or "")
    # The server keeps serving: a new stream of the same edge, and the neighbour's stream.
    await a.link.close()
    a.link = RawLink.for_edge(system.link_endpoints[0], a.creds)
    await a.commit_honest()
    await pair.b.commit_honest()
    assert system.control_plane.store.counts(["site-a"]).measurements == 1


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"\x0a\x05abc",  # telemetry field with a length longer than the message
        b"\x0a\xff\xff\xff\xff\x0f",  # absurd length
        b"",  # an EdgeMessage that carries nothing
        b"\x08\x01",  # unknown-shaped field only: carries nothing
        b"\x0b" * 200,  # nested start-group tags
        bytes(range(256)),
    ],
    ids=["ff", "truncated", "huge-length", "empty", "no-kind", "group-bomb", "all-bytes"],
)
async def test_malformed_protobuf_bytes_are_refused_and_the_stream_keeps_working(
    pair: Pair, data: bytes
) -> None:
    a = pair.a
    receipt = await a.send_bytes(data)
    assert_refused(pair.system, receipt, Reason.MALFORMED_ENVELOPE, a.uri)
    await a.commit_honest()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("short-signature", Reason.MALFORMED_ENVELOPE),
        ("no-signer", Reason.MALFORMED_ENVELOPE),
        ("short-key-id", Reason.MALFORMED_ENVELOPE),
        ("unknown-payload-type", Reason.MALFORMED_ENVELOPE),
        ("zero-signed-ms", Reason.MALFORMED_ENVELOPE),
        ("payload-not-a-batch", Reason.MALFORMED_BATCH),
        ("empty-batch", Reason.EMPTY_BATCH),
        ("too-many-measurements", Reason.TOO_MANY_MEASUREMENTS),
    ],
)
async def test_malformed_envelope_or_batch_is_refused(
    pair: Pair, mutate: str, reason: Reason
) -> None:
    a = pair.a
    env = a.sign(a.batch())
    if mutate == "short-signature":
        env.signature = env.signature[:10]
    elif mutate == "no-signer":
        env.signer = ""
    elif mutate == "short-key-id":
        env.key_id = env.key_id[:8]
    elif mutate == "unknown-payload-type":
        env.payload_type = 99  # type: ignore[assignment]
    elif mutate == "zero-signed-ms":
        env.signed_ms = 0
    elif mutate == "payload-not-a-batch":  # validly signed garbage
        env = a.creds.signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, b"\x0a\xff\xff", a.now())
    elif mutate == "empty-batch":
        env = a.sign(tpb.TelemetryBatch(site_id="site-a", seq=a.next_seq(), sealed_ms=a.now()))
    else:
        rows = [row("site-a-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0)] * 10_001
        env = a.sign(a.batch(rows=rows))
    receipt = await a.send(env)
    assert_refused(pair.system, receipt, reason, a.uri)
    await a.commit_honest()


async def test_refusal_of_a_malformed_message_is_answered_on_the_stream_that_sent_it(
    pair: Pair,
) -> None:
    a, system = pair.a, pair.system
    newer = RawLink.for_edge(system.link_endpoints[1], a.creds)
    try:
        await a.commit_honest(newer)  # the newer stream is open and registered
        receipt = await a.send_bytes(b"\xff")  # garbage on the older stream
        assert_refused(system, receipt, Reason.MALFORMED_ENVELOPE, a.uri)
        await a.commit_honest(newer)
        await a.commit_honest()
    finally:
        await newer.close()


# -- validation: quarantine, not refusal ---------------------------------------------------------


def _quarantine_rows(system: EmbeddedSystem, site: str) -> list[tuple[int, int, str]]:
    path = system.control_plane.paths.telemetry_db
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT seq, idx, reason FROM quarantine WHERE site_id = ? ORDER BY seq, idx", (site,)
        ).fetchall()
    finally:
        conn.close()
    return [(int(s), int(i), str(r)) for s, i, r in rows]


PV, BAT, EV = "site-a-pv", "site-a-bat", "site-a-ev"
P, SOC = Q.QUANTITY_ACTIVE_POWER, Q.QUANTITY_STATE_OF_CHARGE
BOUNDS, FINITE, TIME = (
    Reason.OUT_OF_PHYSICAL_BOUNDS,
    Reason.VALUE_NOT_FINITE,
    Reason.SAMPLE_TIME_INVALID,
)

BAD_MEASUREMENTS: list[tuple[Row, int | None, Reason]] = [
    # (asset, quantity, unit, value), ts offset [ms] or None (= sealed time), expected reason
    (row(PV, P, U.UNIT_KW, 100.0), None, BOUNDS),  # 10 kW inverter
    (row(PV, P, U.UNIT_KW, -5.0), None, BOUNDS),  # a PV inverter does not import 5 kW
    (row(BAT, SOC, U.UNIT_PCT, 150.0), None, BOUNDS),
    (row(EV, P, U.UNIT_KW, 5.0), None, BOUNDS),  # a charger does not export
    (row(BAT, Q.QUANTITY_VOLTAGE, U.UNIT_V, 1e308), None, BOUNDS),
    (row(PV, P, U.UNIT_V, 4.0), None, Reason.UNIT_MISMATCH),
    (row(PV, P, U.UNIT_UNSPECIFIED, 4.0), None, Reason.UNIT_MISMATCH),
    (row(PV, P, U.UNIT_KW, math.inf), None, FINITE),
    (row(BAT, P, U.UNIT_KW, -math.inf), None, FINITE),
    (row(PV, P, U.UNIT_KW, math.nan), None, FINITE),
    (row(BAT, SOC, U.UNIT_PCT, -math.nan), None, FINITE),
    (row(PV, 99, U.UNIT_KW, 4.0), None, Reason.UNKNOWN_QUANTITY),
    (row(PV, Q.QUANTITY_UNSPECIFIED, U.UNIT_KW, 4.0), None, Reason.UNKNOWN_QUANTITY),
    (row(PV, SOC, U.UNIT_PCT, 50.0), None, Reason.QUANTITY_NOT_FOR_ASSET),
    (row(EV, Q.QUANTITY_REACTIVE_POWER, U.UNIT_KVAR, 1.0), None, Reason.QUANTITY_NOT_FOR_ASSET),
    (row(PV, P, U.UNIT_KW, 4.0), -60 * MINUTE_MS, TIME),  # older than the batch allows
    (row(PV, P, U.UNIT_KW, 4.0), 10 * MINUTE_MS, TIME),  # after the batch was sealed
]


def _mixed_batch(a: Edge, bad: Sequence[tuple[Row, int | None, Reason]]) -> tpb.TelemetryBatch:
    """Good readings at indices 0 and last; the bad ones in between."""
    now = a.now()
    good = tpb.Measurement(
        asset_id="site-a-pv", quantity=Q.QUANTITY_ACTIVE_POWER, unit=U.UNIT_KW, value=4.2, ts_ms=now
    )
    measurements = [good]
    for (asset, quantity, unit, value), offset_ms, _ in bad:
        ts_ms = now if offset_ms is None else now + offset_ms
        m = tpb.Measurement(asset_id=asset, value=value, ts_ms=ts_ms)
        m.quantity, m.unit = quantity, unit  # type: ignore[assignment]  # any int32 on the wire
        measurements.append(m)
    measurements.append(good)
    return tpb.TelemetryBatch(
        site_id=a.site, seq=a.next_seq(), sealed_ms=now, measurements=measurements
    )


async def test_implausible_measurements_are_quarantined_with_reasons_and_the_rest_commits(
    pair: Pair,
) -> None:
    a, system = pair.a, pair.system
    batch = _mixed_batch(a, BAD_MEASUREMENTS)
    receipt = await a.send(a.sign(batch))
    assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED, receipt
    assert (receipt.committed, receipt.quarantined) == (2, len(BAD_MEASUREMENTS))
    expected = [(i + 1, reason.value) for i, (_, _, reason) in enumerate(BAD_MEASUREMENTS)]
    assert [(q.index, q.reason) for q in receipt.quarantined_detail] == expected
    assert _quarantine_rows(system, "site-a") == [(batch.seq, i, r) for i, r in expected]
    counts = system.control_plane.store.counts(["site-a"])
    assert (counts.measurements, counts.quarantined) == (2, len(BAD_MEASUREMENTS))
    quarantine_audit = [r for r in audit_records(system) if r["event"] == "quarantine"]
    assert quarantine_audit[-1]["decision"] == "deny"
    assert quarantine_audit[-1]["identity"] == a.uri
    assert quarantine_audit[-1]["reason"] == BAD_MEASUREMENTS[0][2].value
    assert quarantine_audit[-1]["details"]["count"] == len(BAD_MEASUREMENTS)
    await a.commit_honest()
