"""Delivery bookkeeping shared by every uplink (gRPC, NATS): what is in flight, what to
retry, what to send next, and what a signed receipt means for the outbox.

Rule: a batch leaves the outbox only on a verified receipt (COMMITTED or DUPLICATE)
for its exact payload digest; any non-retryable refusal moves it to the dead-letter
table. Sequence numbers must reach the control plane in order (anything at or below
its high-water mark that is not an exact re-send is a replay), so a retryable refusal
of batch ``s`` rewinds delivery to ``s``: after ``retry_delay_ms`` (paced on the
monotonic clock, so a wrong wall clock cannot become a hot loop) ``s`` and everything
after it are sent again, in order, re-signed when older than ``resign_after_ms``;
exact re-sends of what was already committed are acknowledged as duplicates. A batch
with no receipt after ``receipt_timeout_s`` rewinds delivery the same way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from edge_node.credentials import EdgeCredentials
from edge_node.outbox import Outbox, OutboxEntry
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.clock import Clock
from security.envelope import check_envelope_shape, verify_signature
from security.refusals import Reason, Refusal

log = logging.getLogger(__name__)


@dataclass
class UplinkStats:
    connects: int = 0
    failovers: int = 0
    batches_sent: int = 0
    receipts_committed: int = 0
    receipts_duplicate: int = 0
    receipts_refused: int = 0
    receipts_rejected: int = 0  # receipts that failed verification
    resent_after_timeout: int = 0
    rotations: int = 0
    endpoint: str = ""
    connected: bool = False
    refusal_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryPolicy:
    window: int = 256  # batches in flight without a receipt
    resign_after_ms: int = 15_000  # re-sign buffered batches older than this before sending
    retry_delay_ms: int = 1_000  # wait before resending a batch refused as retryable
    receipt_timeout_s: float | None = None  # resend when no receipt came (None: never)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")


class Delivery:
    def __init__(
        self,
        credentials: EdgeCredentials,
        outbox: Outbox,
        clock: Clock,
        policy: DeliveryPolicy,
    ) -> None:
        self._creds = credentials
        self._outbox = outbox
        self._clock = clock
        self.stats = UplinkStats()
        self.policy = policy
        self._in_flight: dict[bytes, tuple[int, float]] = {}  # digest -> (seq, sent at [mono s])
        self._cursor = 0  # highest seq sent since the last restart or rewind
        self._hold_until = 0.0  # no sending before this monotonic time [s]

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def restart(self) -> None:
        """After a (re)connect, resend everything still unacknowledged, in order."""
        self._in_flight.clear()
        self._cursor = 0
        self._hold_until = 0.0

    def rewind(self, seq: int, delay_s: float) -> None:
        """Send ``seq`` and everything after it again, in order, not before ``delay_s``."""
        self._cursor = min(self._cursor, seq - 1)
        for digest, (s, _sent) in list(self._in_flight.items()):
            if s >= seq:
                del self._in_flight[digest]
        self._hold_until = max(self._hold_until, asyncio.get_running_loop().time() + delay_s)

    def next_batch(self) -> list[OutboxEntry]:
        """Entries to send now, in order, re-signed where needed, marked in flight."""
        mono = asyncio.get_running_loop().time()
        self._expire(mono)
        if mono < self._hold_until:
            return []
        room = self.policy.window - len(self._in_flight)
        if room <= 0:
            return []
        now_ms = self._clock.now_ms()
        entries = []
        for entry in self._outbox.pending(after_seq=self._cursor, limit=room):
            # re-sign what is old, or "from the future" after the clock was corrected
            if not 0 <= now_ms - entry.signed_ms <= self.policy.resign_after_ms:
                entry = self._outbox.resign(entry, self._creds.signer, now_ms)
            self._in_flight[entry.digest] = (entry.seq, mono)
            self._cursor = max(self._cursor, entry.seq)
            entries.append(entry)
        self.stats.batches_sent += len(entries)
        return entries

    def _expire(self, mono: float) -> None:
        timeout = self.policy.receipt_timeout_s
        if timeout is None:
            return
        expired = [seq for seq, sent in self._in_flight.values() if mono - sent > timeout]
        if expired:
            self.stats.resent_after_timeout += len(expired)
            self.rewind(min(expired), 0.0)

    def on_receipt(self, envelope: epb.SignedEnvelope) -> None:
        """Verify a receipt with the control plane's key and act on it."""
        ctl = self._creds.controller
        if (
            isinstance(check_envelope_shape(envelope), Refusal)
            or envelope.payload_type != epb.PAYLOAD_TYPE_BATCH_RECEIPT
            or envelope.signer != ctl.spiffe_id
            or envelope.key_id != ctl.key_id
            or not verify_signature(envelope, ctl.public_key)
        ):
            self.stats.receipts_rejected += 1
            log.warning("uplink %s: %s", self._creds.site_id, Reason.RECEIPT_BAD_SIGNATURE.value)
            return
        receipt = lpb.BatchReceipt.FromString(envelope.payload)
        flight = self._in_flight.pop(receipt.batch_sha256, None)
        if receipt.status in (lpb.RECEIPT_STATUS_COMMITTED, lpb.RECEIPT_STATUS_DUPLICATE):
            if receipt.status == lpb.RECEIPT_STATUS_COMMITTED:
                self.stats.receipts_committed += 1
            else:
                self.stats.receipts_duplicate += 1
            self._outbox.acknowledge(receipt.batch_sha256, receipt.committed, receipt.quarantined)
            return
        self.stats.receipts_refused += 1
        reasons = self.stats.refusal_reasons
        reasons[receipt.reason] = reasons.get(receipt.reason, 0) + 1
        log.warning(
            "uplink %s: batch %s refused: %s (%s)",
            self._creds.site_id,
            receipt.seq,
            receipt.reason,
            receipt.message,
        )
        if receipt.retryable:
            # Never dead-letters, even for a copy no longer in flight (sent twice, or
            # before a reconnect): rewind so that nothing newer overtakes it.
            seq = flight[0] if flight is not None else self._outbox.seq_of(receipt.batch_sha256)
            if seq is not None:
                self.rewind(seq, self.policy.retry_delay_ms / 1000)
        elif receipt.batch_sha256:
            self._outbox.dead_letter(
                receipt.batch_sha256, receipt.reason, receipt.message, self._clock.now_ms()
            )
