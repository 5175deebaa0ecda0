"""Property tests: untrusted bytes and field values never crash a decoder or a stage.

Whatever a peer sends, each function either returns its result or a
``Refusal`` carrying a stable ``Reason`` -- never an exception. The objects
are the real ones (SQLite registry, key registry, replay guard, telemetry
store, audit log), built once per module in a temporary state directory.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.assets.model import Asset, AssetKind, channel_bounds
from control_plane.assets.registry import AssetRegistry
from control_plane.commands.command_log import CommandLog
from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.stages.validate import ValidationPolicy, validate
from control_plane.ingest.stages.verify import verify
from control_plane.ingest.types import (
    AuthorizedBatch,
    Duplicate,
    Peer,
    ValidatedBatch,
    VerifiedBatch,
)
from control_plane.store.telemetry_store import TelemetryStore
from control_plane.transports.grpc_server import EdgeLinkService, GrpcSettings
from control_plane.transports.streams import EdgeStream, StreamRegistry
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.envelope import EnvelopeSigner, decode_envelope
from security.identity import Role, SpiffeId
from security.refusals import Reason, Refusal
from security.replay_guard import ReplayGuard, ReplayPolicy
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry

DOMAIN = "gridfort.test"
SITE = "s1"
EDGE = SpiffeId(DOMAIN, Role.EDGE, SITE)
MAX_BYTES = 4096

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)  # protobuf strings are UTF-8
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ASSETS = [
    Asset(f"{SITE}-pv", SITE, AssetKind.PV_INVERTER, rated_p_kw=10.0),
    Asset(f"{SITE}-bat", SITE, AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0),
    Asset(f"{SITE}-ev", SITE, AssetKind.EV_CHARGER, rated_p_kw=11.0, e_kwh=60.0),
]


@dataclass
class World:
    pipeline: IngestPipeline
    link: EdgeLinkService
    stream: EdgeStream
    signer: EnvelopeSigner  # the edge's enrolled key
    peer: Peer
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("fuzz-state")
    clock = SystemClock()
    audit = AuditLog(root / "audit.jsonl", clock)
    registry = AssetRegistry(root / "registry.db")
    registry.add_site(SITE, clock.now_ms())
    registry.add_assets(ASSETS)
    keys = SigningKeyRegistry(root / "registry.db")
    edge_key = Ed25519PrivateKey.generate()
    signer = EnvelopeSigner(edge_key, str(EDGE))
    keys.enroll(EDGE, signer.public_key_raw, clock.now_ms())
    store = TelemetryStore(root / "telemetry.db", clock, synchronous="NORMAL")
    pipeline = IngestPipeline(
        trust_domain=DOMAIN,
        registry=registry,
        keys=keys,
        revocations=RevocationList(root / "registry.db", clock),
        store=store,
        audit=audit,
        clock=clock,
    )
    streams = StreamRegistry()
    command_log = CommandLog(root / "commands.db")
    cp_signer = EnvelopeSigner(Ed25519PrivateKey.generate(), f"spiffe://{DOMAIN}/control-plane/cp")
    dispatcher = CommandDispatcher(
        signer=cp_signer,
        trust_domain=DOMAIN,
        log=command_log,
        streams=streams,
        audit=audit,
        clock=clock,
    )
    now = clock.now_ms()
    peer = Peer(EDGE, cert_serial=1, not_before_ms=now - 60_000, not_after_ms=now + 3_600_000)
    stream = streams.open(peer, now)
    assert isinstance(stream, EdgeStream)
    link = EdgeLinkService(pipeline, streams, dispatcher, cp_signer, clock, GrpcSettings())
    loop = asyncio.new_event_loop()
    try:
        yield World(pipeline, link, stream, signer, peer, loop)
    finally:
        loop.close()
        store.close()
        command_log.close()
        registry.close()
        audit.close()


def drain(stream: EdgeStream) -> list[lpb.ControlMessage]:
    out = []
    while not stream.outbox.empty():
        out.append(stream.outbox.get_nowait())
    return out


# -- raw bytes -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2 * MAX_BYTES))
def test_decode_envelope_never_raises_on_random_bytes(data: bytes) -> None:
    result = decode_envelope(data, max_bytes=MAX_BYTES)
    if isinstance(result, Refusal):
        assert result.reason in (Reason.OVERSIZED, Reason.MALFORMED_ENVELOPE)
    else:
        assert isinstance(result, epb.SignedEnvelope)
        assert len(data) <= MAX_BYTES
        assert len(result.signature) == 64 and len(result.key_id) == 32
        assert result.payload_type != 0 and result.signed_ms > 0


def _envelope_fields() -> st.SearchStrategy[epb.SignedEnvelope]:
    return st.builds(
        epb.SignedEnvelope,
        payload_type=INT32,
        payload=st.binary(max_size=256),
        signer=TEXT,
        key_id=st.one_of(TEXT, st.text("0123456789abcdef", min_size=32, max_size=32)),
        signed_ms=INT64,
        signature=st.one_of(st.binary(max_size=80), st.binary(min_size=64, max_size=64)),
    )


@FUZZ
@given(envelope=_envelope_fields(), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_decode_envelope_never_raises_on_mangled_envelopes(
    envelope: epb.SignedEnvelope, cut: int, flip: int
) -> None:
    data = bytearray(envelope.SerializeToString())
    if data:
        data[flip % len(data)] ^= 0x5A
    result = decode_envelope(bytes(data[: len(data) - cut % (len(data) + 1)]), max_bytes=MAX_BYTES)
    assert isinstance(result, epb.SignedEnvelope | Refusal)
    if isinstance(result, Refusal):
        assert isinstance(result.reason, Reason)


def _edge_message_bytes() -> st.SearchStrategy[bytes]:
    structured = st.one_of(
        _envelope_fields().map(lambda e: lpb.EdgeMessage(telemetry=e)),
        _envelope_fields().map(lambda e: lpb.EdgeMessage(command_result=e)),
        INT64.map(lambda t: lpb.EdgeMessage(heartbeat=lpb.Heartbeat(sent_ms=t))),
    ).map(lambda m: m.SerializeToString())
    nested_groups = st.integers(1, 5000).map(lambda n: b"\x0b" * n)
    return st.one_of(st.binary(max_size=512), structured, nested_groups)


@FUZZ
@given(data=_edge_message_bytes(), flip=st.integers(0, 600))
def test_edge_message_parsing_as_the_server_does_it_never_raises(
    world: World, data: bytes, flip: int
) -> None:
    mangled = bytearray(data)
    if mangled and flip < 300:
        mangled[flip % len(mangled)] ^= 0xA5
    drain(world.stream)
    message = world.link._parse(world.stream, bytes(mangled))
    answers = drain(world.stream)
    if message is None:  # refused: exactly one signed receipt, on this stream, with a reason
        assert len(answers) == 1
        receipt = lpb.BatchReceipt.FromString(answers[0].receipt.payload)
        assert receipt.status == lpb.RECEIPT_STATUS_REFUSED
        assert receipt.reason in (Reason.MALFORMED_ENVELOPE.value, Reason.OVERSIZED.value)
    else:
        assert answers == []
        assert message.WhichOneof("kind") in ("telemetry", "command_result", "heartbeat")


# -- field values through the stages ---------------------------------------------------------------


def _measurements() -> st.SearchStrategy[tpb.Measurement]:
    return st.builds(
        tpb.Measurement,
        asset_id=st.sampled_from([a.asset_id for a in ASSETS]),
        quantity=st.one_of(st.integers(0, 12), INT32),
        unit=st.one_of(st.integers(0, 10), INT32),
        value=ANY_FLOAT,
        ts_ms=st.one_of(
            INT64, st.integers(-1_000_000, 1_000_000).map(lambda d: 1_800_000_000_000 + d)
        ),
    )


@FUZZ
@given(
    measurements=st.lists(_measurements(), max_size=20),
    sealed_ms=st.one_of(INT64, st.just(1_800_000_000_000)),
    seq=UINT64,
)
def test_validate_never_raises_and_judges_every_measurement(
    world: World, measurements: list[tpb.Measurement], sealed_ms: int, seq: int
) -> None:
    batch = tpb.TelemetryBatch(
        site_id=SITE, seq=seq, sealed_ms=sealed_ms, measurements=measurements
    )
    envelope = epb.SignedEnvelope(payload=batch.SerializeToString())
    verified = VerifiedBatch(world.peer, envelope, batch, b"\0" * 32, 0)
    authorized = AuthorizedBatch(verified, {a.asset_id: a for a in ASSETS})
    result = validate(authorized, ValidationPolicy())
    if isinstance(result, Refusal):
        assert result.reason is Reason.EMPTY_BATCH and not measurements
        return
    assert isinstance(result, ValidatedBatch)
    judged = sorted([*result.accepted_index, *(q.index for q in result.quarantined)])
    assert judged == list(range(len(measurements)))
    bounds = {a.asset_id: channel_bounds(a) for a in ASSETS}
    for asset_id, quantity, _ts, value in result.accepted:
        low, high = bounds[asset_id][quantity]
        assert math.isfinite(value) and low <= value <= high
    for q in result.quarantined:
        assert isinstance(q.reason, Reason)


@FUZZ
@given(envelope=_envelope_fields(), now_ms=INT64)
def test_verify_never_raises_on_random_envelope_fields(
    world: World, envelope: epb.SignedEnvelope, now_ms: int
) -> None:
    guard = ReplayGuard(ReplayPolicy(), {}, lambda _site, _seq: None)
    result = verify(envelope, world.peer, keys=world.pipeline.keys, guard=guard, now_ms=now_ms)
    assert isinstance(result, Refusal), result  # no random signature verifies
    assert isinstance(result.reason, Reason)


@FUZZ
@given(
    site_id=st.one_of(st.just(SITE), TEXT),
    seq=st.one_of(UINT64, st.integers(0, 5)),
    sealed_ms=INT64,
    signed_ms=st.one_of(INT64, st.integers(-60_000, 60_000)),
    measurements=st.lists(_measurements(), max_size=5),
    now_ms=st.one_of(INT64, st.just(1_800_000_000_000)),
)
def test_verify_never_raises_on_validly_signed_random_batches(
    world: World,
    site_id: str,
    seq: int,
    sealed_ms: int,
    signed_ms: int,
    measurements: list[tpb.Measurement],
    now_ms: int,
) -> None:
    batch = tpb.TelemetryBatch(
        site_id=site_id, seq=seq, sealed_ms=sealed_ms, measurements=measurements
    )
    signed = signed_ms if abs(signed_ms) > 60_000 else now_ms + signed_ms  # often fresh
    if not -(2**63) <= signed < 2**63:
        signed = now_ms
    envelope = world.signer.sign(
        epb.PAYLOAD_TYPE_TELEMETRY_BATCH, batch.SerializeToString(), signed
    )
    guard = ReplayGuard(ReplayPolicy(), {SITE: 2}, lambda _site, _seq: None)
    result = verify(envelope, world.peer, keys=world.pipeline.keys, guard=guard, now_ms=now_ms)
    assert isinstance(result, VerifiedBatch | Duplicate | Refusal)
    if isinstance(result, VerifiedBatch):
        assert result.batch.site_id == SITE and 2 < result.batch.seq < 2**63
    if isinstance(result, Refusal):
        assert isinstance(result.reason, Reason)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq_offset=st.one_of(st.integers(-3, 3), UINT64),
    measurements=st.lists(_measurements(), max_size=6),
    resend=st.booleans(),
)
def test_whole_pipeline_answers_every_signed_batch_with_a_receipt(
    world: World, seq_offset: int, measurements: list[tpb.Measurement], resend: bool
) -> None:
    """Validly signed random batches through ``IngestPipeline.ingest`` and the real store.

    The answer is always COMMITTED, DUPLICATE or REFUSED for a hostile-input
    reason -- never UNAVAILABLE/INTERNAL (which would mean the store choked on
    what validation let through) and never a hang.
    """
    pipeline = world.pipeline
    now = SystemClock().now_ms()
    hwm = pipeline.guard.high_water_mark(SITE)
    seq = hwm + seq_offset if seq_offset <= 3 else seq_offset
    if not 0 <= seq < 2**64:
        seq = hwm + 1
    batch = tpb.TelemetryBatch(site_id=SITE, seq=seq, sealed_ms=now, measurements=measurements)
    envelope = world.signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, batch.SerializeToString(), now)

    async def ingest() -> list[int | str]:
        out: list[int | str] = []
        for _ in range(2 if resend else 1):
            result = await asyncio.wait_for(pipeline.ingest(world.peer, envelope), 5.0)
            out.append(result.reason.value if result.reason else result.status)
        return out

    outcomes = world.loop.run_until_complete(ingest())
    for outcome in outcomes:
        assert outcome not in (Reason.UNAVAILABLE.value, Reason.INTERNAL.value), outcomes
    if outcomes[0] == lpb.RECEIPT_STATUS_COMMITTED and resend:
        assert outcomes[1] == lpb.RECEIPT_STATUS_DUPLICATE
