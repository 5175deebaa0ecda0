"""Every REST access decision, allow or deny, into the audit chain, bounded under floods.

The same token-bucket discipline as ``security.audit_throttle`` (burst 20, then
5 per second) applied per (identity, decision, route, reason): a dashboard that
polls, or a peer that hammers a refused route, cannot grow the log without
bound. Decisions beyond the bucket are counted and written as one
``api_requests_suppressed`` record (count and time span) when the key is next
let through or on :meth:`AccessAudit.flush`. Decisions that change state
(``always``) are never throttled. Keys hold no request text (only the route
template), so hostile input cannot multiply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from security.audit_log import AuditLog
from security.audit_throttle import TokenBucket
from security.clock import Clock

EVENT = "api_request"
SUPPRESSED_EVENT = "api_requests_suppressed"
#: The longest request target copied into a record [characters].
MAX_TARGET_IN_RECORD = 256


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """One decision about one request (or one TLS handshake, ``event="api_handshake"``)."""

    decision: str  # "allow" | "deny"
    identity: str  # the peer's SPIFFE ID, "" if it has none
    route: str  # the route template, "-" if none matched
    status: int  # the HTTP status answered (0: the handshake failed, nothing was answered)
    reason: str = ""  # the refusal code of a deny
    method: str = "-"
    target: str = ""  # the raw request target, truncated
    message: str = ""
    details: Mapping[str, object] = field(default_factory=dict)
    always: bool = False  # never throttled (state changes)
    event: str = EVENT


_Key = tuple[str, str, str, str, str]


class AccessAudit:
    def __init__(
        self, audit: AuditLog, clock: Clock, *, burst: int = 20, rate_per_s: float = 5.0
    ) -> None:
        if burst < 1 or rate_per_s <= 0:
            raise ValueError("burst must be >= 1 and rate_per_s > 0")
        self._audit = audit
        self._clock = clock
        self._burst = burst
        self._rate = rate_per_s
        self._buckets: dict[_Key, TokenBucket] = {}
        self.suppressed_total = 0

    def record(self, d: AccessDecision) -> bool:
        """Write the decision, or count it if its key is flooding. True if written."""
        now = self._clock.now_ms()
        if not d.always:
            key = (d.event, d.identity, d.decision, d.route, d.reason)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(float(self._burst), now)
            if not bucket.take(now, self._burst, self._rate):
                self.suppressed_total += 1
                return False
            self._write_summary(key, bucket, now)
        details: dict[str, object] = {"route": d.route, "status": d.status, "method": d.method}
        if d.target:
            details["target"] = d.target[:MAX_TARGET_IN_RECORD]
        if d.message:
            details["message"] = d.message
        details.update(d.details)
        self._audit.append(
            d.event, decision=d.decision, identity=d.identity, reason=d.reason, details=details
        )
        return True

    def flush(self) -> None:
        """Write the pending suppression summaries; forget idle keys."""
        now = self._clock.now_ms()
        for key, bucket in list(self._buckets.items()):
            self._write_summary(key, bucket, now)
            if bucket.tokens >= self._burst - 1 and now - bucket.updated_ms > 60_000:
                del self._buckets[key]

    def _write_summary(self, key: _Key, bucket: TokenBucket, now: int) -> None:
        if bucket.suppressed == 0:
            return
        event, identity, decision, route, reason = key
        self._audit.append(
            SUPPRESSED_EVENT,
            decision=decision,
            identity=identity,
            reason=reason,
            details={
                "event": event,
                "route": route,
                "count": bucket.suppressed,
                "from_ms": bucket.first_suppressed_ms,
                "to_ms": now,
            },
        )
        bucket.suppressed = 0
