"""The one place where refusal reasons become gRPC status codes (nothing internal leaks)."""

from __future__ import annotations

import grpc

from security.refusals import Reason, Refusal

_CODES: dict[Reason, grpc.StatusCode] = {
    Reason.NO_CLIENT_CERT: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNTRUSTED_CERT: grpc.StatusCode.UNAUTHENTICATED,
    Reason.CERT_NOT_VALID_NOW: grpc.StatusCode.UNAUTHENTICATED,
    Reason.BAD_SPIFFE_ID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.WRONG_TRUST_DOMAIN: grpc.StatusCode.UNAUTHENTICATED,
    Reason.IDENTITY_REVOKED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.ROLE_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TOKEN_UNKNOWN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TOKEN_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TOKEN_ALREADY_USED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TOKEN_WRONG_SITE: grpc.StatusCode.PERMISSION_DENIED,
    Reason.SITE_UNKNOWN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.TOO_MANY_STREAMS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.OVERSIZED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}

#: Trailing-metadata key carrying the stable reason code.
REASON_KEY = "gridfort-reason"


def status_for(reason: Reason) -> grpc.StatusCode:
    return _CODES.get(reason, grpc.StatusCode.INVALID_ARGUMENT)


def details_for(refusal: Refusal) -> str:
    """``REASON: message`` — the only text a peer ever sees."""
    return f"{refusal.reason.value}: {refusal.message}"
