"""Replay guard: strictly increasing sequence numbers per site plus a freshness window.

Pure core: the caller supplies ``now_ms`` and a way to look up the digest of a
batch that was already committed. Decision, in order:

1. ``seq`` at or below the site's high-water mark: an exact re-send (same
   payload digest as the committed batch) is a DUPLICATE, acknowledged again
   and never counted twice; anything else is refused as REPLAYED_SEQUENCE.
   A re-send of a batch whose commit is still in flight is PENDING.
2. ``signed_ms`` later than ``now + skew`` is FUTURE_TIMESTAMP; earlier than
   ``now - window - skew`` is STALE_TIMESTAMP (an honest edge re-signs a
   buffered batch before sending it, so store-and-forward survives long outages).
3. Otherwise FRESH. The caller ``reserve``s the sequence before the commit
   starts (no await in between) and ``commit``s or ``release``s it after.

High-water marks survive restarts because they are derived from the store
(``max(seq)`` of committed batches per site) when the guard is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from security.refusals import Reason, Refusal


@dataclass(frozen=True, slots=True)
class ReplayPolicy:
    """Freshness window [ms] and the clock skew tolerated in either direction [ms]."""

    window_ms: int = 30_000
    skew_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError("replay window_ms must be positive")
        if not 0 <= self.skew_ms <= self.window_ms:
            raise ValueError("replay skew_ms must be between 0 and window_ms")


class Outcome(Enum):
    FRESH = "fresh"
    DUPLICATE = "duplicate"
    PENDING = "pending"  # exact re-send of a batch whose commit is in flight


@dataclass(frozen=True, slots=True)
class ReplayDecision:
    outcome: Outcome


FRESH = ReplayDecision(Outcome.FRESH)
DUPLICATE = ReplayDecision(Outcome.DUPLICATE)
PENDING = ReplayDecision(Outcome.PENDING)

DigestLookup = Callable[[str, int], bytes | None]


class ReplayGuard:
    """Per-site high-water marks with in-flight reservations."""

    def __init__(
        self,
        policy: ReplayPolicy,
        committed_hwm: Mapping[str, int],
        committed_digest: DigestLookup,
    ) -> None:
        self.policy = policy
        self._committed: dict[str, int] = dict(committed_hwm)
        self._lookup = committed_digest
        self._pending: dict[tuple[str, int], bytes] = {}
        self._reserved: dict[str, int] = dict(committed_hwm)
        # Sequences below the reserved mark whose commit failed (released while a later
        # batch of the site committed): the edge must be able to send them again.
        self._holes: dict[str, set[int]] = {}

    def high_water_mark(self, site_id: str) -> int:
        """Highest committed sequence number of a site (0 if none)."""
        return self._committed.get(site_id, 0)

    def check(
        self, site_id: str, seq: int, signed_ms: int, digest: bytes, now_ms: int
    ) -> ReplayDecision | Refusal:
        if seq <= 0:
            return Refusal(Reason.REPLAYED_SEQUENCE, "sequence numbers start at 1")
        if seq <= self._reserved.get(site_id, 0) and seq not in self._holes.get(site_id, ()):
            return self._check_resend(site_id, seq, digest)
        if signed_ms > now_ms + self.policy.skew_ms:
            return Refusal(
                Reason.FUTURE_TIMESTAMP,
                f"signed {signed_ms - now_ms} ms in the future; tolerance {self.policy.skew_ms} ms",
            )
        age_ms = now_ms - signed_ms
        if age_ms > self.policy.window_ms + self.policy.skew_ms:
            return Refusal(
                Reason.STALE_TIMESTAMP,
                f"signed {age_ms} ms ago; window {self.policy.window_ms} ms "
                f"+ skew {self.policy.skew_ms} ms",
            )
        return FRESH

    def _check_resend(self, site_id: str, seq: int, digest: bytes) -> ReplayDecision | Refusal:
        pending = self._pending.get((site_id, seq))
        if pending is not None:
            return PENDING if pending == digest else _replay(site_id, seq)
        if seq <= self._committed.get(site_id, 0) and self._lookup(site_id, seq) == digest:
            return DUPLICATE
        return _replay(site_id, seq)

    def reserve(self, site_id: str, seq: int, digest: bytes) -> None:
        """Claim ``seq`` for a commit in flight. Call only right after a FRESH decision."""
        holes = self._holes.get(site_id)
        if holes is not None and seq in holes:  # a failed commit's sequence, sent again
            holes.discard(seq)
            self._pending[(site_id, seq)] = digest
            self._reserved[site_id] = max(self._reserved.get(site_id, 0), seq)
            return
        if seq <= self._reserved.get(site_id, 0):
            raise ValueError(f"sequence {seq} of {site_id} is not above the high-water mark")
        self._reserved[site_id] = seq
        self._pending[(site_id, seq)] = digest

    def commit(self, site_id: str, seq: int) -> None:
        """The reserved batch is durable."""
        self._pending.pop((site_id, seq), None)
        if seq > self._committed.get(site_id, 0):
            self._committed[site_id] = seq

    def release(self, site_id: str, seq: int) -> None:
        """The commit of a reserved batch failed: the sequence may be used again."""
        self._pending.pop((site_id, seq), None)
        in_flight = [s for (site, s) in self._pending if site == site_id]
        self._reserved[site_id] = max([self._committed.get(site_id, 0), *in_flight])
        holes = {h for h in self._holes.get(site_id, ()) if h < self._reserved[site_id]}
        if seq < self._reserved[site_id]:  # a later batch got through: keep this one open
            holes.add(seq)
        if holes:
            self._holes[site_id] = holes
        else:
            self._holes.pop(site_id, None)


def _replay(site_id: str, seq: int) -> Refusal:
    return Refusal(
        Reason.REPLAYED_SEQUENCE,
        f"sequence {seq} is at or below the high-water mark of site {site_id} "
        "and is not an exact re-send of the committed batch",
    )
