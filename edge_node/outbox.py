"""Durable outbox (SQLite, WAL): every sealed, signed batch waits here until the control
plane's signed receipt says it is committed. Nothing is lost across crashes or outages;
batches drain in sequence order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from edge_node.devices.base import Reading
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security import sqlite_db
from security.envelope import EnvelopeSigner, payload_digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    envelope BLOB NOT NULL,
    signed_ms INTEGER NOT NULL,
    n_measurements INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL,
    n_measurements INTEGER NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 1);
INSERT OR IGNORE INTO counters VALUES ('sealed_measurements', 0);
INSERT OR IGNORE INTO counters VALUES ('acked_batches', 0);
INSERT OR IGNORE INTO counters VALUES ('committed_measurements', 0);
INSERT OR IGNORE INTO counters VALUES ('quarantined_measurements', 0);
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    digest: bytes
    envelope: epb.SignedEnvelope
    signed_ms: int
    n_measurements: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending_batches: int
    pending_measurements: int
    sealed_measurements: int
    acked_batches: int
    committed_measurements: int
    quarantined_measurements: int
    dead_letter_batches: int
    dead_letter_measurements: int


class Outbox:
    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self._lock = threading.Lock()
        self._conn = sqlite_db.open_persistent(path, synchronous=synchronous)
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def ensure_next_seq(self, at_least: int) -> None:
        """Never use a sequence number below ``at_least`` (the control plane's high-water mark)."""
        with self._lock:
            self._conn.execute(
                "UPDATE counters SET value = MAX(value, ?) WHERE name = 'next_seq'", (at_least,)
            )

    def seal(
        self, site_id: str, readings: list[Reading], sealed_ms: int, signer: EnvelopeSigner
    ) -> OutboxEntry:
        """Assign the next sequence number, sign, and store durably in one transaction."""
        if not readings:
            raise ValueError("cannot seal an empty batch")
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            seq = int(
                self._conn.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()[0]
            )
            batch = tpb.TelemetryBatch(
                site_id=site_id,
                seq=seq,
                sealed_ms=sealed_ms,
                measurements=[
                    tpb.Measurement(
                        asset_id=r.asset_id,
                        quantity=r.quantity,  # type: ignore[arg-type]
                        unit=r.unit,  # type: ignore[arg-type]
                        value=r.value,
                        ts_ms=r.ts_ms,
                    )
                    for r in readings
                ],
            )
            payload = batch.SerializeToString()
            envelope = signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, payload, sealed_ms)
            digest = payload_digest(payload)
            self._conn.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                (seq, digest, envelope.SerializeToString(), sealed_ms, len(readings)),
            )
            self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'next_seq'")
            self._conn.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'sealed_measurements'",
                (len(readings),),
            )
        return OutboxEntry(seq, digest, envelope, sealed_ms, len(readings))

    def pending(self, after_seq: int = 0, limit: int = 256) -> list[OutboxEntry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, digest, envelope, signed_ms, n_measurements FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            OutboxEntry(int(s), bytes(d), epb.SignedEnvelope.FromString(e), int(t), int(n))
            for s, d, e, t, n in rows
        ]

    def get(self, seq: int) -> OutboxEntry | None:
        rows = self.pending(after_seq=seq - 1, limit=1)
        return rows[0] if rows and rows[0].seq == seq else None

    def seq_of(self, digest: bytes) -> int | None:
        """Sequence number of the pending batch with this payload digest, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT seq FROM outbox WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else int(row[0])

    def resign(self, entry: OutboxEntry, signer: EnvelopeSigner, now_ms: int) -> OutboxEntry:
        """Re-sign a buffered batch with a fresh time (same payload, same digest)."""
        envelope = signer.sign(entry.envelope.payload_type, entry.envelope.payload, now_ms)
        with self._lock:
            self._conn.execute(
                "UPDATE outbox SET envelope = ?, signed_ms = ? WHERE seq = ?",
                (envelope.SerializeToString(), now_ms, entry.seq),
            )
        return OutboxEntry(entry.seq, entry.digest, envelope, now_ms, entry.n_measurements)

    def acknowledge(self, digest: bytes, committed: int, quarantined: int) -> int | None:
        """Delete the batch with this digest; returns its seq, or None if it was not pending."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute(
                "SELECT seq FROM outbox WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                return None
            self._conn.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
            for name, delta in (
                ("acked_batches", 1),
                ("committed_measurements", committed),
                ("quarantined_measurements", quarantined),
            ):
                self._conn.execute(
                    "UPDATE counters SET value = value + ? WHERE name = ?", (delta, name)
                )
        return int(row[0])

    def dead_letter(self, digest: bytes, reason: str, message: str, now_ms: int) -> int | None:
        """Move a finally refused batch out of the queue, keeping it for the operator."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute(
                "SELECT seq, envelope, n_measurements FROM outbox WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                return None
            self._conn.execute(
                "INSERT OR REPLACE INTO dead_letter VALUES (?, ?, ?, ?, ?, ?)",
                (row[0], row[1], row[2], reason, message[:500], now_ms),
            )
            self._conn.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
        return int(row[0])

    def stats(self) -> OutboxStats:
        with self._lock:
            counters = dict(self._conn.execute("SELECT name, value FROM counters").fetchall())
            pb, pm = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_measurements), 0) FROM outbox"
            ).fetchone()
            db, dm = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_measurements), 0) FROM dead_letter"
            ).fetchone()
        return OutboxStats(
            pending_batches=int(pb),
            pending_measurements=int(pm),
            sealed_measurements=int(counters["sealed_measurements"]),
            acked_batches=int(counters["acked_batches"]),
            committed_measurements=int(counters["committed_measurements"]),
            quarantined_measurements=int(counters["quarantined_measurements"]),
            dead_letter_batches=int(db),
            dead_letter_measurements=int(dm),
        )
