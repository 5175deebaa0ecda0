"""The accepted demand-response constraints, in one SQLite table, so a restart keeps them.

One row per accepted OpenADR event (``event_id`` is the key: a modification replaces the
row, a cancellation or a later opt-out deletes it). Each row keeps the load reduction [kW],
the window [ms since epoch] and the baseline net import [kW] measured when the event was
accepted, so the optimizer's cap is the same after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from control_plane.markets.openadr_ven import FleetConstraint
from security.sqlite_db import connect, initialize, write_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS openadr_constraints (
    event_id            TEXT PRIMARY KEY,
    modification_number INTEGER NOT NULL,
    start_ms            INTEGER NOT NULL,
    end_ms              INTEGER NOT NULL,
    reduce_load_kw      REAL NOT NULL,
    baseline_import_kw  REAL NOT NULL,
    accepted_ms         INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class AcceptedConstraint:
    """An event the fleet opted in to: the constraint, the baseline net import [kW] it is
    measured against, the event's modification number and when it was accepted [ms]."""

    constraint: FleetConstraint
    baseline_import_kw: float
    modification_number: int
    accepted_ms: int


class ConstraintStore:
    """Accepted constraints in ``db_path`` (created 0600, WAL)."""

    def __init__(self, db_path: Path) -> None:
        self._path = Path(db_path)
        initialize(self._path, SCHEMA)

    def put(self, accepted: AcceptedConstraint) -> None:
        """Insert or replace the row of ``accepted``'s event."""
        c = accepted.constraint
        with write_transaction(self._path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO openadr_constraints VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    c.event_id,
                    accepted.modification_number,
                    c.start_ms,
                    c.end_ms,
                    c.reduce_load_kw,
                    accepted.baseline_import_kw,
                    accepted.accepted_ms,
                ),
            )

    def remove(self, event_id: str) -> bool:
        """Delete the event's row; True if there was one."""
        with write_transaction(self._path) as conn:
            cur = conn.execute("DELETE FROM openadr_constraints WHERE event_id = ?", (event_id,))
            return cur.rowcount > 0

    def all(self) -> list[AcceptedConstraint]:
        """Every accepted constraint, by window start."""
        with connect(self._path) as conn:
            rows = conn.execute(
                "SELECT event_id, modification_number, start_ms, end_ms, reduce_load_kw, "
                "baseline_import_kw, accepted_ms FROM openadr_constraints "
                "ORDER BY start_ms, event_id"
            ).fetchall()
        return [
            AcceptedConstraint(
                FleetConstraint(str(r[0]), int(r[2]), int(r[3]), float(r[4])),
                float(r[5]),
                int(r[1]),
                int(r[6]),
            )
            for r in rows
        ]

    def committed_kw(self, start_ms: int, end_ms: int, *, except_event: str = "") -> float:
        """Reduction [kW] already promised to other events whose windows overlap
        ``[start_ms, end_ms)`` (summed: a conservative bound on what is left)."""
        with connect(self._path) as conn:
            (total,) = conn.execute(
                "SELECT COALESCE(SUM(reduce_load_kw), 0) FROM openadr_constraints "
                "WHERE start_ms < ? AND end_ms > ? AND event_id != ?",
                (end_ms, start_ms, except_event),
            ).fetchone()
        return float(total)
