"""Durable log of issued commands and the edges' signed results (SQLite)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from security import sqlite_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    site_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    command_id TEXT NOT NULL UNIQUE,
    asset_id TEXT NOT NULL,
    p_kw REAL NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    decided_ms INTEGER,
    applied_p_kw REAL,
    PRIMARY KEY (site_id, seq)
);
"""


class CommandLog:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite_db.open_persistent(path)
        self._conn.executescript(_SCHEMA)

    def next_seq(self, site_id: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM commands WHERE site_id = ?", (site_id,)
            ).fetchone()
        return int(row[0]) + 1

    def record_issued(
        self,
        *,
        site_id: str,
        seq: int,
        command_id: str,
        asset_id: str,
        p_kw: float,
        issued_ms: int,
        expires_ms: int,
        status: str,
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO commands (site_id, seq, command_id, asset_id, p_kw, issued_ms,"
                " expires_ms, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (site_id, seq, command_id, asset_id, p_kw, issued_ms, expires_ms, status),
            )

    def record_result(
        self,
        *,
        site_id: str,
        command_id: str,
        status: str,
        reason: str,
        decided_ms: int,
        applied_p_kw: float,
    ) -> bool:
        """Record an edge's answer; False if no such command was issued to that site."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE commands SET status = ?, reason = ?, decided_ms = ?, applied_p_kw = ?"
                " WHERE site_id = ? AND command_id = ? AND status = 'sent'",
                (status, reason, decided_ms, applied_p_kw, site_id, command_id),
            )
            return cur.rowcount == 1

    def status_counts(self, site_ids: list[str] | None = None) -> Counter[str]:
        where, args = "", tuple[str, ...]()
        if site_ids is not None:
            where = f" WHERE site_id IN ({','.join('?' * len(site_ids))})"
            args = tuple(site_ids)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT status, COUNT(*) FROM commands{where} GROUP BY status", args
            ).fetchall()
        return Counter({str(s): int(n) for s, n in rows})

    def close(self) -> None:
        with self._lock:
            self._conn.close()
