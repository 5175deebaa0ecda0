"""Hostile TLS peers on the real EdgeLink port: who may not even open a stream.

Each test runs the real control plane on loopback (the ``system`` fixture) and
attacks it with a raw mutual-TLS client (:class:`RawLink`) or a bare TCP socket.
Handshake-level refusals (no certificate, foreign CA, expired) never reach the
application; identity-level refusals (wrong role, revoked, too many streams)
end the call with a gRPC status and the stable reason in the trailing metadata
``gridfort-reason``. After every attack an honest site is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.embedded import EmbeddedSystem
from control_plane.tls_identity import control_plane_dns_name
from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from security.ca import CertificateAuthority
from security.clock import SystemClock
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN
from tests.e2e.raw_link import RawLink, make_batch, sign_batch

EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]

STATUS_TIMEOUT_S = 5.0
HOUR_MS = 3_600_000


# -- helpers -------------------------------------------------------------------------------------


class Edge:
    """An enrolled site and its next telemetry sequence number."""

    def __init__(self, system: EmbeddedSystem, creds: EdgeCredentials) -> None:
        self.system = system
        self.creds = creds
        self.seq = creds.next_seq

    def link(self, endpoint: int = 0) -> RawLink:
        return RawLink.for_edge(self.system.link_endpoints[endpoint], self.creds)

    async def commit_one(self, link: RawLink) -> None:
        """Send one honest batch and require it to be COMMITTED."""
        now = self.system.clock.now_ms()
        seq, self.seq = self.seq, self.seq + 1
        await link.send_envelope(
            sign_batch(self.creds.signer, make_batch(self.creds.site_id, seq, now), now)
        )
        receipt = await link.recv_receipt()
        assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED, receipt
        assert receipt.seq == seq


def foreign_link(system: EmbeddedSystem, key_pem: bytes | None, chain_pem: bytes | None) -> RawLink:
    """A raw client that trusts our server but presents the given client credentials."""
    cp = system.control_plane
    return RawLink(
        system.link_endpoints[0],
        key_pem=key_pem,
        chain_pem=chain_pem,
        bundle_pem=cp.ca.trust_bundle_pem(),
        target_name=control_plane_dns_name(TRUST_DOMAIN),
    )


async def try_send_batch(link: RawLink, creds: EdgeCredentials, seq: int) -> None:
    """Write a validly signed batch of ``creds``' site if the call still accepts writes.

    A refused call may already be over; the batch must never be committed.
    """
    now = int(time.time() * 1000)
    env = sign_batch(creds.signer, make_batch(creds.site_id, seq, now), now)
    data = lpb.EdgeMessage(telemetry=env).SerializeToString()
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await asyncio.wait_for(link.send_bytes(data), STATUS_TIMEOUT_S)


async def final_status(link: RawLink) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Drain the call and return (code, details, trailing metadata) once it has ended."""
    with contextlib.suppress(grpc.aio.AioRpcError, EOFError):
        while True:  # anything received before the end must not be a receipt of commit
            message = await link.recv(STATUS_TIMEOUT_S)
            if message.WhichOneof("kind") == "receipt":
                receipt = lpb.BatchReceipt.FromString(message.receipt.payload)
                assert receipt.status != lpb.RECEIPT_STATUS_COMMITTED, receipt
    code = await asyncio.wait_for(link.call.code(), STATUS_TIMEOUT_S)
    details = await link.call.details() or ""
    trailing = await link.call.trailing_metadata()
    metadata = {k: v for k, v in (trailing or ()) if isinstance(v, str)}
    return code, details, metadata


def audit_records(system: EmbeddedSystem) -> list[dict[str, Any]]:
    path: Path = system.control_plane.audit.path
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def denials(system: EmbeddedSystem, reason: str, event: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(system)
        if r["decision"] == "deny" and r["reason"] == reason and event in (None, r["event"])
    ]


def assert_no_internals(text: str) -> None:
    for leak in ("Traceback", "INTERNAL", 'File "', "Exception", "Error("):
        assert leak not in text, text


@pytest.fixture
async def honest(system: EmbeddedSystem, enroll_site: EnrollSite) -> Edge:
    return Edge(system, await enroll_site("honest"))


# -- handshake-level refusals --------------------------------------------------------------------


async def _handshake_is_refused(system: EmbeddedSystem, honest: Edge, link: RawLink) -> None:
    """The call fails before any application byte is exchanged; the honest site is still served.

    The attacker even holds the honest site's envelope-signing key: TLS alone stops it.
    """
    try:
        await try_send_batch(link, honest.creds, honest.seq)
        code, details, metadata = await final_status(link)
    finally:
        await link.close()
    # The TLS handshake failed: the client sees a transport failure, never a server message.
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), (code, details)
    assert "gridfort-reason" not in metadata
    assert system.control_plane.streams.all() == []
    assert system.control_plane.store.counts(["honest"]).batches == 0
    good = honest.link()
    try:
        await honest.commit_one(good)
    finally:
        await good.close()


async def test_client_without_certificate_is_refused_at_handshake(
    system: EmbeddedSystem, honest: Edge
) -> None:
    await _handshake_is_refused(system, honest, foreign_link(system, None, None))


async def test_certificate_from_a_foreign_ca_is_refused_at_handshake(
    system: EmbeddedSystem, honest: Edge, tmp_path: Path
) -> None:
    # Same trust domain, same SPIFFE ID as the honest site: only the issuer differs.
    rogue = CertificateAuthority.init(tmp_path / "rogue-ca", TRUST_DOMAIN, SystemClock())
    key_pem, issued = rogue.issue_with_new_key(SpiffeId(TRUST_DOMAIN, Role.EDGE, "honest"))
    await _handshake_is_refused(system, honest, foreign_link(system, key_pem, issued.chain_pem))


@pytest.mark.parametrize(
    ("start_offset_ms", "ttl_s"),
    [(-2 * HOUR_MS, 60), (HOUR_MS, 3600)],
    ids=["expired", "not-yet-valid"],
)
async def test_certificate_outside_its_validity_is_refused_at_handshake(
    system: EmbeddedSystem, honest: Edge, start_offset_ms: int, ttl_s: int
) -> None:
    ca = system.control_plane.ca
    key_pem, issued = ca.issue_with_new_key(
        SpiffeId(TRUST_DOMAIN, Role.EDGE, "honest"),
        ttl_s=ttl_s,
        not_before_ms=system.clock.now_ms() + start_offset_ms,
    )
    await _handshake_is_refused(system, honest, foreign_link(system, key_pem, issued.chain_pem))


# -- identity-level refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.SOC, Role.CONTROL_PLANE])
async def test_valid_identity_of_another_role_may_not_open_an_edge_link(
    system: EmbeddedSystem, honest: Edge, role: Role
) -> None:
    key_pem, issued = system.control_plane.ca.issue_with_new_key(
        SpiffeId(TRUST_DOMAIN, role, "mallory")
    )
    link = foreign_link(system, key_pem, issued.chain_pem)
    try:
        await try_send_batch(link, honest.creds, honest.seq)
        code, details, metadata = await final_status(link)
    finally:
        await link.close()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert metadata.get("gridfort-reason") == "ROLE_NOT_ALLOWED"
    assert details.startswith("ROLE_NOT_ALLOWED: ")
    assert_no_internals(details)
    record = denials(system, "ROLE_NOT_ALLOWED", "authenticate")[-1]
    assert record["identity"] == f"spiffe://{TRUST_DOMAIN}/{role.value}/mallory"
    good = honest.link()
    try:
        await honest.commit_one(good)
    finally:
        await good.close()


async def test_revoked_identity_is_refused_on_a_new_connection(
    system: EmbeddedSystem, honest: Edge, enroll_site: EnrollSite
) -> None:
    creds = await enroll_site("victim")
    system.control_plane.revocations.revoke(creds.spiffe_id, "gateway stolen")
    # No pause: the very next connection must already be refused, and nothing it sends counts.
    link = RawLink.for_edge(system.link_endpoints[0], creds)
    try:
        await try_send_batch(link, creds, creds.next_seq)
        code, details, metadata = await final_status(link)
    finally:
        await link.close()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert metadata.get("gridfort-reason") == "IDENTITY_REVOKED"
    assert_no_internals(details)
    assert system.control_plane.store.counts(["victim"]).batches == 0
    assert any(r["identity"] == str(creds.spiffe_id) for r in denials(system, "IDENTITY_REVOKED"))
    good = honest.link()
    try:
        await honest.commit_one(good)
    finally:
        await good.close()


async def test_revocation_closes_an_already_open_stream(
    system: EmbeddedSystem, honest: Edge, enroll_site: EnrollSite
) -> None:
    victim = Edge(system, await enroll_site("victim"))
    link = victim.link()
    good = honest.link()
    try:
        await victim.commit_one(link)
        await honest.commit_one(good)
        started = time.monotonic()
        system.control_plane.revocations.revoke(victim.creds.spiffe_id, "gateway stolen")
        code, details, metadata = await final_status(link)
        elapsed_s = time.monotonic() - started
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert metadata.get("gridfort-reason") == "IDENTITY_REVOKED"
        assert elapsed_s < 5.0
        assert_no_internals(details)
        closed = denials(system, "IDENTITY_REVOKED", "stream_closed")
        assert [r["identity"] for r in closed] == [str(victim.creds.spiffe_id)]
        await honest.commit_one(good)  # another site's open stream is untouched
    finally:
        await link.close()
        await good.close()
    assert system.control_plane.store.counts(["victim"]).batches == 1


async def test_stream_flood_from_one_identity_is_refused_while_the_honest_stream_works(
    system: EmbeddedSystem, honest: Edge
) -> None:
    limit = 2  # GrpcSettings.max_streams_per_identity (the default; not configurable)
    first = honest.link()
    second = honest.link(endpoint=1)  # the limit spans every listener and connection
    flood: list[RawLink] = []
    try:
        await honest.commit_one(first)
        await honest.commit_one(second)
        for _ in range(3):
            extra = honest.link()
            flood.append(extra)
            await try_send_batch(extra, honest.creds, 10_000)
            code, details, metadata = await final_status(extra)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert metadata.get("gridfort-reason") == "TOO_MANY_STREAMS"
            assert_no_internals(details)
            await honest.commit_one(first)
        assert len(system.control_plane.streams.all()) == limit
        assert len(denials(system, "TOO_MANY_STREAMS", "connect")) == 3
        # closing one honest stream frees its slot
        await second.close()
        for _ in range(50):
            if len(system.control_plane.streams.all()) < limit:
                break
            await asyncio.sleep(0.05)
        replacement = honest.link()
        flood.append(replacement)
        await honest.commit_one(replacement)
    finally:
        for link in (first, second, *flood):
            await link.close()
    assert system.control_plane.store.sequences("honest") == list(range(1, 7))


async def test_idle_tcp_connections_do_not_block_others_and_are_closed_by_the_handshake_timeout(
    system: EmbeddedSystem, honest: Edge
) -> None:
    """Slowloris: TCP connections that never start TLS (handshake timeout 5 s, not configurable)."""
    port = system.control_plane.link_ports[0]
    idle = [
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), STATUS_TIMEOUT_S)
        for _ in range(16)
    ]
    started = time.monotonic()
    try:
        good = honest.link()
        try:
            await honest.commit_one(good)  # served while 16 idle sockets hang around
        finally:
            await good.close()

        async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
            return await asyncio.wait_for(reader.read(1024), 12.0)

        leftovers = await asyncio.gather(*(closed_by_server(r) for r, _ in idle))
        elapsed_s = time.monotonic() - started
    finally:
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    assert leftovers == [b""] * len(idle)  # EOF: the server hung up, it sent nothing
    assert 3.0 <= elapsed_s < 12.0
