"""Enrollment and renewal: the order of checks, token burning, revocation, and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from security.audit_log import AuditLog, verify_audit_log
from security.bootstrap_tokens import BootstrapTokens
from security.ca import CertificateAuthority, generate_private_key, make_csr
from security.clock import ManualClock
from security.enrollment import EnrollmentAuthority
from security.identity import Role, SpiffeId, spiffe_id_from_certificate
from security.refusals import Reason, RefusedError
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry

T0_MS = 1_900_000_000_000
DOMAIN = "grid.example"
SITE_1 = SpiffeId(DOMAIN, Role.EDGE, "site-1")
SITES = {"site-1", "site-2"}


@dataclass
class World:
    clock: ManualClock
    ca: CertificateAuthority
    tokens: BootstrapTokens
    keys: SigningKeyRegistry
    revocations: RevocationList
    audit: AuditLog
    authority: EnrollmentAuthority
    audit_path: Path

    def audit_records(self) -> list[dict[str, object]]:
        lines = self.audit_path.read_bytes().split(b"\n")[1:-1]  # skip genesis
        return [json.loads(line) for line in lines]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(T0_MS)
    ca = CertificateAuthority.init(tmp_path / "ca", DOMAIN, clock)
    tokens = BootstrapTokens(tmp_path / "state.db", clock)
    keys = SigningKeyRegistry(tmp_path / "state.db")
    revocations = RevocationList(tmp_path / "state.db", clock)
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    authority = EnrollmentAuthority(
        ca, tokens, keys, revocations, audit, SITES.__contains__, clock, workload_ttl_s=600
    )
    yield World(clock, ca, tokens, keys, revocations, audit, authority, tmp_path / "audit.jsonl")
    audit.close()


def _signing_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def _csr() -> bytes:
    return make_csr(generate_private_key())


def _refused(call: object, *args: object, **kwargs: object) -> RefusedError:
    assert callable(call)
    with pytest.raises(RefusedError) as info:
        call(*args, **kwargs)
    return info.value


def _assert_last_audit(world: World, decision: str, reason: str, event: str = "enrollment") -> None:
    last = world.audit_records()[-1]
    assert (last["event"], last["decision"], last["reason"]) == (event, decision, reason)


# -- enrollment ----------------------------------------------------------------------------------


def test_enrollment_issues_identity_and_enrolls_signing_key(world: World) -> None:
    token = world.tokens.issue("site-1")
    tls_key = generate_private_key()
    signing_key = _signing_key()
    result = world.authority.enroll("site-1", token, make_csr(tls_key), signing_key)

    assert result.spiffe_id == SITE_1
    assert result.trust_bundle_pem == world.ca.trust_bundle_pem()
    chain = x509.load_pem_x509_certificates(result.chain_pem)
    assert len(chain) == 2 and chain[1] == world.ca.issuing_certificate
    leaf = chain[0]
    assert spiffe_id_from_certificate(leaf) == SITE_1
    assert leaf.public_key() == tls_key.public_key()
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 600
    enrolled = world.keys.lookup(result.signing_key_id)
    assert enrolled is not None and enrolled.spiffe_id == SITE_1
    assert enrolled.public_key.public_bytes_raw() == signing_key

    (record,) = world.audit_records()
    assert (record["event"], record["decision"], record["identity"]) == (
        "enrollment",
        "allow",
        SITE_1.uri,
    )
    assert record["details"]["signing_key_id"] == result.signing_key_id  # type: ignore[index]
    assert verify_audit_log(world.audit_path).ok


def test_reused_token_is_refused(world: World) -> None:
    token = world.tokens.issue("site-1")
    world.authority.enroll("site-1", token, _csr(), _signing_key())
    err = _refused(world.authority.enroll, "site-1", token, _csr(), _signing_key())
    assert err.refusal.reason is Reason.TOKEN_ALREADY_USED
    assert err.refusal.identity == SITE_1.uri
    _assert_last_audit(world, "deny", "TOKEN_ALREADY_USED")


def test_expired_token_is_refused(world: World) -> None:
    token = world.tokens.issue("site-1", ttl_s=60)
    world.clock.advance(61_000)
    err = _refused(world.authority.enroll, "site-1", token, _csr(), _signing_key())
    assert err.refusal.reason is Reason.TOKEN_EXPIRED
    _assert_last_audit(world, "deny", "TOKEN_EXPIRED")


def test_token_for_wrong_site_is_refused_and_not_burned(world: World) -> None:
    token = world.tokens.issue("site-1")
    err = _refused(world.authority.enroll, "site-2", token, _csr(), _signing_key())
    assert err.refusal.reason is Reason.TOKEN_WRONG_SITE
    _assert_last_audit(world, "deny", "TOKEN_WRONG_SITE")
    world.authority.enroll("site-1", token, _csr(), _signing_key())


def test_unknown_token_is_refused(world: World) -> None:
    err = _refused(world.authority.enroll, "site-1", "gft1_" + "A" * 43, _csr(), _signing_key())
    assert err.refusal.reason is Reason.TOKEN_UNKNOWN
    _assert_last_audit(world, "deny", "TOKEN_UNKNOWN")


@pytest.mark.parametrize("site_id", ["site-9", "../site-1", "", "site 1", "x" * 100])
def test_unknown_or_malformed_site_is_refused_before_the_token(world: World, site_id: str) -> None:
    token = world.tokens.issue("site-1")
    err = _refused(world.authority.enroll, site_id, token, _csr(), _signing_key())
    assert err.refusal.reason is Reason.SITE_UNKNOWN
    _assert_last_audit(world, "deny", "SITE_UNKNOWN")
    world.tokens.check(token, "site-1")  # not burned


def test_csr_with_bad_signature_is_refused(world: World) -> None:
    token = world.tokens.issue("site-1")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aaaa")]))
        .sign(generate_private_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
        .replace(b"aaaa", b"bbbb")
    )
    err = _refused(world.authority.enroll, "site-1", token, csr, _signing_key())
    assert err.refusal.reason is Reason.CSR_INVALID
    assert err.refusal.identity == SITE_1.uri
    _assert_last_audit(world, "deny", "CSR_INVALID")
    world.tokens.check(token, "site-1")  # a malformed request does not burn the token


def test_rsa_csr_is_refused(world: World) -> None:
    token = world.tokens.issue("site-1")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    err = _refused(world.authority.enroll, "site-1", token, make_csr(rsa_key), _signing_key())
    assert err.refusal.reason is Reason.CSR_INVALID
    assert "RSA" in err.refusal.message
    world.tokens.check(token, "site-1")


@pytest.mark.parametrize(
    ("signing_key", "message"),
    [
        (b"\x01" * 31, "32 raw Ed25519 bytes"),
        (bytes([1]) + bytes(31), "not a valid Ed25519 point"),
    ],
    ids=["short", "small-order"],
)
def test_malformed_signing_key_is_refused_without_burning_the_token(
    world: World, signing_key: bytes, message: str
) -> None:
    token = world.tokens.issue("site-1")
    err = _refused(world.authority.enroll, "site-1", token, _csr(), signing_key)
    assert err.refusal.reason is Reason.CSR_INVALID
    assert message in err.refusal.message
    world.authority.enroll("site-1", token, _csr(), _signing_key())


def test_signing_key_of_another_site_is_refused(world: World) -> None:
    stolen = _signing_key()
    world.authority.enroll("site-2", world.tokens.issue("site-2"), _csr(), stolen)
    token = world.tokens.issue("site-1")
    err = _refused(world.authority.enroll, "site-1", token, _csr(), stolen)
    assert err.refusal.reason is Reason.CSR_INVALID
    assert "another identity" in err.refusal.message
    world.tokens.check(token, "site-1")


def test_csr_asking_for_another_identity_gets_only_its_own(world: World) -> None:
    key = generate_private_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cp-0")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{DOMAIN}/control-plane/cp-0")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    result = world.authority.enroll("site-1", world.tokens.issue("site-1"), greedy, _signing_key())
    leaf = x509.load_pem_x509_certificates(result.chain_pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(SITE_1.uri)]


def test_tokens_never_reach_the_audit_log(world: World) -> None:
    token = world.tokens.issue("site-1")
    _refused(world.authority.enroll, "site-2", token, _csr(), _signing_key())
    _refused(world.authority.enroll, "site-1", token, b"junk", _signing_key())
    world.authority.enroll("site-1", token, _csr(), _signing_key())
    text = world.audit_path.read_text()
    assert token not in text and token[5:] not in text
    decisions = [(r["decision"], r["reason"]) for r in world.audit_records()]
    assert decisions == [("deny", "TOKEN_WRONG_SITE"), ("deny", "CSR_INVALID"), ("allow", "")]


def test_internal_errors_are_audited_and_raised(world: World) -> None:
    def broken(site_id: str) -> bool:
        raise RuntimeError("registry down")

    authority = EnrollmentAuthority(
        world.ca, world.tokens, world.keys, world.revocations, world.audit, broken, world.clock
    )
    with pytest.raises(RuntimeError):
        authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    _assert_last_audit(world, "deny", "INTERNAL")
    assert "registry down" not in world.audit_path.read_text()


# -- revocation and re-enrollment ----------------------------------------------------------------


def test_reenrollment_after_revocation_yields_a_valid_identity(world: World) -> None:
    first = world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    world.clock.advance(5_000)
    revoked_at = world.revocations.revoke(SITE_1, "gateway stolen")
    old_leaf = x509.load_pem_x509_certificates(first.chain_pem)[0]
    old_nb_ms = int(old_leaf.not_valid_before_utc.timestamp()) * 1000
    assert world.revocations.is_revoked(SITE_1, old_nb_ms)

    world.clock.advance(1_000)
    second = world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    new_leaf = x509.load_pem_x509_certificates(second.chain_pem)[0]
    new_nb_ms = int(new_leaf.not_valid_before_utc.timestamp()) * 1000
    assert new_nb_ms > revoked_at
    assert not world.revocations.is_revoked(SITE_1, new_nb_ms)
    # the old (possibly stolen) signing key no longer verifies anything
    assert world.keys.lookup(first.signing_key_id) is None
    assert world.keys.lookup(second.signing_key_id) is not None


def test_enrollment_in_the_second_of_a_revocation_is_refused_without_burning(
    world: World,
) -> None:
    world.clock.set(T0_MS + 400)
    world.revocations.revoke(SITE_1, "x")
    world.clock.set(T0_MS + 900)  # same second: the certificate would be born revoked
    token = world.tokens.issue("site-1")
    err = _refused(world.authority.enroll, "site-1", token, _csr(), _signing_key())
    assert err.refusal.reason is Reason.IDENTITY_REVOKED
    world.clock.set(T0_MS + 1_000)
    world.authority.enroll("site-1", token, _csr(), _signing_key())


# -- renewal -------------------------------------------------------------------------------------


def test_renewal_issues_a_fresh_certificate(world: World) -> None:
    world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    world.clock.advance(300_000)
    key = generate_private_key()
    issued = world.authority.renew(SITE_1, make_csr(key))
    assert issued.spiffe_id == SITE_1
    assert issued.certificate.public_key() == key.public_key()
    assert issued.not_before_ms == T0_MS + 300_000
    assert issued.not_after_ms == issued.not_before_ms + 600_000
    _assert_last_audit(world, "allow", "", event="renewal")


@pytest.mark.parametrize("presented", [True, False], ids=["with-cert-time", "without"])
def test_revoked_identity_cannot_renew(world: World, presented: bool) -> None:
    result = world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    leaf = x509.load_pem_x509_certificates(result.chain_pem)[0]
    world.clock.advance(10_000)
    world.revocations.revoke(SITE_1, "compromised")
    world.clock.advance(10_000)
    kwargs = {"presented_not_before_ms": int(leaf.not_valid_before_utc.timestamp()) * 1000}
    err = _refused(world.authority.renew, SITE_1, _csr(), **(kwargs if presented else {}))
    assert err.refusal.reason is Reason.IDENTITY_REVOKED
    assert err.refusal.identity == SITE_1.uri
    _assert_last_audit(world, "deny", "IDENTITY_REVOKED", event="renewal")


def test_reenrolled_identity_can_renew_again(world: World) -> None:
    world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    world.clock.advance(1_000)
    world.revocations.revoke(SITE_1, "compromised")
    world.clock.advance(1_000)
    world.authority.enroll("site-1", world.tokens.issue("site-1"), _csr(), _signing_key())
    world.clock.advance(300_000)
    world.authority.renew(SITE_1, _csr())


def test_never_enrolled_revoked_identity_cannot_renew(world: World) -> None:
    operator = SpiffeId(DOMAIN, Role.OPERATOR, "ana")
    world.authority.renew(operator, _csr())
    world.revocations.revoke(operator, "left the company")
    world.clock.advance(1_000)
    assert _refused(world.authority.renew, operator, _csr()).refusal.reason is (
        Reason.IDENTITY_REVOKED
    )


def test_renewal_for_another_trust_domain_is_refused(world: World) -> None:
    foreign = SpiffeId("other.example", Role.EDGE, "site-1")
    err = _refused(world.authority.renew, foreign, _csr())
    assert err.refusal.reason is Reason.WRONG_TRUST_DOMAIN
    _assert_last_audit(world, "deny", "WRONG_TRUST_DOMAIN", event="renewal")


def test_renewal_with_bad_csr_is_refused(world: World) -> None:
    err = _refused(world.authority.renew, SITE_1, b"\x30\x00")
    assert err.refusal.reason is Reason.CSR_INVALID
    _assert_last_audit(world, "deny", "CSR_INVALID", event="renewal")
    assert verify_audit_log(world.audit_path).ok
