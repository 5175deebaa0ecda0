"""Alerts for SOC analysts: every gate quarantine raises (or extends) one.

One alert is one *episode*: a site whose measurements one detector keeps flagging
raises one alert, updated with a count and the latest evidence, not one alert per
batch; the episode ends when that detector has been quiet at that site for
``episode_gap_ms``, and the next flag opens a new alert. An analyst acknowledges
an alert with their identity (audited). Stored in SQLite (``alerts.db`` in the
control plane's state directory), safe to read from other processes (CLI).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.ingest.types import GatedBatch, QuarantinedMeasurement
from security import sqlite_db
from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import GridfortError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    detector TEXT NOT NULL,
    model_version TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    measurements INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    max_score REAL NOT NULL,
    threshold REAL NOT NULL,
    assets TEXT NOT NULL,        -- JSON list of asset ids
    last_evidence TEXT NOT NULL, -- JSON object
    status TEXT NOT NULL,        -- open | acknowledged
    acknowledged_by TEXT,
    acknowledged_ms INTEGER
);
CREATE INDEX IF NOT EXISTS alerts_episode ON alerts (site_id, detector, last_ms);
"""

#: A detector quiet at a site this long ends the episode [ms].
DEFAULT_EPISODE_GAP_MS = 10 * 60_000


class AlertNotFoundError(GridfortError):
    """No alert with that id."""


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    site_id: str
    detector: str
    model_version: str
    reason: str
    first_ms: int
    last_ms: int
    measurements: int
    batches: int
    max_score: float
    threshold: float
    assets: tuple[str, ...]
    last_evidence: dict[str, Any]
    status: str
    acknowledged_by: str | None
    acknowledged_ms: int | None

    def to_json(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__slots__}
        d["assets"] = list(self.assets)
        return d


@dataclass(frozen=True, slots=True)
class _Flagged:
    """What one detector flagged at one site in one batch (taken on the event loop)."""

    site_id: str
    detector: str
    now_ms: int
    model_version: str
    reason: str
    count: int
    score: float
    threshold: float
    assets: tuple[str, ...]
    evidence: dict[str, Any]
    detail: str


_STOP = object()


class AlertBook:
    """The alert store (see the module docstring).

    ``background``: :meth:`raise_from` only takes what it needs from the batch and hands
    it to one writer thread, which writes everything queued in one transaction (a flood
    of quarantines costs the event loop microseconds, not a SQLite commit each). Reads
    through this object (:meth:`list`, :meth:`get`, :meth:`acknowledge`) wait for the
    queued writes first, so they see every alert raised before them; other processes
    see them once written (milliseconds). :meth:`close` writes what is queued.
    """

    def __init__(
        self,
        path: Path,
        clock: Clock,
        audit: AuditLog | None = None,
        episode_gap_ms: int = DEFAULT_EPISODE_GAP_MS,
        *,
        background: bool = False,
    ) -> None:
        self._path = path
        self._clock = clock
        self._audit = audit
        self._gap = episode_gap_ms
        sqlite_db.initialize(path, _SCHEMA)
        self._queue: queue.Queue[object] | None = None
        self._writer: threading.Thread | None = None
        self._idle = threading.Condition()
        self._queued = 0
        self.write_errors = 0
        if background:
            self._queue = queue.Queue()
            self._writer = threading.Thread(target=self._write_loop, name="alerts", daemon=True)
            self._writer.start()

    def raise_from(self, gated: GatedBatch) -> None:
        """Open or extend one alert per detector that flagged something in ``gated``."""
        self.raise_for_site(gated.verified.batch.site_id, gated.gate_quarantined)

    def raise_for_site(self, site: str, quarantined: Sequence[QuarantinedMeasurement]) -> None:
        """Open or extend one alert per detector among the gate's verdicts ``quarantined``
        on ``site``'s measurements (rows without evidence, validation's refusals, are
        ignored). Used by :meth:`raise_from` and, for the batches ingest workers commit in
        other processes, by the store follower."""
        by_detector: dict[str, list[Any]] = {}
        for q in quarantined:
            if q.evidence is None:
                continue
            by_detector.setdefault(q.evidence.detector, []).append(q)
        if not by_detector:
            return
        now = self._clock.now_ms()
        flagged = []
        for detector, qs in by_detector.items():
            ev = qs[-1].evidence
            flagged.append(
                _Flagged(
                    site_id=site,
                    detector=detector,
                    now_ms=now,
                    model_version=ev.model_version,
                    reason=qs[0].reason.value,
                    count=len(qs),
                    score=max(q.evidence.score for q in qs),
                    threshold=ev.threshold,
                    assets=tuple(sorted({q.asset_id for q in qs})),
                    evidence=ev.to_json() | {"asset_id": qs[-1].asset_id, "value": qs[-1].value},
                    detail=ev.detail,
                )
            )
        if self._queue is None:
            self._write(flagged)
            return
        with self._idle:
            self._queued += 1
        self._queue.put(flagged)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued alert is written; False if ``timeout_s`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._queued == 0, timeout=timeout_s)

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._queue is not None and self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout=30.0)
            self._queue = None

    def _write_loop(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            items = [q.get()]
            while True:  # everything queued meanwhile goes into the same transaction
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in items)
            batches = [i for i in items if i is not _STOP]
            try:
                self._write([f for b in batches for f in b])  # type: ignore[attr-defined]
            except Exception:  # an alert store failure must never stop the writer
                self.write_errors += 1
                log.exception("alerts could not be written to %s", self._path)
            with self._idle:
                self._queued -= len(batches)
                self._idle.notify_all()
            if stop:
                return

    def _write(self, flagged: list[_Flagged]) -> None:
        if not flagged:
            return
        with sqlite_db.connect(self._path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            raised = []
            for f in flagged:
                row = conn.execute(
                    "SELECT alert_id, assets, max_score FROM alerts WHERE site_id = ? AND "
                    "detector = ? AND last_ms >= ? ORDER BY last_ms DESC LIMIT 1",
                    (f.site_id, f.detector, f.now_ms - self._gap),
                ).fetchone()
                if row is None:
                    alert_id = uuid.uuid4().hex
                    conn.execute(
                        "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL,NULL)",
                        (
                            alert_id,
                            f.site_id,
                            f.detector,
                            f.model_version,
                            f.reason,
                            f.now_ms,
                            f.now_ms,
                            f.count,
                            1,
                            f.score,
                            f.threshold,
                            json.dumps(list(f.assets)),
                            json.dumps(f.evidence),
                            "open",
                        ),
                    )
                    raised.append((alert_id, f))
                else:
                    merged = sorted(set(json.loads(row[1])) | set(f.assets))
                    conn.execute(
                        "UPDATE alerts SET last_ms = ?, measurements = measurements + ?, "
                        "batches = batches + 1, max_score = MAX(max_score, ?), assets = ?, "
                        "last_evidence = ? WHERE alert_id = ?",
                        (
                            f.now_ms,
                            f.count,
                            f.score,
                            json.dumps(merged),
                            json.dumps(f.evidence),
                            row[0],
                        ),
                    )
            conn.execute("COMMIT")
        for alert_id, f in raised:  # audited once the alert exists
            self._audited("alert_raised", alert_id, f.site_id, f.detector, f.detail)

    def _audited(self, event: str, alert_id: str, site: str, detector: str, detail: str) -> None:
        if self._audit is not None:
            self._audit.append(
                event,
                decision="deny",
                identity=site,
                reason="FDI_SUSPECTED",
                details={"alert_id": alert_id, "detector": detector, "detail": detail},
            )

    def list(
        self, *, status: str | None = None, site_id: str | None = None, limit: int = 1000
    ) -> list[Alert]:
        """Alerts, newest activity first; filtered by ``status`` and/or ``site_id``."""
        self.flush()
        if not 1 <= limit <= 100_000:
            raise ValueError("limit must be between 1 and 100000")
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if site_id is not None:
            where.append("site_id = ?")
            args.append(site_id)
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        with sqlite_db.connect(self._path) as conn:
            rows = conn.execute(sql + " ORDER BY last_ms DESC LIMIT ?", [*args, limit]).fetchall()
        return [_alert(r) for r in rows]

    def get(self, alert_id: str) -> Alert:
        self.flush()
        with sqlite_db.connect(self._path) as conn:
            row = conn.execute("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        if row is None:
            raise AlertNotFoundError(f"no alert {alert_id!r}")
        return _alert(row)

    def acknowledge(self, alert_id: str, analyst: str) -> Alert:
        """Mark an open alert acknowledged by ``analyst`` (a SPIFFE ID or name); audited.

        Atomic: of two analysts acknowledging at once, the first one is kept; acknowledging
        an already acknowledged alert changes nothing and returns it as it is.
        """
        self.flush()
        now = self._clock.now_ms()
        with sqlite_db.connect(self._path) as conn:
            cur = conn.execute(
                "UPDATE alerts SET status = 'acknowledged', acknowledged_by = ?, "
                "acknowledged_ms = ? WHERE alert_id = ? AND status = 'open'",
                (analyst, now, alert_id),
            )
        if cur.rowcount == 0:
            return self.get(alert_id)  # AlertNotFoundError if there is no such alert
        if self._audit is not None:
            self._audit.append(
                "alert_acknowledged",
                decision="allow",
                identity=analyst,
                details={"alert_id": alert_id},
            )
        return self.get(alert_id)


def _alert(r: tuple[Any, ...]) -> Alert:
    return Alert(
        alert_id=r[0],
        site_id=r[1],
        detector=r[2],
        model_version=r[3],
        reason=r[4],
        first_ms=r[5],
        last_ms=r[6],
        measurements=r[7],
        batches=r[8],
        max_score=r[9],
        threshold=r[10],
        assets=tuple(json.loads(r[11])),
        last_evidence=json.loads(r[12]),
        status=r[13],
        acknowledged_by=r[14],
        acknowledged_ms=r[15],
    )
