"""The REST listener serves the control plane's rotating certificate without a restart.

The control plane runs on a clock set 2000 s in the past (so every certificate
it issues is valid in real time, which is what TLS checks); moving that clock
past the server certificate's half-life makes the next handshake get a new
certificate, while a connection opened before keeps working.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from control_plane.embedded import EmbeddedSystem
from security.clock import ManualClock, SystemClock
from security.identity import Role, SpiffeId
from tests.api.conftest import ApiClient, tls_context
from tests.conftest import TRUST_DOMAIN

TTL_S = 3600


@pytest.fixture
async def past_system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    clock = ManualClock(SystemClock().now_ms() - 2_000_000)
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, clock=clock, durable_sync=False,
        workload_ttl_s=TTL_S,
    )  # fmt: skip
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


async def served_serial(url: str, ctx: ssl.SSLContext) -> int:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_server_certificate_rotates_at_half_life(
    past_system: EmbeddedSystem, tmp_path: Path
) -> None:
    cp = past_system.control_plane
    key_pem, issued = cp.ca.issue_with_new_key(
        SpiffeId(TRUST_DOMAIN, Role.SOC, "alice"), ttl_s=TTL_S
    )
    ctx = tls_context(tmp_path / "alice", cp.ca.trust_bundle_pem(), issued.chain_pem, key_pem)
    alice = ApiClient(past_system.api_url, ctx, issued.spiffe_id.uri)
    before = await served_serial(past_system.api_url, ctx)
    async with aiohttp.ClientSession() as session:
        assert (await alice.get("/v1/alerts", session=session)).status == 200
        clock = past_system.clock
        assert isinstance(clock, ManualClock)
        clock.advance((TTL_S // 2 + 100) * 1000)
        after = await served_serial(past_system.api_url, ctx)
        assert after != before
        assert (await alice.get("/v1/alerts")).status == 200  # a new connection, new certificate
        assert (await alice.get("/v1/alerts", session=session)).status == 200  # the old one
