"""The SQLite adapter shared by the security stores: one file, WAL, owner-only permissions.

Each operation opens its own short-lived connection in autocommit mode, so the
stores are safe to use from many threads and many processes at once; SQLite's
locking (WAL, ``busy_timeout`` 5000 ms) serialises the writers.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 5000


def initialize(db_path: Path, schema: str) -> None:
    """Create ``db_path`` (mode 0600) if missing, switch it to WAL and apply ``schema``.

    ``schema`` must be idempotent (``CREATE ... IF NOT EXISTS``).
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Create the file with its final mode; SQLite gives -wal/-shm the same mode.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    with connect(db_path) as conn:
        _enable_wal(conn)
        conn.executescript(schema)


@contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh autocommit connection with the busy timeout set; closed on exit."""
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        yield conn
    finally:
        conn.close()


@contextmanager
def write_transaction(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection inside ``BEGIN IMMEDIATE`` (the write lock taken up front); commits on exit."""
    with connect(db_path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextmanager
def read_transaction(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection inside one read transaction: every query sees the same snapshot."""
    with connect(db_path) as conn:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")


def open_persistent(db_path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """One long-lived autocommit connection for a single owner (a thread, or callers
    serialised by a lock): the file created 0600, WAL, busy timeout, ``synchronous``
    FULL (fsync on every commit) or NORMAL (fsync at checkpoints)."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("synchronous must be FULL or NORMAL")
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(
        db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enable_wal(conn)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class PersistentStore:
    """A store on one long-lived connection (:func:`open_persistent`) shared by its
    callers under ``self._lock``; ``schema`` (idempotent) is applied on opening."""

    def __init__(self, db_path: Path, schema: str) -> None:
        self._path = db_path
        self._lock = threading.Lock()
        self._conn = open_persistent(db_path)
        with self._lock:
            self._conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out other processes doing the same to a new file.

    Two processes opening one new database at once (ingest workers) can get
    "database is locked" here without SQLite's busy handler being consulted, so
    retry within the busy timeout; once any of them succeeded the mode is WAL.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
