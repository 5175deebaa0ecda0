"""Stage 1, authenticate: peer certificate -> SPIFFE ID, in this trust domain, not revoked.

The TLS handshake (grpc core) has already verified the chain to our trust
bundle and the validity period; this stage re-checks what the handshake does
not know: the SPIFFE ID, the trust domain, the role, and revocation.
"""

from __future__ import annotations

from cryptography import x509

from control_plane.ingest.types import Peer
from security.identity import Role, SpiffeId, spiffe_id_from_certificate
from security.refusals import Reason, Refusal
from security.revocation import RevocationSnapshot


def _ms(dt_seconds: float) -> int:
    return int(dt_seconds * 1000)


def authenticate(
    cert_pem: bytes | None,
    *,
    trust_domain: str,
    allowed_roles: frozenset[Role],
    revocations: RevocationSnapshot,
    now_ms: int,
) -> Peer | Refusal:
    if not cert_pem:
        return Refusal(Reason.NO_CLIENT_CERT, "a client certificate is required")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return Refusal(Reason.UNTRUSTED_CERT, "the client certificate could not be parsed")
    try:
        spiffe_id: SpiffeId = spiffe_id_from_certificate(cert)
    except ValueError as e:
        return Refusal(Reason.BAD_SPIFFE_ID, f"client certificate: {e}")
    uri = str(spiffe_id)
    if spiffe_id.trust_domain != trust_domain:
        return Refusal(
            Reason.WRONG_TRUST_DOMAIN, f"trust domain {spiffe_id.trust_domain} is not ours", uri
        )
    not_before_ms = _ms(cert.not_valid_before_utc.timestamp())
    not_after_ms = _ms(cert.not_valid_after_utc.timestamp())
    if not not_before_ms <= now_ms <= not_after_ms:
        return Refusal(Reason.CERT_NOT_VALID_NOW, "the client certificate is not valid now", uri)
    if spiffe_id.role not in allowed_roles:
        return Refusal(
            Reason.ROLE_NOT_ALLOWED, f"role {spiffe_id.role.value} may not use this service", uri
        )
    if revocations.is_revoked(spiffe_id, not_before_ms):
        return Refusal(Reason.IDENTITY_REVOKED, "this identity has been revoked", uri)
    return Peer(
        spiffe_id=spiffe_id,
        cert_serial=cert.serial_number,
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
    )


FOREVER_MS = 2**62


def authenticate_broker_subject(
    site_token: str,
    *,
    trust_domain: str,
    revocations: RevocationSnapshot,
    enrolled_ms: int | None,
) -> Peer | Refusal:
    """Stage 1 for a broker (NATS): the publisher's identity from the subject it used.

    The broker verified the client certificate (``verify_and_map``) and allows each
    edge to publish only on its own subject, so the subject names the identity. This
    stage checks what the broker does not know: the site exists (has enrolled keys,
    ``enrolled_ms``) and the identity was not revoked after its last enrollment.
    """
    site_id = site_token.replace("~", ".")
    try:
        spiffe_id = SpiffeId(trust_domain, Role.EDGE, site_id)
    except ValueError:
        return Refusal(Reason.BAD_SPIFFE_ID, f"subject token {site_token[:64]!r} is not a site")
    uri = str(spiffe_id)
    if enrolled_ms is None:
        return Refusal(Reason.UNKNOWN_SIGNING_KEY, "this site has no enrolled key", uri)
    if revocations.is_revoked(spiffe_id, enrolled_ms):
        return Refusal(Reason.IDENTITY_REVOKED, "this identity has been revoked", uri)
    return Peer(
        spiffe_id=spiffe_id, cert_serial=0, not_before_ms=enrolled_ms, not_after_ms=FOREVER_MS
    )
