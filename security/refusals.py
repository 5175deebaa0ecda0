"""Refusals as data: one stable reason enum shared by every transport and the audit log.

A refusal carries a stable machine-readable ``Reason`` (sent to peers as its
string value, like ``google.rpc.ErrorInfo.reason``), a human message that never
contains internals (no exception text, no stack), and the identity involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes. Never rename a member: peers and audit records key on them."""

    # authenticate
    NO_CLIENT_CERT = "NO_CLIENT_CERT"
    UNTRUSTED_CERT = "UNTRUSTED_CERT"
    CERT_NOT_VALID_NOW = "CERT_NOT_VALID_NOW"
    BAD_SPIFFE_ID = "BAD_SPIFFE_ID"
    WRONG_TRUST_DOMAIN = "WRONG_TRUST_DOMAIN"
    IDENTITY_REVOKED = "IDENTITY_REVOKED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    # verify
    MALFORMED_ENVELOPE = "MALFORMED_ENVELOPE"
    WRONG_PAYLOAD_TYPE = "WRONG_PAYLOAD_TYPE"
    SIGNER_MISMATCH = "SIGNER_MISMATCH"
    UNKNOWN_SIGNING_KEY = "UNKNOWN_SIGNING_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    REPLAYED_SEQUENCE = "REPLAYED_SEQUENCE"
    STALE_TIMESTAMP = "STALE_TIMESTAMP"
    FUTURE_TIMESTAMP = "FUTURE_TIMESTAMP"
    OVERSIZED = "OVERSIZED"
    # authorize
    SITE_MISMATCH = "SITE_MISMATCH"
    ASSET_NOT_AUTHORIZED = "ASSET_NOT_AUTHORIZED"
    # validate
    MALFORMED_BATCH = "MALFORMED_BATCH"
    EMPTY_BATCH = "EMPTY_BATCH"
    TOO_MANY_MEASUREMENTS = "TOO_MANY_MEASUREMENTS"
    UNKNOWN_QUANTITY = "UNKNOWN_QUANTITY"
    UNIT_MISMATCH = "UNIT_MISMATCH"
    QUANTITY_NOT_FOR_ASSET = "QUANTITY_NOT_FOR_ASSET"
    VALUE_NOT_FINITE = "VALUE_NOT_FINITE"
    OUT_OF_PHYSICAL_BOUNDS = "OUT_OF_PHYSICAL_BOUNDS"
    SAMPLE_TIME_INVALID = "SAMPLE_TIME_INVALID"
    # stage 5, the false-data-injection gate (measurement quarantined with evidence)
    FDI_GRID_INCONSISTENT = "FDI_GRID_INCONSISTENT"
    FDI_TEMPORAL_INCONSISTENT = "FDI_TEMPORAL_INCONSISTENT"
    GATE_NO_CONTEXT = "GATE_NO_CONTEXT"
    # enrollment
    TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_ALREADY_USED = "TOKEN_ALREADY_USED"
    TOKEN_WRONG_SITE = "TOKEN_WRONG_SITE"
    CSR_INVALID = "CSR_INVALID"
    SITE_UNKNOWN = "SITE_UNKNOWN"
    # commands (decided at the edge)
    COMMAND_MALFORMED = "COMMAND_MALFORMED"
    COMMAND_BAD_SIGNATURE = "COMMAND_BAD_SIGNATURE"
    COMMAND_WRONG_SITE = "COMMAND_WRONG_SITE"
    COMMAND_EXPIRED = "COMMAND_EXPIRED"
    COMMAND_REPLAYED = "COMMAND_REPLAYED"
    COMMAND_UNKNOWN_ASSET = "COMMAND_UNKNOWN_ASSET"
    COMMAND_UNSAFE = "COMMAND_UNSAFE"
    DEVICE_WRITE_FAILED = "DEVICE_WRITE_FAILED"
    COMMAND_UNSUPPORTED = "COMMAND_UNSUPPORTED"  # this edge cannot do the action at all
    # dispatch (decided at the control plane about a site's behaviour)
    DISPATCH_NOT_FOLLOWED = "DISPATCH_NOT_FOLLOWED"
    DISPATCH_NOT_ACKNOWLEDGED = "DISPATCH_NOT_ACKNOWLEDGED"
    AFRR_NOT_AVAILABLE = "AFRR_NOT_AVAILABLE"  # no dispatched plan or no aFRR reserved
    # receipts (decided at the edge)
    RECEIPT_BAD_SIGNATURE = "RECEIPT_BAD_SIGNATURE"
    # catch-all: never carries detail to the peer
    # REST API (control_plane/api)
    NOT_FOUND = "NOT_FOUND"  # no such route, alert or asset
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # path, query or body fails validation
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    # any transport
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"


#: Refusals an honest sender should retry (after re-signing); every other one is final.
RETRYABLE: frozenset[Reason] = frozenset(
    {Reason.STALE_TIMESTAMP, Reason.FUTURE_TIMESTAMP, Reason.INTERNAL, Reason.UNAVAILABLE}
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused thing: why (stable code), a human message, and who was involved."""

    reason: Reason
    message: str
    identity: str = ""
    details: dict[str, str | int | float | bool] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE


class GridfortError(Exception):
    """Base of every error Gridfort raises on purpose. ``str(e)`` is safe to show a user."""


class ConfigError(GridfortError):
    """A configuration file or flag is invalid; the message names the field."""


class RefusedError(GridfortError):
    """An operation was refused; carries the structured :class:`Refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason.value}: {refusal.message}")
        self.refusal = refusal
