"""Hostile enrollment and renewal over the real bootstrap and link ports.

Every attempt goes through ``edge_node.credentials.enroll`` (or ``renew``), i.e.
the edge's own client code against the real gRPC listeners. A refusal must be
PERMISSION_DENIED with the stable reason in the error text, audited as a deny,
and must leave nothing behind: no certificate issued, no key enrolled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.embedded import EmbeddedSystem
from edge_node.credentials import EdgeCredentials, EnrollmentError, enroll, renew
from security.clock import ManualClock, SystemClock
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN, default_assets


def audit_records(system: EmbeddedSystem) -> list[dict[str, Any]]:
    path = system.control_plane.audit.path
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def try_enroll(
    system: EmbeddedSystem, tmp_path: Path, site_id: str, token: str
) -> EdgeCredentials:
    return await enroll(
        directory=tmp_path / "edges" / f"{site_id}-{len(list(tmp_path.glob('edges/*')))}",
        site_id=site_id,
        token=token,
        bootstrap_address=system.bootstrap_endpoint,
        bundle_pem=system.control_plane.ca.trust_bundle_pem(),
        trust_domain=TRUST_DOMAIN,
    )


async def assert_enrollment_refused(
    system: EmbeddedSystem, tmp_path: Path, site_id: str, token: str, reason: str
) -> None:
    keys_before = len(system.control_plane.keys.all_keys())
    with pytest.raises(EnrollmentError) as refused:
        await try_enroll(system, tmp_path, site_id, token)
    text = str(refused.value)
    assert text.startswith(f"enrollment refused: PERMISSION_DENIED: {reason}: "), text
    for leak in ("Traceback", "INTERNAL", 'File "', "Exception"):
        assert leak not in text
    cause = refused.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError)
    assert dict(cause.trailing_metadata() or ()).get("gridfort-reason") == reason
    assert len(system.control_plane.keys.all_keys()) == keys_before  # nothing enrolled
    record = audit_records(system)[-1]
    assert (record["event"], record["decision"], record["reason"]) == ("enrollment", "deny", reason)


def register(system: EmbeddedSystem, site_id: str) -> None:
    system.register_site(site_id, default_assets(site_id))


GARBAGE_TOKENS = [
    "",
    "hunter2",
    "gft1_" + "A" * 43,  # well-formed, never issued
    "gft1_" + "A" * 42 + "\u00e9",  # non-ASCII
    "x" * 10_000,
]


async def test_reused_token_is_refused(system: EmbeddedSystem, tmp_path: Path) -> None:
    register(system, "s1")
    token = system.issue_token("s1")
    first = await try_enroll(system, tmp_path, "s1", token)
    assert str(first.spiffe_id) == f"spiffe://{TRUST_DOMAIN}/edge/s1"
    await assert_enrollment_refused(system, tmp_path, "s1", token, "TOKEN_ALREADY_USED")
    # the first enrollment's signing key is still the active one
    active = [k.key_id for k in system.control_plane.keys.all_keys()]
    assert active == [first.signer.key_id]


async def test_token_for_another_site_is_refused_and_stays_usable_for_its_site(
    system: EmbeddedSystem, tmp_path: Path
) -> None:
    register(system, "s1")
    register(system, "s2")
    token = system.issue_token("s1")
    await assert_enrollment_refused(system, tmp_path, "s2", token, "TOKEN_WRONG_SITE")
    creds = await try_enroll(system, tmp_path, "s1", token)
    assert creds.site_id == "s1"


@pytest.mark.parametrize(
    "token", GARBAGE_TOKENS, ids=["empty", "word", "never-issued", "non-ascii", "huge"]
)
async def test_garbage_token_is_refused(system: EmbeddedSystem, tmp_path: Path, token: str) -> None:
    register(system, "s1")
    await assert_enrollment_refused(system, tmp_path, "s1", token, "TOKEN_UNKNOWN")


@pytest.mark.parametrize("site_id", ["ghost", "../s1", "s1/../../etc", "", "a" * 65])
async def test_unknown_or_invalid_site_is_refused(
    system: EmbeddedSystem, tmp_path: Path, site_id: str
) -> None:
    register(system, "s1")
    token = system.issue_token("s1")
    await assert_enrollment_refused(system, tmp_path, site_id, token, "SITE_UNKNOWN")
    assert (await try_enroll(system, tmp_path, "s1", token)).site_id == "s1"  # token not spent


@pytest.fixture
async def manual_system(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedSystem, ManualClock]]:
    """A control plane whose clock only moves when told (tokens age without sleeping)."""
    clock = ManualClock(SystemClock().now_ms())
    sys_ = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, clock=clock, durable_sync=False
    )
    await sys_.start()
    try:
        yield sys_, clock
    finally:
        await sys_.stop()


async def test_expired_token_is_refused(
    manual_system: tuple[EmbeddedSystem, ManualClock], tmp_path: Path
) -> None:
    system, clock = manual_system
    register(system, "s1")
    token = system.issue_token("s1", ttl_s=1)
    clock.advance(1_000)  # expiry is exclusive: at expires_ms the token is dead
    await assert_enrollment_refused(system, tmp_path, "s1", token, "TOKEN_EXPIRED")
    clock.advance(10 * 60_000)  # (the server certificate rotates, ahead of real time, at 30 min)
    await assert_enrollment_refused(system, tmp_path, "s1", token, "TOKEN_EXPIRED")


async def test_renewal_by_a_revoked_identity_is_refused(
    system: EmbeddedSystem, tmp_path: Path
) -> None:
    register(system, "s1")
    creds = await try_enroll(system, tmp_path, "s1", system.issue_token("s1"))
    options = [("grpc.ssl_target_name_override", creds.target_name())]
    async with grpc.aio.secure_channel(
        system.link_endpoints[0], creds.channel_credentials(), options=options
    ) as channel:
        renewed = await renew(creds, channel)  # allowed while not revoked
        assert renewed.certificate.serial_number != 0
    system.control_plane.revocations.revoke(SpiffeId(TRUST_DOMAIN, Role.EDGE, "s1"), "stolen")
    # A fresh channel with the (revoked) renewed certificate, right after the revocation.
    async with grpc.aio.secure_channel(
        system.link_endpoints[0], creds.channel_credentials(), options=options
    ) as channel:
        chain_before = creds.chain_pem
        with pytest.raises(EnrollmentError) as refused:
            await renew(creds, channel)
    text = str(refused.value)
    assert text.startswith("renewal refused: PERMISSION_DENIED: IDENTITY_REVOKED: "), text
    assert creds.chain_pem == chain_before  # nothing new was issued or saved
    denied = [r for r in audit_records(system) if r["decision"] == "deny"]
    assert denied[-1]["reason"] == "IDENTITY_REVOKED"
    assert denied[-1]["identity"] == str(creds.spiffe_id)
    renewals = [r["decision"] for r in audit_records(system) if r["event"] == "renewal"]
    assert renewals.count("allow") == 1
