"""Garbage-collector settings of the long-running service processes (control plane, edge,
ingest worker), so that a full collection does not stall a time-critical fan-out.

CPython frees most objects by reference counting; its *cyclic* collector additionally
scans every container object of a generation. A control plane that holds a fleet of
100,000 assets, or an edge process with hundreds of connected sites, has millions of
them, and with the default thresholds (700, 10, 10) a full collection pauses the event
loop for 100-500 ms every few seconds of load (measured in ``gridfort bench fanout``:
docs/dispatch.md). Two standard measures, taken by the process that owns the service
(its CLI entry point, never a library class: they are process-wide):

* **settle**: collect once, then move every surviving object into the permanent
  generation (:func:`gc.freeze`): later collections never scan them again. They are
  still freed by reference counting when released; only a reference cycle among them
  is no longer collected, which :class:`HeapSettler` bounds with a full collection every
  ``full_every`` settles;
* **a larger young generation**: the first threshold goes from 700 to
  :data:`YOUNG_THRESHOLD` allocations, so a burst of short-lived messages (a fan-out
  builds ~10 objects per site) is collected in a few larger, cheap passes.

A service settles once when its startup has completed and then every
:data:`SETTLE_EVERY_S` (:class:`HeapSettler`), so long-lived state created later (the
sites' streams, the fleet's state) joins the permanent generation within minutes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: First-generation threshold [allocations minus deallocations of tracked objects].
YOUNG_THRESHOLD = 20_000
#: Second and third thresholds [collections of the generation below].
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 100
#: Interval between settles of a running service [s].
SETTLE_EVERY_S = 600.0
#: A full collection (the permanent generation included) every this many settles (24 h).
FULL_EVERY = 144


@dataclass(frozen=True, slots=True)
class Settled:
    """One settle: objects now in the permanent generation, unreachable objects found by
    the collection, and how long the pause took [s]."""

    frozen: int
    collected: int
    pause_s: float


def settle_heap(*, full: bool = False) -> Settled:
    """Collect, freeze every survivor and set the service thresholds; ``full`` first
    returns the permanent generation to the collector (a full scan, the longest pause)."""
    t0 = time.perf_counter()
    if full:
        gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    return Settled(gc.get_freeze_count(), collected, time.perf_counter() - t0)


class HeapSettler:
    """Settles the heap now and then every ``every_s`` [s] until cancelled; every
    ``full_every``-th settle is a full one (bounds what freezing may keep)."""

    def __init__(self, every_s: float = SETTLE_EVERY_S, full_every: int = FULL_EVERY) -> None:
        if every_s <= 0 or full_every < 1:
            raise ValueError("every_s must be > 0 and full_every >= 1")
        self.every_s = every_s
        self.full_every = full_every
        self.settles = 0
        self.last: Settled | None = None

    def settle(self) -> Settled:
        full = self.settles > 0 and self.settles % self.full_every == 0
        self.last = settle_heap(full=full)
        self.settles += 1
        log.info(
            "heap settled%s: %d objects frozen, %d collected, pause %.1f ms",
            " (full)" if full else "",
            self.last.frozen,
            self.last.collected,
            self.last.pause_s * 1e3,
        )
        return self.last

    async def run(self) -> None:
        while True:
            self.settle()
            await asyncio.sleep(self.every_s)
