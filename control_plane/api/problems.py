"""REST refusals: the one place where a refusal reason becomes an HTTP status and a JSON body.

Identity and size refusals reuse the stable :class:`security.refusals.Reason`
codes shared with gRPC, NATS and the audit log. Refusals that only HTTP can
make (no such route, wrong method, a malformed request) have their own stable
codes in :class:`HttpReason` until they join ``Reason``. A peer sees exactly
``{"reason": "<CODE>", "message": "<human sentence>"}``: never an exception
text, a stack or a path on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from security.refusals import Reason

AnyReason = Reason  # one enum for every transport

_STATUS: dict[AnyReason, int] = {
    Reason.NO_CLIENT_CERT: 401,
    Reason.UNTRUSTED_CERT: 401,
    Reason.CERT_NOT_VALID_NOW: 401,
    Reason.BAD_SPIFFE_ID: 401,
    Reason.WRONG_TRUST_DOMAIN: 401,
    Reason.IDENTITY_REVOKED: 401,
    Reason.ROLE_NOT_ALLOWED: 403,
    Reason.NOT_FOUND: 404,
    Reason.METHOD_NOT_ALLOWED: 405,
    Reason.MALFORMED_REQUEST: 400,
    Reason.OVERSIZED: 413,
    Reason.UNSUPPORTED_MEDIA_TYPE: 415,
    Reason.AFRR_NOT_AVAILABLE: 409,
    Reason.UNAVAILABLE: 503,
    Reason.INTERNAL: 500,
}

#: Every reason the API may answer with, and every status (the OpenAPI document lists them).
API_REASONS: tuple[AnyReason, ...] = tuple(_STATUS)
REFUSAL_STATUSES: tuple[int, ...] = tuple(sorted(set(_STATUS.values())))


def status_for(reason: AnyReason) -> int:
    """The HTTP status of a refusal; a reason without a mapping is a client error (400)."""
    return _STATUS.get(reason, 400)


@dataclass(frozen=True, slots=True)
class ApiRefusal:
    """One refused request: the stable code, a human message, and who asked (SPIFFE ID or "")."""

    reason: AnyReason
    message: str
    identity: str = ""
    details: dict[str, str | int | float | bool] = field(default_factory=dict)
    allow: tuple[str, ...] = ()  # for 405: the methods the route does accept

    @property
    def status(self) -> int:
        return status_for(self.reason)

    def body(self) -> bytes:
        """The JSON a peer sees."""
        return json.dumps({"reason": self.reason.value, "message": self.message}).encode()

    def with_identity(self, identity: str) -> ApiRefusal:
        return ApiRefusal(self.reason, self.message, identity, self.details, self.allow)


def malformed(message: str) -> ApiRefusal:
    return ApiRefusal(Reason.MALFORMED_REQUEST, message)


def not_found(message: str) -> ApiRefusal:
    return ApiRefusal(Reason.NOT_FOUND, message)
