"""Server limits on a real listener: the request deadline and the connection cap.

A second REST listener with tight limits runs beside the system's own, on the
same live control plane (same identity, CA, revocations, audit log and data),
so the limits are exercised without waiting for the production values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from control_plane.api.rest import RestApi, RestSettings
from control_plane.embedded import EmbeddedSystem
from security.identity import Role
from security.refusals import ConfigError
from tests.api.conftest import ApiClient, Clients, api_denials, eventually, read_answer


@pytest.fixture
async def tight(system: EmbeddedSystem) -> AsyncIterator[RestApi]:
    cp = system.control_plane
    assert cp.api is not None
    api = RestApi(
        RestSettings("127.0.0.1:0", request_timeout_s=0.3, max_connections=1),
        identity=cp.server_identity,
        trust_bundle_pem=cp.ca.trust_bundle_pem(),
        trust_domain=cp.config.trust_domain,
        revocations=cp.revocations,
        audit=cp.audit,
        clock=cp.clock,
        operations=cp.api.operations,
    )
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_a_request_that_outlasts_its_deadline_is_503(
    system: EmbeddedSystem, clients: Clients, tight: RestApi
) -> None:
    alice = clients(Role.SOC, "alice")
    host, port = "127.0.0.1", tight.port
    reader, writer = await asyncio.open_connection(host, port, ssl=alice.ctx)
    try:  # promise 100 bytes of body, send one, then stall
        writer.write(
            b"POST /v1/alerts/abc123/ack HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        answer = await read_answer(reader)
    finally:
        writer.close()
    assert (answer.status, answer.reason) == (503, "UNAVAILABLE")
    assert answer.headers["Connection"] == "close"
    assert api_denials(system)[-1]["reason"] == "UNAVAILABLE"


async def test_connections_over_the_cap_are_closed_and_audited(
    system: EmbeddedSystem, clients: Clients, tight: RestApi
) -> None:
    alice = clients(Role.SOC, "alice")
    first = ApiClient(f"https://127.0.0.1:{tight.port}", alice.ctx, alice.identity)
    _r1, w1 = await asyncio.open_connection("127.0.0.1", tight.port, ssl=alice.ctx)
    try:
        w1.write(b"GET /v1/alerts HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
        await w1.drain()
        await eventually(lambda: len(tight._runner.server.connections) == 1)  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", tight.port, ssl=alice.ctx)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing served
        finally:
            writer.close()
    finally:
        w1.close()
    await eventually(
        lambda: any(r["reason"] == "UNAVAILABLE" for r in api_denials(system, "api_connection"))
    )
    await eventually(lambda: len(tight._runner.server.connections) == 0)  # type: ignore[union-attr]
    assert (await first.get("/v1/alerts")).status == 200  # room again


async def test_a_taken_port_is_a_config_error_naming_the_field(system: EmbeddedSystem) -> None:
    cp = system.control_plane
    assert cp.api is not None
    taken = RestApi(
        RestSettings(f"127.0.0.1:{cp.api_port}"),
        identity=cp.server_identity,
        trust_bundle_pem=cp.ca.trust_bundle_pem(),
        trust_domain=cp.config.trust_domain,
        revocations=cp.revocations,
        audit=cp.audit,
        clock=cp.clock,
        operations=cp.api.operations,
    )
    with pytest.raises(ConfigError, match=r"api_address 127\.0\.0\.1:\d+: cannot listen"):
        await taken.start()
    await taken.stop()
