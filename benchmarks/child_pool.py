"""Spawned benchmark helper processes driven over pipes, one phase at a time.

Each child gets a spec, answers "ready" (or a report with ``error`` set if it
could not start), waits for a wall-clock start time, and sends one report. The
load generators (``benchmarks.ingest``) and the raw NATS consumers
(``benchmarks.ingest_nats``) are both such pools.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Sequence
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any


class ChildPool:
    """``procs`` spawned processes running ``target(conn)`` (no shared event loop or state)."""

    #: what the children are, for error messages ("load generator", "raw consumer")
    what = "helper process"

    def __init__(self, procs: int, target: Callable[[Connection], None], name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=target, args=(child,), name=f"{name}-{i}")
            p.daemon = True
            p.start()
            self._conns.append(parent)
            self._procs.append(p)

    @property
    def size(self) -> int:
        return len(self._conns)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    async def hand_out(self, conns: Sequence[Connection], specs: Sequence[Any]) -> None:
        """Send each child its spec and wait until all are ready (a failed start raises)."""
        loop = asyncio.get_running_loop()
        for conn, spec in zip(conns, specs, strict=True):
            conn.send(spec)
        for conn in conns:
            ready = await loop.run_in_executor(None, conn.recv)
            if ready != "ready":  # a report instead: the child could not start
                raise RuntimeError(f"{self.what} failed:\n{getattr(ready, 'error', ready)}")

    @staticmethod
    def start_at(conns: Sequence[Connection], start_wall: float) -> None:
        """Start the prepared children at ``start_wall`` (time.time())."""
        for conn in conns:
            conn.send(start_wall)

    async def collect(self, conns: Sequence[Connection]) -> list[Any]:
        """One report per child (a report with ``error`` set raises)."""
        loop = asyncio.get_running_loop()
        reports = [await loop.run_in_executor(None, c.recv) for c in conns]
        for r in reports:
            if r.error:
                raise RuntimeError(f"{self.what} failed:\n{r.error}")
        return reports

    def close(self) -> None:
        for conn in self._conns:
            with suppress(OSError):
                conn.send(None)
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
