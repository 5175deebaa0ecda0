"""Asset registry: which site owns which assets, with their ratings (SQLite adapter).

The ingest pipeline reads an immutable :class:`RegistrySnapshot`; operators
change the registry through the CLI, and running services reload the snapshot
when :meth:`AssetRegistry.version` changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from control_plane.assets.model import ID_PATTERN, Asset, AssetKind
from security import sqlite_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site_id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES sites(site_id),
    kind TEXT NOT NULL,
    rated_p_kw REAL NOT NULL,
    e_kwh REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_version (id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER);
INSERT OR IGNORE INTO registry_version VALUES (1, 0);
"""


@dataclass(frozen=True)
class RegistrySnapshot:
    """Immutable view used on the hot path: O(1) lookups, no I/O."""

    version: int
    assets: Mapping[str, Asset] = field(default_factory=dict)
    sites: frozenset[str] = frozenset()

    def asset(self, asset_id: str) -> Asset | None:
        return self.assets.get(asset_id)

    def assets_of(self, site_id: str) -> list[Asset]:
        return [a for a in self.assets.values() if a.site_id == site_id]


class AssetRegistry(sqlite_db.PersistentStore):
    """SQLite-backed registry; safe to share between threads and processes (WAL)."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path, _SCHEMA)

    def add_site(self, site_id: str, now_ms: int) -> None:
        if not ID_PATTERN.match(site_id):
            raise ValueError(f"site id {site_id!r} must match {ID_PATTERN.pattern}")
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT OR IGNORE INTO sites VALUES (?, ?)", (site_id, now_ms))
            self._bump()

    def add_assets(self, assets: Iterable[Asset]) -> None:
        """Register assets; an asset id already owned by another site is refused."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for a in assets:
                row = self._conn.execute(
                    "SELECT site_id FROM assets WHERE asset_id = ?", (a.asset_id,)
                ).fetchone()
                if row is not None and row[0] != a.site_id:
                    raise ValueError(f"asset {a.asset_id} already belongs to site {row[0]}")
                if (
                    self._conn.execute(
                        "SELECT 1 FROM sites WHERE site_id = ?", (a.site_id,)
                    ).fetchone()
                    is None
                ):
                    raise ValueError(f"site {a.site_id} is not registered")
                self._conn.execute(
                    "INSERT OR REPLACE INTO assets VALUES (?, ?, ?, ?, ?)",
                    (a.asset_id, a.site_id, a.kind.value, a.rated_p_kw, a.e_kwh),
                )
            self._bump()

    def site_exists(self, site_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,))
            return row.fetchone() is not None

    def version(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT v FROM registry_version").fetchone()[0])

    def snapshot(self) -> RegistrySnapshot:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                version = int(self._conn.execute("SELECT v FROM registry_version").fetchone()[0])
                sites = frozenset(r[0] for r in self._conn.execute("SELECT site_id FROM sites"))
                rows = self._conn.execute("SELECT * FROM assets").fetchall()
            finally:
                self._conn.execute("COMMIT")
        assets = {
            r[0]: Asset(
                asset_id=r[0], site_id=r[1], kind=AssetKind(r[2]), rated_p_kw=r[3], e_kwh=r[4]
            )
            for r in rows
        }
        return RegistrySnapshot(version=version, assets=MappingProxyType(assets), sites=sites)

    def _bump(self) -> None:
        self._conn.execute("UPDATE registry_version SET v = v + 1")
