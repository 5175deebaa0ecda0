"""Hostile clients on the real REST API: default deny, strict input, every denial audited.

Handshake-level refusals (no certificate, foreign CA, expired) never reach HTTP
and are audited as ``api_handshake``; everything else gets a JSON refusal
``{"reason", "message"}`` with the status for its reason and one
``api_request`` deny record. After the attacks an honest analyst is served.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from control_plane.embedded import EmbeddedSystem
from security.ca import CertificateAuthority
from security.clock import SystemClock
from security.identity import Role, SpiffeId
from tests.api.conftest import (
    ApiClient,
    Clients,
    EnrollSite,
    api_denials,
    edge_client,
    eventually,
    tls_context,
)
from tests.conftest import TRUST_DOMAIN

HOUR_MS = 3_600_000
SOC_ROUTES = [
    ("GET", "/v1/alerts"),
    ("GET", "/v1/alerts/abc123"),
    ("POST", "/v1/alerts/abc123/ack"),
    ("GET", "/v1/quarantine"),
    ("GET", "/v1/audit/verify"),
]
OPERATOR_ROUTES = [("GET", "/v1/status"), ("GET", "/v1/sites"), ("GET", "/v1/state/s1-bat")]


def raw_get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


# -- handshake -----------------------------------------------------------------------------------


async def test_no_client_certificate_is_refused_in_the_handshake(system: EmbeddedSystem) -> None:
    bare = ApiClient(
        system.api_url, tls_context(Path(), system.control_plane.ca.trust_bundle_pem()), ""
    )
    with pytest.raises(aiohttp.ClientError):
        await bare.get("/v1/status")
    await eventually(
        lambda: any(r["reason"] == "NO_CLIENT_CERT" for r in api_denials(system, "api_handshake"))
    )


async def test_foreign_ca_certificate_is_refused_in_the_handshake(
    system: EmbeddedSystem, tmp_path: Path
) -> None:
    foreign = CertificateAuthority.init(tmp_path / "foreign-ca", TRUST_DOMAIN, SystemClock())
    key_pem, issued = foreign.issue_with_new_key(SpiffeId(TRUST_DOMAIN, Role.SOC, "alice"))
    ctx = tls_context(
        tmp_path / "mallory", system.control_plane.ca.trust_bundle_pem(), issued.chain_pem, key_pem
    )
    with pytest.raises(aiohttp.ClientError):
        await ApiClient(system.api_url, ctx, "").get("/v1/alerts")
    await eventually(
        lambda: any(r["reason"] == "UNTRUSTED_CERT" for r in api_denials(system, "api_handshake"))
    )


async def test_expired_certificate_is_refused_in_the_handshake(
    system: EmbeddedSystem, clients: Clients
) -> None:
    expired = clients(Role.SOC, "alice", ttl_s=60, not_before_ms=system.clock.now_ms() - HOUR_MS)
    with pytest.raises(aiohttp.ClientError):
        await expired.get("/v1/alerts")
    await eventually(
        lambda: any(
            r["reason"] == "CERT_NOT_VALID_NOW" for r in api_denials(system, "api_handshake")
        )
    )


# -- identity and role ---------------------------------------------------------------------------


async def test_edge_certificate_is_forbidden_everywhere(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> None:
    edge = edge_client(system, await enroll_site("s1"), tmp_path / "edge")
    for method, path in [*SOC_ROUTES, *OPERATOR_ROUTES, ("GET", "/v1/openapi.json")]:
        answer = await edge.request(method, path)
        assert (answer.status, answer.reason) == (403, "ROLE_NOT_ALLOWED"), path
    denials = [r for r in api_denials(system) if r["identity"] == edge.identity]
    assert len(denials) == len(SOC_ROUTES) + len(OPERATOR_ROUTES) + 1
    assert {r["reason"] for r in denials} == {"ROLE_NOT_ALLOWED"}


@pytest.mark.parametrize(
    ("role", "routes"), [(Role.OPERATOR, SOC_ROUTES), (Role.SOC, OPERATOR_ROUTES)]
)
async def test_each_role_is_kept_out_of_the_others_routes(
    system: EmbeddedSystem, clients: Clients, role: Role, routes: list[tuple[str, str]]
) -> None:
    client = clients(role, "someone")
    for method, path in routes:
        answer = await client.request(method, path)
        assert (answer.status, answer.reason) == (403, "ROLE_NOT_ALLOWED"), path
        assert answer.json()["message"].startswith(f"role {role.value} may not {method} /v1/")
    assert len(api_denials(system)) == len(routes)


async def test_revoked_soc_certificate_is_refused_on_new_and_open_connections(
    system: EmbeddedSystem, clients: Clients
) -> None:
    alice = clients(Role.SOC, "alice")
    async with aiohttp.ClientSession() as session:
        assert (await alice.get("/v1/alerts", session=session)).status == 200
        system.control_plane.revocations.revoke(SpiffeId.parse(alice.identity), "laptop stolen")
        on_open = await alice.get("/v1/alerts", session=session)  # the same keep-alive connection
    assert (on_open.status, on_open.reason) == (401, "IDENTITY_REVOKED")
    assert on_open.headers["WWW-Authenticate"].startswith("mutual-tls")
    on_new = await alice.get("/v1/alerts")
    assert (on_new.status, on_new.reason) == (401, "IDENTITY_REVOKED")
    revoked = [r for r in api_denials(system) if r["reason"] == "IDENTITY_REVOKED"]
    assert [r["identity"] for r in revoked] == [alice.identity, alice.identity]


# -- malformed requests --------------------------------------------------------------------------


async def test_oversized_body_is_413(system: EmbeddedSystem, clients: Clients) -> None:
    alice = clients(Role.SOC, "alice")
    big = json.dumps({"note": "x" * 20_000}).encode()
    headers = {"Content-Type": "application/json"}
    answer = await alice.request("POST", "/v1/alerts/abc123/ack", body=big, headers=headers)
    assert (answer.status, answer.reason) == (413, "OVERSIZED")

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
        for _ in range(40):
            yield b" " * 1024

    answer = await alice.request("POST", "/v1/alerts/abc123/ack", body=chunks(), headers=headers)
    assert (answer.status, answer.reason) == (413, "OVERSIZED")
    assert [r["details"]["status"] for r in api_denials(system)] == [413, 413]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"note": ', "application/json", 400),
        (b'{"note": "a", "note": "b"}', "application/json", 400),
        (b"note=hi", "application/x-www-form-urlencoded", 415),
        (b'{"note": "x"}', "application/json; charset=latin-1", 415),
        (b"\xff\xfe", "application/json", 400),
    ],
)
async def test_malformed_bodies_are_refused(
    system: EmbeddedSystem, clients: Clients, body: bytes, content_type: str, status: int
) -> None:
    answer = await clients(Role.SOC, "alice").request(
        "POST", "/v1/alerts/abc123/ack", body=body, headers={"Content-Type": content_type}
    )
    assert answer.status == status
    assert set(answer.json()) == {"reason", "message"}


@pytest.mark.parametrize(
    "target",
    [
        "/v1/state/../../etc/passwd",
        "/v1/state/%2e%2e%2fetc%2fpasswd",
        "/v1/state/..%2f..%2fetc",
        "/v1/alerts/abc123/../../status",
        "/v1/state/s1-bat%00",
        "/v1/alerts?status=open&status=acknowledged",
        "/v1/quarantine?limit=100000",
        "/v1/quarantine?site=../x",
        "//v1/alerts",
    ],
)
async def test_path_traversal_and_odd_input_are_400(
    system: EmbeddedSystem, clients: Clients, target: str
) -> None:
    soc = clients(Role.SOC, "alice")
    answer = await soc.raw(raw_get(target))
    assert (answer.status, json.loads(answer.body)["reason"]) == (400, "MALFORMED_REQUEST")
    (denial,) = api_denials(system)
    assert denial["details"]["target"] == target and denial["identity"] == soc.identity


async def test_unknown_route_is_404_and_wrong_method_is_405(
    system: EmbeddedSystem, clients: Clients
) -> None:
    alice = clients(Role.SOC, "alice")
    assert (await alice.get("/v1/secrets")).reason == "NOT_FOUND"
    assert (await alice.get("/")).status == 404
    wrong = await alice.request("DELETE", "/v1/alerts")
    assert (wrong.status, wrong.reason, wrong.headers["Allow"]) == (
        405,
        "METHOD_NOT_ALLOWED",
        "GET",
    )
    head = await alice.request("PUT", "/v1/alerts/abc123/ack")
    assert (head.status, head.headers["Allow"]) == (405, "POST")
    body_on_get = await alice.request("GET", "/v1/alerts", body=b"{}")
    assert (body_on_get.status, body_on_get.reason) == (400, "MALFORMED_REQUEST")
    assert [r["details"]["status"] for r in api_denials(system)] == [404, 404, 405, 405, 400]


async def test_a_broken_store_answers_a_bare_500(system: EmbeddedSystem, clients: Clients) -> None:
    for suffix in ("", "-wal", "-shm"):  # the alert store vanishes under the control plane
        Path(f"{system.control_plane.paths.alerts_db}{suffix}").unlink(missing_ok=True)
    answer = await clients(Role.SOC, "alice").get("/v1/alerts")
    assert (answer.status, answer.reason) == (500, "INTERNAL")
    text = answer.body.decode()
    assert "Traceback" not in text and "sqlite" not in text.lower() and "alerts" not in text
    assert answer.headers["Server"] == "gridfort"
    assert api_denials(system)[-1]["reason"] == "INTERNAL"


# -- floods and the honest analyst ---------------------------------------------------------------


async def test_a_flood_of_denials_is_audited_in_full_but_bounded(
    system: EmbeddedSystem, clients: Clients
) -> None:
    mallory = clients(Role.SOC, "mallory")
    async with aiohttp.ClientSession() as session:
        for _ in range(60):
            assert (await mallory.get("/v1/nope", session=session)).status == 404
    system.control_plane.api.access.flush()  # type: ignore[union-attr]
    written = [r for r in api_denials(system) if r["identity"] == mallory.identity]
    summaries = [
        r
        for r in api_denials(system, "api_requests_suppressed")
        if r["identity"] == mallory.identity
    ]
    assert summaries, "60 denials in a burst must be throttled"
    assert len(written) + sum(r["details"]["count"] for r in summaries) == 60
    # the analyst next door is served and audited normally
    alice = clients(Role.SOC, "alice")
    assert (await alice.get("/v1/alerts")).status == 200
