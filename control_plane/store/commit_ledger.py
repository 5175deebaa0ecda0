"""Which batches this process's own ingest pipeline is committing or has committed.

The store follower (:mod:`control_plane.store.follower`) reads every committed row back
from the shared store, including the rows of the batches this process committed itself
and already applied. Fleet state would not mind seeing them twice (it is idempotent by
sample time), the PV history would (it sums samples). The pipeline records each
``(site_id, seq)`` here: :meth:`CommitLedger.begin` before the commit is queued,
:meth:`CommitLedger.settle` when its outcome is known (committed here, or not: failed,
or a duplicate of another process's commit, whose rows the follower must then apply).

The follower skips the rows of *own* batches and stops at the first row of a *pending*
one (its outcome decides whether the rows are ours) until it settles. Own batches are
forgotten once the follower has read past them (:meth:`checkpoint` and
:meth:`forget_through`), so the ledger holds about one interval's own commits; at most
``max_own`` are kept (a follower that far behind may then feed a few own batches to the
observers twice, counted in ``evicted``).

Owned by the event loop: every method is called from it, none blocks.
"""

from __future__ import annotations

from collections import deque

#: Own committed batches remembered until the follower read past them, at most.
DEFAULT_MAX_OWN = 100_000

_Key = tuple[str, int]


class CommitLedger:
    """``(site_id, seq)`` of this process's pending and committed batches (see the module)."""

    def __init__(self, max_own: int = DEFAULT_MAX_OWN) -> None:
        if max_own < 1:
            raise ValueError("max_own must be >= 1")
        self.max_own = max_own
        self._pending: set[_Key] = set()
        self._own: set[_Key] = set()
        self._order: deque[tuple[int, _Key]] = deque()
        self._settled = 0  # own commits so far: the checkpoints
        self.evicted = 0

    def begin(self, site_id: str, seq: int) -> None:
        """The pipeline is about to commit ``(site_id, seq)``."""
        self._pending.add((site_id, seq))

    def settle(self, site_id: str, seq: int, *, committed: bool) -> None:
        """The commit finished: ``committed`` by this process (already applied here) or not."""
        key = (site_id, seq)
        self._pending.discard(key)
        if not committed:
            return
        self._settled += 1
        self._own.add(key)
        self._order.append((self._settled, key))
        while len(self._order) > self.max_own:
            _, old = self._order.popleft()
            self._own.discard(old)
            self.evicted += 1

    def is_pending(self, site_id: object, seq: object) -> bool:
        return (site_id, seq) in self._pending

    def is_own(self, site_id: object, seq: object) -> bool:
        return (site_id, seq) in self._own

    def checkpoint(self) -> int:
        """A mark covering every own batch settled so far (for :meth:`forget_through`)."""
        return self._settled

    def forget_through(self, checkpoint: int) -> None:
        """Forget the own batches settled up to ``checkpoint``: the follower read past them."""
        order = self._order
        while order and order[0][0] <= checkpoint:
            _, key = order.popleft()
            self._own.discard(key)

    @property
    def own_count(self) -> int:
        return len(self._own)
