"""Bounded audit of refusal floods: a peer cannot grow the audit log without bound.

Per (identity, reason) a token bucket lets ``burst`` refusals through at once and
``rate_per_s`` after that; refusals beyond it are counted, not written, and the
count is written as one ``refusals_suppressed`` record when that key is next
allowed through or when :meth:`flush` runs (the control plane calls it every
second). Nothing is lost from the story: every refusal is either a record or
part of a counted summary.
"""

from __future__ import annotations

from dataclasses import dataclass

from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import Refusal


@dataclass
class TokenBucket:
    """One key's budget of audit records: ``burst`` at once, refilled at ``rate_per_s``."""

    tokens: float
    updated_ms: int
    suppressed: int = 0
    first_suppressed_ms: int = 0

    def take(self, now_ms: int, burst: int, rate_per_s: float) -> bool:
        """Spend one token (True), or count one suppressed record (False)."""
        self.tokens = min(
            float(burst), self.tokens + (now_ms - self.updated_ms) / 1000 * rate_per_s
        )
        self.updated_ms = now_ms
        if self.tokens < 1.0:
            if self.suppressed == 0:
                self.first_suppressed_ms = now_ms
            self.suppressed += 1
            return False
        self.tokens -= 1.0
        return True


class ThrottledAudit:
    def __init__(
        self, audit: AuditLog, clock: Clock, *, burst: int = 20, rate_per_s: float = 5.0
    ) -> None:
        if burst < 1 or rate_per_s <= 0:
            raise ValueError("burst must be >= 1 and rate_per_s > 0")
        self._audit = audit
        self._clock = clock
        self._burst = burst
        self._rate = rate_per_s
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self.suppressed_total = 0

    def record_refusal(self, refusal: Refusal, *, event: str) -> bool:
        """Write the refusal, or count it if its key is flooding. True if written."""
        now = self._clock.now_ms()
        key = (refusal.identity, refusal.reason.value, event)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(float(self._burst), now)
        if not bucket.take(now, self._burst, self._rate):
            self.suppressed_total += 1
            return False
        self._write_summary(key, bucket, now)
        self._audit.record_refusal(refusal, event=event)
        return True

    def flush(self) -> None:
        """Write the pending suppression summaries; forget idle keys."""
        now = self._clock.now_ms()
        for key, bucket in list(self._buckets.items()):
            self._write_summary(key, bucket, now)
            if bucket.tokens >= self._burst - 1 and now - bucket.updated_ms > 60_000:
                del self._buckets[key]

    def _write_summary(self, key: tuple[str, str, str], bucket: TokenBucket, now: int) -> None:
        if bucket.suppressed == 0:
            return
        identity, reason, event = key
        self._audit.append(
            "refusals_suppressed",
            decision="deny",
            identity=identity,
            reason=reason,
            details={
                "event": event,
                "count": bucket.suppressed,
                "from_ms": bucket.first_suppressed_ms,
                "to_ms": now,
            },
        )
        bucket.suppressed = 0
