"""Which ingest worker consumes which partition of the telemetry stream (pure).

The stream stores each site's messages under one partition (NATS ``partition()``
hash of the site token, see ``nats_config.partition_transform``), and each
partition has one durable pull consumer. Workers announce themselves with
heartbeats on ``gridfort.v1.workers.<worker>``; every worker computes the same
assignment from the same set of live workers, so each partition - and therefore
each site - is consumed by one worker at a time:

* :class:`WorkerMembership` keeps who was heard within ``ttl_s`` (a worker that
  says goodbye leaves at once; a SIGKILLed one after ``ttl_s``);
* :func:`assign_partitions` is deterministic, balanced (no worker gets more than
  ``ceil(partitions / workers)``) and moves few partitions when a worker comes or
  goes (rendezvous hashing: each partition prefers the workers in the order of a
  hash of ``(worker, partition)``).

Ownership is advisory: two workers can briefly disagree (a heartbeat in flight),
and a hung worker may still finish what it fetched. Correctness never depends on
it: the consumer releases one site's messages in sequence order and adopts the
store's high-water marks (``nats_site_order``, ``nats_ingest``), and commits are
idempotent on (site, seq). Ownership only keeps that rare.

Times are seconds on a monotonic clock supplied by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def _score(worker_id: str, partition: int) -> int:
    digest = hashlib.sha256(f"{worker_id}\x00{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign_partitions(partitions: int, workers: Iterable[str]) -> dict[str, frozenset[int]]:
    """Partitions ``0..partitions-1`` dealt to ``workers``: deterministic and balanced.

    Every worker (caller's order is irrelevant) maps to its set; with no worker the
    result is empty.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    ids = sorted(set(workers))
    if not ids:
        return {}
    cap = -(-partitions // len(ids))
    owned: dict[str, set[int]] = {w: set() for w in ids}
    for p in range(partitions):
        for w in sorted(ids, key=lambda w: (-_score(w, p), w)):
            if len(owned[w]) < cap:
                owned[w].add(p)
                break
    return {w: frozenset(ps) for w, ps in owned.items()}


class WorkerMembership:
    """The live ingest workers as seen by ``self_id``: heard within ``ttl_s`` seconds."""

    def __init__(self, self_id: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.self_id = self_id
        self.ttl_s = ttl_s
        self._last_heard: dict[str, float] = {}

    def heard(self, worker_id: str, now_s: float) -> None:
        """A heartbeat of ``worker_id`` arrived."""
        if worker_id != self.self_id:
            self._last_heard[worker_id] = max(now_s, self._last_heard.get(worker_id, now_s))

    def left(self, worker_id: str) -> None:
        """``worker_id`` said goodbye (graceful stop): forget it at once."""
        self._last_heard.pop(worker_id, None)

    def alive(self, now_s: float) -> tuple[str, ...]:
        """Every worker heard within ``ttl_s``, and this one; sorted."""
        for w, t in list(self._last_heard.items()):
            if now_s - t > self.ttl_s:
                del self._last_heard[w]
        return tuple(sorted({self.self_id, *self._last_heard}))


def my_partitions(partitions: int, membership: WorkerMembership, now_s: float) -> frozenset[int]:
    """The partitions ``membership.self_id`` should consume now."""
    assignment: Mapping[str, frozenset[int]] = assign_partitions(
        partitions, membership.alive(now_s)
    )
    return assignment.get(membership.self_id, frozenset())
