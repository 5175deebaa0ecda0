"""Durable telemetry store on SQLite (WAL) with group commit.

One writer thread takes every pending commit request, writes them in one
transaction, syncs, and only then resolves the callers' futures: a batch is
acknowledged only after it is durable (``synchronous=FULL`` by default), while
many batches share one fsync. Commits are idempotent on ``(site_id, seq)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import sqlite3
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from control_plane.ingest.types import MeasurementRow, QuarantinedMeasurement
from security import sqlite_db
from security.clock import Clock

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    site_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    key_id TEXT NOT NULL,
    sealed_ms INTEGER NOT NULL,
    signed_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    n_committed INTEGER NOT NULL,
    n_quarantined INTEGER NOT NULL,
    PRIMARY KEY (site_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS measurements (
    site_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    asset_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    site_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    asset_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL,               -- NULL when the value was NaN (SQLite has no NaN)
    value_text TEXT NOT NULL, -- the value exactly as received (repr), for forensics
    reason TEXT NOT NULL,
    evidence TEXT             -- the FDI gate's evidence (JSON), NULL for validation refusals
);
"""


class CommitOutcome(Enum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"


class StoreConflictError(Exception):
    """(site, seq) already holds a different batch: the replay guard should have refused it."""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    site_id: str
    seq: int
    digest: bytes
    key_id: str
    sealed_ms: int
    signed_ms: int
    received_ms: int
    rows: list[MeasurementRow]
    quarantined: list[QuarantinedMeasurement]


@dataclass(frozen=True, slots=True)
class StoreTail:
    """Rows committed after two rowids, read in one snapshot (:meth:`TelemetryStore.tail`).

    ``measurements``: ``(rowid, site_id, seq, asset_id, quantity, ts_ms, value)``;
    ``quarantine``: ``(rowid, site_id, seq, idx, asset_id, quantity, ts_ms, value, reason,
    evidence)`` (``value`` None for NaN, ``evidence`` the gate's JSON or None), both as
    SQLite returned them (the reader checks them), ascending by rowid. ``end_*``: the
    highest rowid of each table in the same snapshot (0 when empty).
    """

    measurements: list[tuple[object, ...]]
    quarantine: list[tuple[object, ...]]
    end_measurements: int
    end_quarantine: int


@dataclass(frozen=True, slots=True)
class StoreCounts:
    batches: int
    measurements: int
    quarantined: int


_Pending = tuple[CommitRequest, asyncio.Future[CommitOutcome], asyncio.AbstractEventLoop]
_STOP = None


class TelemetryStore:
    """SQLite telemetry store; ``commit`` is async, everything else is a quick read."""

    def __init__(
        self, path: Path, clock: Clock, *, synchronous: str = "FULL", max_group: int = 512
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self._path = path
        self._clock = clock
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer = self._connect(synchronous)
        self._writer.executescript(_SCHEMA)
        _migrate(self._writer)
        self._reader = self._connect(synchronous)
        self._read_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        return sqlite_db.open_persistent(self._path, synchronous=synchronous)

    # -- reads -------------------------------------------------------------
    def high_water_marks(self) -> dict[str, int]:
        """Highest committed sequence number per site."""
        with self._read_lock:
            rows = self._reader.execute("SELECT site_id, MAX(seq) FROM batches GROUP BY site_id")
            return {site: int(seq) for site, seq in rows}

    def batch_digest(self, site_id: str, seq: int) -> bytes | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT digest FROM batches WHERE site_id = ? AND seq = ?", (site_id, seq)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def counts(self, site_ids: list[str] | None = None) -> StoreCounts:
        where, args = "", tuple[str, ...]()
        if site_ids is not None:
            where = f" WHERE site_id IN ({','.join('?' * len(site_ids))})"
            args = tuple(site_ids)
        with self._read_lock:
            b, m, q = self._reader.execute(
                f"SELECT COUNT(*), COALESCE(SUM(n_committed), 0), COALESCE(SUM(n_quarantined), 0)"
                f" FROM batches{where}",
                args,
            ).fetchone()
        return StoreCounts(int(b), int(m), int(q))

    def sequences(self, site_id: str) -> list[int]:
        """Every committed sequence number of a site, ascending (for audits and tests)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq FROM batches WHERE site_id = ? ORDER BY seq", (site_id,)
            )
            return [int(r[0]) for r in rows]

    def tail(
        self,
        after_measurements: int,
        after_quarantine: int,
        limit: int,
        *,
        measurements: bool = True,
    ) -> StoreTail:
        """At most ``limit`` rows of each table with a rowid above the given one, and the
        tables' end rowids, in one read transaction (it sees other processes' commits).

        Rowids grow with every commit (writers are serialized, rows are never deleted), so
        tailing by rowid sees every committed row once. ``measurements`` False: no
        measurement rows, only the ends (:meth:`latest_since` reads them grouped). A
        blocking read: call it from a worker thread (the store follower does)."""
        with self._read_lock:
            conn = self._reader
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    "SELECT rowid, site_id, seq, asset_id, quantity, ts_ms, value"
                    " FROM measurements WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (after_measurements, limit if measurements else 0),
                ).fetchall()
                quarantine = conn.execute(
                    "SELECT rowid, site_id, seq, idx, asset_id, quantity, ts_ms, value, reason,"
                    " evidence FROM quarantine WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (after_quarantine, limit),
                ).fetchall()
                end_m = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM measurements")
                end_q = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM quarantine")
                ends = (int(end_m.fetchone()[0]), int(end_q.fetchone()[0]))
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        return StoreTail(rows, quarantine, *ends)

    def latest_since(self, after: int, upto: int) -> list[tuple[object, ...]]:
        """Per ``(asset_id, quantity)``, the newest sample among the measurements with a
        rowid in ``(after, upto]``: ``(asset_id, quantity, ts_ms, value)`` rows as SQLite
        returned them (the bare columns come from the row holding ``MAX(ts_ms)``). The
        grouping runs in SQLite, so following fleet state costs per asset, not per row.
        A blocking read: call it from a worker thread."""
        with self._read_lock:
            return self._reader.execute(
                "SELECT asset_id, quantity, MAX(ts_ms), value FROM measurements"
                " WHERE rowid > ? AND rowid <= ? GROUP BY asset_id, quantity",
                (after, upto),
            ).fetchall()

    # -- writes ------------------------------------------------------------
    async def commit(self, request: CommitRequest) -> CommitOutcome:
        """Make ``request`` durable; resolves after the transaction holding it has synced."""
        if self._closed:
            raise RuntimeError("telemetry store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommitOutcome] = loop.create_future()
        self._queue.put((request, future, loop))
        return await future

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        with self._read_lock:
            self._reader.close()
        self._writer.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]
            stop = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                group.append(item)
            self._write_group(group)
            if stop:
                return

    def _write_group(self, group: list[_Pending]) -> None:
        now_ms = self._clock.now_ms()
        results: list[CommitOutcome | BaseException] = []
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request, _future, _loop in group:
                results.append(self._write_isolated(conn, request, now_ms))
            conn.execute("COMMIT")
        except Exception as e:  # any failure: the callers learn it, the writer lives on
            log.error("telemetry commit of %d batches failed: %s", len(group), e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [e] * len(group)
        for (_request, future, loop), result in zip(group, results, strict=True):
            loop.call_soon_threadsafe(_resolve, future, result)

    @classmethod
    def _write_isolated(
        cls, conn: sqlite3.Connection, r: CommitRequest, now_ms: int
    ) -> CommitOutcome | BaseException:
        """One request in its own savepoint: a bad batch never fails its group."""
        conn.execute("SAVEPOINT one")
        try:
            result = cls._write_one(conn, r, now_ms)
        except (sqlite3.IntegrityError, OverflowError, ValueError) as e:
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            log.error("batch %s/%s could not be stored: %s", r.site_id, r.seq, e)
            return e
        conn.execute("RELEASE one")
        return result

    @staticmethod
    def _write_one(
        conn: sqlite3.Connection, r: CommitRequest, now_ms: int
    ) -> CommitOutcome | BaseException:
        cur = conn.execute(
            "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.site_id,
                r.seq,
                r.digest,
                r.key_id,
                r.sealed_ms,
                r.signed_ms,
                r.received_ms,
                now_ms,
                len(r.rows),
                len(r.quarantined),
            ),
        )
        if cur.rowcount == 0:
            row = conn.execute(
                "SELECT digest FROM batches WHERE site_id = ? AND seq = ?", (r.site_id, r.seq)
            ).fetchone()
            if row is not None and bytes(row[0]) == r.digest:
                return CommitOutcome.DUPLICATE
            return StoreConflictError(f"{r.site_id}/{r.seq} holds a different batch")
        site, seq = r.site_id, r.seq
        conn.executemany(
            "INSERT INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
            [(site, seq, a, q, t, v) for (a, q, t, v) in r.rows],
        )
        if r.quarantined:
            conn.executemany(
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        site,
                        seq,
                        m.index,
                        m.asset_id,
                        m.quantity,
                        m.ts_ms,
                        None if math.isnan(m.value) else m.value,
                        repr(m.value),
                        m.reason.value,
                        None if m.evidence is None else json.dumps(m.evidence.to_json()),
                    )
                    for m in r.quarantined
                ],
            )
        return CommitOutcome.COMMITTED


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store made by an older release up to this schema (columns added since)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(quarantine)")}
    if "evidence" not in columns:
        try:
            conn.execute("ALTER TABLE quarantine ADD COLUMN evidence TEXT")
        except sqlite3.OperationalError as e:  # another process added it just now
            if "duplicate column" not in str(e):
                raise


def _resolve(future: asyncio.Future[CommitOutcome], result: CommitOutcome | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
