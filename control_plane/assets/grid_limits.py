"""Grid-operator limits in the asset registry: each site's connection envelope and shared
feeders or transformers, the constraints the planning cycle schedules within.

Two tables in ``registry.db`` (same file, WAL, as the sites and assets):

* ``site_limits``: a site's static operating envelope at its connection point, net
  import and net export at most ``import_max_kw`` / ``export_max_kw`` [kW];
* ``feeders`` + ``feeder_sites``: a feeder or transformer and the sites behind it, with
  its own net import/export limits [kW].

A time-varying dynamic operating envelope is a profile per quarter-hour in the optimizer
(:class:`control_plane.optimizer.assets.SiteLimits`); the registry keeps the static one
the operator agreed, which the planning cycle applies to every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from control_plane.assets.model import ID_PATTERN
from security import sqlite_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS site_limits (
    site_id TEXT PRIMARY KEY REFERENCES sites(site_id),
    import_max_kw REAL NOT NULL,
    export_max_kw REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feeders (
    feeder_id TEXT PRIMARY KEY,
    import_max_kw REAL NOT NULL,
    export_max_kw REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feeder_sites (
    feeder_id TEXT NOT NULL REFERENCES feeders(feeder_id),
    site_id TEXT NOT NULL REFERENCES sites(site_id),
    PRIMARY KEY (feeder_id, site_id)
);
"""
MAX_KW = 1e7  # 10 GW: anything larger is a typo


@dataclass(frozen=True, slots=True)
class SiteEnvelope:
    site_id: str
    import_max_kw: float
    export_max_kw: float


@dataclass(frozen=True, slots=True)
class Feeder:
    feeder_id: str
    site_ids: frozenset[str]
    import_max_kw: float
    export_max_kw: float


def _kw(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of kW")
    if not (math.isfinite(value) and 0.0 <= value <= MAX_KW):
        raise ValueError(f"{name} must be within [0, {MAX_KW:g}] kW, got {value!r}")
    return float(value)


def _ident(kind: str, value: str) -> None:
    if not ID_PATTERN.match(value):
        raise ValueError(f"{kind} id {value!r} must match {ID_PATTERN.pattern}")


class GridLimits(sqlite_db.PersistentStore):
    """The grid-operator limits of ``registry.db`` (see the module docstring)."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path, _SCHEMA)

    def set_site(self, site_id: str, import_max_kw: float, export_max_kw: float) -> SiteEnvelope:
        """Set (or replace) a registered site's envelope [kW]."""
        _ident("site", site_id)
        envelope = SiteEnvelope(
            site_id, _kw("import_max_kw", import_max_kw), _kw("export_max_kw", export_max_kw)
        )
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._require_sites([site_id])
            self._conn.execute(
                "INSERT OR REPLACE INTO site_limits VALUES (?, ?, ?)",
                (site_id, envelope.import_max_kw, envelope.export_max_kw),
            )
        return envelope

    def set_feeder(
        self, feeder_id: str, site_ids: Iterable[str], import_max_kw: float, export_max_kw: float
    ) -> Feeder:
        """Set (or replace) a feeder, its sites and its limits [kW]."""
        _ident("feeder", feeder_id)
        sites = frozenset(site_ids)
        if not sites:
            raise ValueError(f"feeder {feeder_id}: at least one site is behind it")
        feeder = Feeder(
            feeder_id,
            sites,
            _kw("import_max_kw", import_max_kw),
            _kw("export_max_kw", export_max_kw),
        )
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._require_sites(sorted(sites))
            self._conn.execute(
                "INSERT OR REPLACE INTO feeders VALUES (?, ?, ?)",
                (feeder_id, feeder.import_max_kw, feeder.export_max_kw),
            )
            self._conn.execute("DELETE FROM feeder_sites WHERE feeder_id = ?", (feeder_id,))
            self._conn.executemany(
                "INSERT INTO feeder_sites VALUES (?, ?)", [(feeder_id, s) for s in sorted(sites)]
            )
        return feeder

    def _require_sites(self, site_ids: list[str]) -> None:
        for site_id in site_ids:
            _ident("site", site_id)
            row = self._conn.execute("SELECT 1 FROM sites WHERE site_id = ?", (site_id,))
            if row.fetchone() is None:
                raise ValueError(f"site {site_id} is not registered")

    def sites(self) -> tuple[SiteEnvelope, ...]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM site_limits ORDER BY site_id").fetchall()
        return tuple(SiteEnvelope(r[0], float(r[1]), float(r[2])) for r in rows)

    def feeders(self) -> tuple[Feeder, ...]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM feeders ORDER BY feeder_id").fetchall()
            members = self._conn.execute("SELECT feeder_id, site_id FROM feeder_sites").fetchall()
        behind: dict[str, set[str]] = {}
        for feeder_id, site_id in members:
            behind.setdefault(feeder_id, set()).add(site_id)
        return tuple(
            Feeder(r[0], frozenset(behind.get(r[0], ())), float(r[1]), float(r[2]))
            for r in rows
            if behind.get(r[0])
        )
