"""Quarter-hour means of *gated* active power per asset: the measured history a live
forecast reads.

Fed only from committed :class:`~control_plane.ingest.types.GatedBatch` es (the ingest
pipeline calls :meth:`GatedHistory.observe` right after it applies a batch to fleet
state) and, next to NATS ingest workers, from the same gated rows read back from the store
(:class:`~control_plane.ingest.types.StoredGatedRows`, fed by the store follower): only
the gate's ``accepted`` rows of :data:`ACTIVE_POWER` [kW, positive = generation/export]
enter, so a quarantined (possibly falsified) measurement never shapes a forecast.

Hot path. ``observe`` runs for every ingested batch, on the event loop. It only adds each
sample to a ``[sum_kw, count]`` cell of its (quarter-hour, asset) in memory: no I/O, no
allocation for a sample whose cell exists. Measured with
``python -m control_plane.forecast.history`` (200 batches of 1,000 rows, 1,000 assets, half
of the rows active power, best of 5, shared 2-core development machine): **~0.1 us per
measurement** (~10 M measurements/s on one core), 2 % of one core at 200,000
measurements/s.

Flushing. The owner calls :meth:`GatedHistory.detach_completed` on the event loop (it pops
the cells of quarter-hours that ended at least :data:`FLUSH_GRACE_MS` ago, cost per open
quarter-hour, not per sample) and hands the rows to :meth:`GatedHistory.write` in a worker
thread (``asyncio.to_thread``); :meth:`GatedHistory.flush_all` writes everything at stop.
Rows go to SQLite (``history.db``, WAL) in one transaction, keyed
``(asset_id, qh_start_ms)``.

Late samples. A sample for a quarter-hour already written is **merged**, not dropped: it
opens a new cell, and the write upserts ``sum_kw += sum, n += count``, so the stored mean is
the mean of every gated sample of the quarter-hour, whenever it arrived (and a partial
quarter-hour written at stop merges with the rest after a restart). Samples older than the
retention are dropped and counted (``dropped_expired``).

Retention: :data:`DEFAULT_RETENTION_DAYS` days; older rows are pruned at each write.
Reads (:meth:`GatedHistory.series`) see written quarter-hours only (at most the flush
interval plus the grace behind real time).
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from control_plane.ingest.types import GatedBatch, GatedRows
from gridfort.v1 import telemetry_pb2 as tpb

FloatArray = NDArray[np.float64]

#: The quantity recorded: active power [kW], positive = generation / export.
ACTIVE_POWER = int(tpb.Quantity.QUANTITY_ACTIVE_POWER)
QUARTER_HOUR_MS = 15 * 60_000
DAY_MS = 86_400_000
DEFAULT_RETENTION_DAYS = 21.0
#: A quarter-hour is written this long after it ends (samples in flight still join it) [ms].
FLUSH_GRACE_MS = 60_000
#: The longest series one read returns [steps] (60 days).
MAX_SERIES_STEPS = 60 * 96

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qh_power (
    asset_id TEXT NOT NULL,
    qh_start_ms INTEGER NOT NULL,
    sum_kw REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (asset_id, qh_start_ms)
) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO qh_power (asset_id, qh_start_ms, sum_kw, n) VALUES (?, ?, ?, ?)
ON CONFLICT (asset_id, qh_start_ms) DO UPDATE SET
    sum_kw = sum_kw + excluded.sum_kw, n = n + excluded.n
"""


@dataclass(frozen=True, slots=True)
class QuarterHourRow:
    """One quarter-hour's accumulated samples of one asset: ``sum_kw`` [kW] over ``n``."""

    asset_id: str
    qh_start_ms: int
    sum_kw: float
    n: int


class GatedHistory:
    """Quarter-hour means of gated active power [kW] per asset (see the module docstring).

    ``observe`` and ``detach_completed`` belong to one thread (the event loop); ``write``,
    ``series`` and ``close`` may be called from any thread (one lock guards SQLite).
    """

    def __init__(self, path: Path, *, retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        if not (math.isfinite(retention_days) and 1.0 <= retention_days <= 3650.0):
            raise ValueError("history retention_days must be within [1, 3650]")
        self.path = Path(path)
        self.retention_ms = int(retention_days * DAY_MS)
        # quarter-hour start [ms] -> asset id -> [sum_kw, count]
        self._open: dict[int, dict[str, list[float]]] = {}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.samples_observed = 0
        self.rows_written = 0
        self.dropped_expired = 0

    # -- hot path (event loop) ----------------------------------------------------------
    def observe(self, batch: GatedRows) -> None:
        """Add the batch's accepted active-power samples to their quarter-hour cells.

        Not idempotent (samples are summed): feed each committed row once (the store
        follower skips the batches this process's own pipeline committed)."""
        open_ = self._open
        qh_of_cells = -1
        cells: dict[str, list[float]] = {}
        seen = 0
        for asset_id, quantity, ts_ms, value in batch.accepted:
            if quantity != ACTIVE_POWER:
                continue
            qh = ts_ms - ts_ms % QUARTER_HOUR_MS
            if qh != qh_of_cells:
                cells = open_.get(qh) or open_.setdefault(qh, {})
                qh_of_cells = qh
            cell = cells.get(asset_id)
            if cell is None:
                cells[asset_id] = [value, 1.0]
            else:
                cell[0] += value
                cell[1] += 1.0
            seen += 1
        self.samples_observed += seen

    # -- flushing -----------------------------------------------------------------------
    def detach_completed(
        self, now_ms: int, keep: Callable[[str], bool] | None = None
    ) -> list[QuarterHourRow]:
        """Pop the quarter-hours that ended at least :data:`FLUSH_GRACE_MS` before
        ``now_ms`` [ms] as rows to :meth:`write` (on the thread that observes). ``keep``:
        record only the assets it accepts (e.g. the PV plants); the rest are discarded."""
        done = [qh for qh in self._open if qh + QUARTER_HOUR_MS + FLUSH_GRACE_MS <= now_ms]
        return self._detach(done, keep)

    def detach_all(self, keep: Callable[[str], bool] | None = None) -> list[QuarterHourRow]:
        """Pop every open quarter-hour, complete or not (at stop; later samples merge)."""
        return self._detach(list(self._open), keep)

    def _detach(
        self, qhs: Iterable[int], keep: Callable[[str], bool] | None
    ) -> list[QuarterHourRow]:
        rows = []
        for qh in qhs:
            for asset_id, (s, n) in self._open.pop(qh).items():
                if keep is None or keep(asset_id):
                    rows.append(QuarterHourRow(asset_id, qh, s, int(n)))
        return rows

    def write(self, rows: list[QuarterHourRow], now_ms: int) -> int:
        """Upsert ``rows`` (merging with stored quarter-hours) and prune rows older than the
        retention, in one transaction; returns the rows written. Blocking: call it in a
        worker thread."""
        oldest = now_ms - self.retention_ms
        fresh = [
            (r.asset_id, r.qh_start_ms, r.sum_kw, r.n) for r in rows if r.qh_start_ms >= oldest
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, fresh)
                self._db.execute("DELETE FROM qh_power WHERE qh_start_ms < ?", (oldest,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.dropped_expired += sum(r.n for r in rows if r.qh_start_ms < oldest)
        self.rows_written += len(fresh)
        return len(fresh)

    def flush(self, now_ms: int, keep: Callable[[str], bool] | None = None) -> int:
        """:meth:`detach_completed` and :meth:`write` in one (blocking) call."""
        return self.write(self.detach_completed(now_ms, keep), now_ms)

    def flush_all(self, now_ms: int, keep: Callable[[str], bool] | None = None) -> int:
        """Write every open quarter-hour (at stop), blocking."""
        return self.write(self.detach_all(keep), now_ms)

    # -- reads --------------------------------------------------------------------------
    def series(self, asset_id: str, start_ms: int, steps: int) -> FloatArray:
        """Mean gated active power [kW] of ``asset_id`` in each of ``steps`` quarter-hours
        from ``start_ms`` (a quarter-hour boundary); NaN where nothing was written."""
        if start_ms % QUARTER_HOUR_MS or not 0 <= steps <= MAX_SERIES_STEPS:
            raise ValueError("series: start_ms must be a quarter-hour, steps within bounds")
        out = np.full(steps, np.nan)
        end_ms = start_ms + steps * QUARTER_HOUR_MS
        with self._lock:
            rows = self._db.execute(
                "SELECT qh_start_ms, sum_kw, n FROM qh_power "
                "WHERE asset_id = ? AND qh_start_ms >= ? AND qh_start_ms < ?",
                (asset_id, start_ms, end_ms),
            ).fetchall()
        for qh, s, n in rows:
            if n > 0:
                out[(qh - start_ms) // QUARTER_HOUR_MS] = s / n
        return out

    def stored_rows(self) -> int:
        """Quarter-hour rows in the file."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM qh_power").fetchone()[0])

    def open_cells(self) -> int:
        """(asset, quarter-hour) cells held in memory, not yet written."""
        return sum(len(c) for c in self._open.values())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _benchmark(batches: int = 200, rows: int = 1000, assets: int = 1000) -> float:
    """``observe`` cost per measurement [us] on synthetic committed batches."""
    import tempfile
    import time
    from types import SimpleNamespace
    from typing import cast

    t0 = 1_767_225_600_000
    made = []
    for b in range(batches):
        accepted = [
            (f"a{(b * rows + i) % assets}", ACTIVE_POWER if i % 2 else 2, t0 + b * 5_000, 1.0 * i)
            for i in range(rows)
        ]
        made.append(cast(GatedBatch, SimpleNamespace(accepted=accepted)))
    with tempfile.TemporaryDirectory() as d:
        h = GatedHistory(Path(d) / "history.db")
        started = time.perf_counter()
        for batch in made:
            h.observe(batch)
        elapsed = time.perf_counter() - started
        h.close()
    return elapsed / (batches * rows) * 1e6


if __name__ == "__main__":
    print(f"observe: {min(_benchmark() for _ in range(5)):.3f} us per measurement")
