"""The temporal judge's last accepted levels on disk, so a restart does not re-anchor blindly.

One small SQLite file in the state directory (``gate_state.db``, mode 0600, WAL): a row
per (asset, level quantity) with the last level the gate accepted and its sample time.
It is written every ``save_interval_s`` and at shutdown (a snapshot: the whole table
replaced in one transaction), read once at start. A missing, corrupt or unreadable
file costs only this protection: the control plane starts, logs it and audits nothing
false (the first sample of each asset then re-anchors, as before).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from security.sqlite_db import initialize, read_transaction, write_transaction

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS levels (
    asset_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    level REAL NOT NULL,
    PRIMARY KEY (asset_id, quantity)
);
"""
Level = tuple[str, int, int, float]  # asset, level quantity, sample time [ms], level


def save_levels(path: Path, levels: Iterable[Level]) -> int:
    """Replace the saved levels with ``levels`` (one transaction). Returns how many."""
    initialize(path, SCHEMA)
    rows = [r for r in levels if math.isfinite(r[3])]
    with write_transaction(path) as conn:
        conn.execute("DELETE FROM levels")
        conn.executemany("INSERT INTO levels VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def load_levels(path: Path) -> list[Level]:
    """The saved levels; empty (and logged) when the file is missing or unreadable."""
    if not path.exists():
        return []
    try:
        with read_transaction(path) as conn:
            rows = conn.execute("SELECT asset_id, quantity, ts_ms, level FROM levels").fetchall()
    except sqlite3.Error as e:
        log.warning("gate state %s unreadable (%s): temporal tracks start fresh", path, e)
        return []
    out: list[Level] = []
    for asset_id, quantity, ts_ms, level in rows:
        typed = isinstance(asset_id, str) and isinstance(quantity, int) and isinstance(ts_ms, int)
        if typed and isinstance(level, float | int) and math.isfinite(level):
            out.append((asset_id, quantity, ts_ms, float(level)))
    return out
