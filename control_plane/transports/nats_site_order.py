"""One site's messages, released to the ingest pipeline in sequence order (pure).

The replay guard accepts a site's batches only in increasing sequence order: a
batch at or below the site's high-water mark that is not an exact re-send of a
committed one is refused as a replay, and the edge dead-letters it. Over gRPC the
stream keeps the order. Over NATS it can break:

* a JetStream publish fails (no stream leader for a few seconds while a cluster
  elects one; a message lost with a killed node) while later publishes of the same
  edge succeed: the stream holds ``s+1, s+2, ...`` before the edge re-sends ``s``;
* a worker dies holding ``s`` unacknowledged: JetStream redelivers it after
  ``ack_wait``, when the next worker may already have fetched ``s+1``;
* a batch's commit fails (store unavailable) and is redelivered after a delay.

So the consumer keeps, per site, the messages it fetched in a small buffer
ordered by the edge's sequence hint and releases them one at a time:

* a message without a hint (command results, foreign clients) is released first, in
  arrival order;
* the lowest held sequence is released when it is at or below ``expected`` (the
  next sequence this site needs; duplicates and replays go straight to the guard,
  which answers them);
* a higher one waits - it is a *gap* - until the missing batch arrives, or until
  the caller raises ``expected`` (another worker committed it: the store says so),
  or until ``gap_timeout_s`` passed: then the gap is taken to be a batch the edge
  will never send again (it dead-lettered it) and delivery moves on.

The buffer holds at most ``max_held`` messages: beyond that, the highest sequence is
handed back (the caller negatively acknowledges it, JetStream redelivers it later),
so one flooding site cannot occupy the consumer; a lower sequence always gets in,
so a gap can always be filled. Times are seconds on the caller's monotonic clock.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class SiteOrder(Generic[T]):
    """Held messages of one site and the sequence number it needs next."""

    def __init__(self, *, max_held: int, gap_timeout_s: float) -> None:
        if max_held < 1 or gap_timeout_s <= 0:
            raise ValueError("max_held must be >= 1 and gap_timeout_s positive")
        self.max_held = max_held
        self.gap_timeout_s = gap_timeout_s
        #: The next sequence number to release; None until the caller sets it.
        self.expected: int | None = None
        self.gaps_skipped = 0
        self.gaps_waited = 0  # times a later batch had to wait for a missing one
        self._ordered: list[tuple[int, int, T]] = []  # (seq, arrival, item), ascending
        self._unordered: deque[T] = deque()
        self._arrivals = itertools.count()
        self._gap_since: float | None = None

    def __len__(self) -> int:
        return len(self._ordered) + len(self._unordered)

    def items(self) -> Iterator[T]:
        """Every held message (for in-progress signals and hand-back on release)."""
        yield from self._unordered
        for _seq, _n, item in self._ordered:
            yield item

    def drain(self) -> list[T]:
        """Remove and return every held message."""
        out = list(self.items())
        self._ordered.clear()
        self._unordered.clear()
        self._gap_since = None
        return out

    def add(self, seq: int | None, item: T) -> T | None:
        """Hold ``item``; returns a message to hand back if the buffer is over capacity."""
        if len(self) < self.max_held:
            self._insert(seq, item)
            return None
        if seq is None or not self._ordered or seq >= self._ordered[-1][0]:
            return item  # the newest: hand it back, keep what is older
        _s, _n, evicted = self._ordered.pop()
        self._insert(seq, item)
        return evicted

    def _insert(self, seq: int | None, item: T) -> None:
        if seq is None:
            self._unordered.append(item)
        else:
            bisect.insort(self._ordered, (seq, next(self._arrivals), item), key=lambda e: e[:2])

    def gap_age(self, now_s: float) -> float:
        """Seconds the lowest held message has been waiting for a missing one (0: no gap)."""
        return 0.0 if self._gap_since is None else now_s - self._gap_since

    def pop_ready(self, now_s: float) -> tuple[int | None, T] | None:
        """The next message to process, with its sequence hint, or None (empty, or a gap)."""
        if self._unordered:
            return None, self._unordered.popleft()
        if not self._ordered:
            self._gap_since = None
            return None
        seq = self._ordered[0][0]
        if self.expected is not None and seq > self.expected:
            if self._gap_since is None:
                self._gap_since = now_s
                self.gaps_waited += 1
            if now_s - self._gap_since < self.gap_timeout_s:
                return None
            self.gaps_skipped += 1
        self._gap_since = None
        _s, _n, item = self._ordered.pop(0)
        return seq, item

    def done(self, seq: int) -> None:
        """Batch ``seq`` got a final answer (committed, duplicate or refused for good)."""
        self.raise_expected(seq + 1)

    def raise_expected(self, at_least: int) -> None:
        """The site needs nothing below ``at_least`` (e.g. the store holds it)."""
        if self.expected is None or at_least > self.expected:
            self.expected = at_least
