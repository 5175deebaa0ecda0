"""Durable log of issued commands and the edges' signed results (SQLite).

Single-site commands (setpoints, frequency-response arming) share the per-site
sequence space of ``commands``; group messages are logged once in ``groups`` (with
their group sequence, strictly increasing per control plane) and once per named site
in ``group_sites``, where the site's signed result lands.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
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
CREATE TABLE IF NOT EXISTS groups (
    group_seq INTEGER PRIMARY KEY,
    group_id TEXT NOT NULL UNIQUE,
    activation_id TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    sites INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    payload_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_sites (
    group_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    entries INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    applied INTEGER,
    decided_ms INTEGER,
    applied_p_kw REAL,
    PRIMARY KEY (group_id, site_id)
);
"""


@dataclass(frozen=True, slots=True)
class IssuedGroup:
    """A signed group message as logged: its named sites as (site_id, entries), and the
    sites it could not be handed to after all (status ``lost``; the others ``sent``)."""

    group_seq: int
    group_id: str
    activation_id: str
    issued_ms: int
    expires_ms: int
    payload_sha256: str
    sites: list[tuple[str, int]]
    lost: frozenset[str] = frozenset()


#: One site's answer to a group: (status, reason, entries applied, decided_ms, sum of
#: read-back kW, group_id, site_id).
GroupSiteResult = tuple[str, str, int, int, float, str, str]


class CommandLog:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite_db.open_persistent(path)
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(commands)")}
        if "action" not in columns:  # a log written before arming existed
            self._conn.execute(
                "ALTER TABLE commands ADD COLUMN action TEXT NOT NULL DEFAULT 'set_active_power'"
            )

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
        action: str = "set_active_power",
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO commands (site_id, seq, command_id, asset_id, p_kw, issued_ms,"
                " expires_ms, status, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (site_id, seq, command_id, asset_id, p_kw, issued_ms, expires_ms, status, action),
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

    def next_group_seq(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(group_seq), 0) FROM groups").fetchone()
        return int(row[0]) + 1

    def record_groups(self, groups: list[IssuedGroup]) -> None:
        """Group messages and their named sites, in one transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (g.group_seq, g.group_id, g.activation_id, g.issued_ms, g.expires_ms,
                         len(g.sites), sum(n for _, n in g.sites), g.payload_sha256)
                        for g in groups
                    ],
                )  # fmt: skip
                self._conn.executemany(
                    "INSERT INTO group_sites (group_id, site_id, entries, status)"
                    " VALUES (?, ?, ?, ?)",
                    [
                        (g.group_id, site, n, "lost" if site in g.lost else "sent")
                        for g in groups
                        for site, n in g.sites
                    ],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record_group_results(self, results: list[GroupSiteResult]) -> int:
        """Record sites' answers in one transaction; returns how many matched a sent entry."""
        if not results:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                before = self._conn.total_changes
                self._conn.executemany(
                    "UPDATE group_sites SET status = ?, reason = ?, applied = ?, decided_ms = ?,"
                    " applied_p_kw = ? WHERE group_id = ? AND site_id = ? AND status = 'sent'",
                    results,
                )
                matched = self._conn.total_changes - before
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return matched

    def group_status_counts(self, group_ids: list[str] | None = None) -> Counter[str]:
        where, args = "", tuple[str, ...]()
        if group_ids is not None:
            where = f" WHERE group_id IN ({','.join('?' * len(group_ids))})"
            args = tuple(group_ids)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT status, COUNT(*) FROM group_sites{where} GROUP BY status", args
            ).fetchall()
        return Counter({str(s): int(n) for s, n in rows})

    def close(self) -> None:
        with self._lock:
            self._conn.close()
