"""The store follower: fleet state follows the batches other processes committed.

With NATS ingest workers (``gridfort control-plane ingest-worker``), a batch is gated and
committed in whichever process consumed it; the store (``telemetry.db``, SQLite in WAL
mode, shared by every process on the host) is the durable truth. The follower tails the
store's ``measurements`` (accepted, gated rows) and ``quarantine`` (refused rows, with the
gate's evidence for the FDI gate's verdicts) tables by rowid, every ``interval_s``, and
applies the rows to this process's :class:`~control_plane.state.FleetState` exactly as
the pipeline does (accepted values, an older sample never overwriting a newer one; only
the gate's quarantines mark an asset suspect), then to the same commit observers (the PV
history), and hands the gate's verdicts, per site, to the gate observers (the alert book:
a worker raises no alerts itself, so the SOC sees its sites' FDI alerts from here).
Rows reach it as :class:`~control_plane.ingest.types.StoredGatedRows`: read only,
from a store that holds nothing but gated rows.

Own commits. The rows this process's pipeline committed were applied already; the
pipeline records them in a :class:`~control_plane.store.commit_ledger.CommitLedger` and
the follower skips them (the PV history sums samples: it must see each row once).

Start and restart. The follower starts at the tables' current end and, once, replays up
to ``replay_rows`` of the newest rows of each table into fleet state only (not into the
observers: the PV history already holds what the previous run saw), so a restarted
control plane plans with the latest gated values and keeps recent suspect marks instead
of waiting for fresh telemetry. The replay is bounded by rows (rowid ranges: an index
read), not by time: an asset that reported only before the window stays unknown until its
next measurement.

Without commit observers (no PV history), fleet state needs only the newest sample per
(asset, quantity) and applying a row twice changes nothing: the new measurement rows are
then grouped in SQLite and only one row per asset is applied (:meth:`_poll_grouped`,
about 6x cheaper per row). With observers, rows are followed one by one:
reads run in a worker thread in chunks of ``chunk_rows`` per table, up to
``max_chunks`` per interval; rows are decoded there and applied on the event loop. A read
error is logged and retried at the next interval; a malformed row is skipped, counted by
reason and logged. :meth:`StoreFollower.status` reports progress and lag (rows behind the
end of each table).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard, cast

from control_plane.assets.model import CANONICAL_UNIT
from control_plane.ingest.types import (
    GatedRows,
    GateEvidence,
    MeasurementRow,
    QuarantinedMeasurement,
    StoredGatedRows,
)
from control_plane.state import FleetState
from control_plane.store.commit_ledger import CommitLedger
from control_plane.store.telemetry_store import StoreTail, TelemetryStore
from security.refusals import Reason
from security.tasks import reap

log = logging.getLogger(__name__)

#: Called with a site and the FDI gate's verdicts on its measurements (the alert book).
GateObserver = Callable[[str, list[QuarantinedMeasurement]], object]

DEFAULT_INTERVAL_S = 1.0
#: Rows read per table and chunk.
DEFAULT_CHUNK_ROWS = 10_000
#: Chunks read per interval at most (a follower behind catches up over several intervals).
DEFAULT_MAX_CHUNKS = 20
#: Measurement rows grouped per poll at most when no commit observer needs every row.
DEFAULT_MAX_GROUPED_ROWS = 2_000_000
#: Newest rows of each table replayed into fleet state at start.
DEFAULT_REPLAY_ROWS = 200_000
#: Placeholder evidence for a gate verdict whose stored evidence cannot be parsed: the
#: row still marks its asset suspect (fail closed).
UNREADABLE_EVIDENCE = GateEvidence(
    "store", "", math.nan, math.nan, (), "the gate's evidence could not be read from the store"
)

_QUANTITIES = frozenset(CANONICAL_UNIT)

# -- pure decoding (no I/O) ----------------------------------------------------------------


def decode_measurement(row: tuple[object, ...]) -> MeasurementRow | str:
    """A ``measurements`` row of :meth:`TelemetryStore.tail` as a gated row, or the name of
    the field that makes it malformed."""
    _rowid, _site, _seq, asset_id, quantity, ts_ms, value = row
    if not isinstance(asset_id, str) or not asset_id:
        return "asset_id"
    if not _is_int(quantity) or quantity not in _QUANTITIES:
        return "quantity"
    if not _is_int(ts_ms):
        return "ts_ms"
    number = _finite(value)
    if number is None:
        return "value"
    return (asset_id, quantity, ts_ms, number)


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (SQLite REAL columns may hand back ints)."""
    if type(value) not in (int, float):
        return None
    number = float(cast(float, value))
    return number if math.isfinite(number) else None


def decode_quarantine(row: tuple[object, ...]) -> tuple[QuarantinedMeasurement | None, str]:
    """A ``quarantine`` row of :meth:`TelemetryStore.tail` and the malformed field's name
    (``""`` if none). A gate verdict whose evidence is unreadable is kept, with
    :data:`UNREADABLE_EVIDENCE` (it must still mark its asset suspect)."""
    _rowid, _site, _seq, idx, asset_id, quantity, ts_ms, value, reason, evidence = row
    if not isinstance(asset_id, str) or not asset_id:
        return None, "asset_id"
    if not _is_int(ts_ms):
        return None, "ts_ms"
    if not _is_int(idx) or not _is_int(quantity):
        return None, "index"
    if not isinstance(reason, str):
        return None, "reason"
    try:
        why = Reason(reason)
    except ValueError:
        return None, "reason"
    # NaN is stored as NULL; an infinite value as itself (validation refused it)
    number = math.nan if value is None else value
    if type(number) not in (int, float):
        return None, "value"
    problem = ""
    judged: GateEvidence | None = None
    if evidence is not None:
        judged = _evidence(evidence)
        if judged is None:
            judged, problem = UNREADABLE_EVIDENCE, "evidence"
    value_f = float(cast(float, number))
    return QuarantinedMeasurement(idx, asset_id, quantity, ts_ms, value_f, why, judged), problem


def _evidence(raw: object) -> GateEvidence | None:
    """The gate's evidence from its stored JSON (:meth:`GateEvidence.to_json`), or None."""
    if not isinstance(raw, str):
        return None
    try:
        doc = json.loads(raw)
        flagged = doc.get("flagged", [])
        evidence = GateEvidence(
            detector=str(doc["detector"]),
            model_version=str(doc["model_version"]),
            score=float(doc["score"]),
            threshold=float(doc["threshold"]),
            flagged=tuple(str(f) for f in flagged),
            detail=str(doc.get("detail", "")),
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return evidence


@dataclass(frozen=True, slots=True)
class DecodedTail:
    """A :class:`StoreTail` decoded in the reading thread: per row its rowid, ``(site_id,
    seq)`` and the decoded row (or the malformed field's name)."""

    measurements: list[tuple[int, tuple[object, object], MeasurementRow | str]]
    quarantine: list[tuple[int, tuple[object, object], QuarantinedMeasurement | None, str]]
    end_measurements: int
    end_quarantine: int


def decode_tail(tail: StoreTail) -> DecodedTail:
    measurements = [
        (cast(int, r[0]), (r[1], r[2]), decode_measurement(r)) for r in tail.measurements
    ]
    quarantine = [(cast(int, r[0]), (r[1], r[2]), *decode_quarantine(r)) for r in tail.quarantine]
    return DecodedTail(measurements, quarantine, tail.end_measurements, tail.end_quarantine)


# -- the adapter ---------------------------------------------------------------------------


@dataclass
class FollowerStats:
    polls: int = 0
    measurements_applied: int = 0
    quarantine_applied: int = 0
    rows_replayed: int = 0
    rows_skipped_own: int = 0
    measurement_rows_grouped: int = 0
    read_errors: int = 0
    last_error: str = ""
    malformed: Counter[str] = field(default_factory=Counter)


class StoreFollower:
    """Applies the rows other processes commit to ``state`` and the observers (see module)."""

    def __init__(
        self,
        store: TelemetryStore,
        state: FleetState,
        *,
        ledger: CommitLedger | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        replay_rows: int = DEFAULT_REPLAY_ROWS,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError("interval_s must be > 0")
        if chunk_rows < 1 or max_chunks < 1 or replay_rows < 0:
            raise ValueError("chunk_rows and max_chunks must be >= 1, replay_rows >= 0")
        self._store = store
        self._state = state
        self.ledger = ledger
        self.interval_s = interval_s
        self.chunk_rows = chunk_rows
        self.max_chunks = max_chunks
        self.replay_rows = replay_rows
        self._observers: list[Callable[[GatedRows], object]] = []
        self._gate_observers: list[GateObserver] = []
        # next rows to read are above these rowids; None until the start read succeeded
        self._after_m: int | None = None
        self._after_q = 0
        self._end_m = 0
        self._end_q = 0
        # (ledger checkpoint, end rowids read after it): forget the own batches through the
        # checkpoint once the cursors passed those ends
        self._marks: deque[tuple[int, int, int]] = deque()
        self.stats = FollowerStats()
        self._task: asyncio.Task[None] | None = None

    def add_observer(self, observer: Callable[[GatedRows], object]) -> None:
        """Call ``observer`` with the rows of other processes' commits, right after fleet
        state applied them (on the event loop; like the pipeline's commit observers)."""
        self._observers.append(observer)

    def add_gate_observer(self, observer: GateObserver) -> None:
        """Call ``observer(site_id, verdicts)`` with the FDI gate's verdicts (quarantine rows
        with evidence) in other processes' commits, per site, after fleet state applied
        them (the alert book: a worker raises no alerts itself). Not for the rows replayed
        at start: the run before raised those."""
        self._gate_observers.append(observer)

    @property
    def started(self) -> bool:
        return self._after_m is not None

    @property
    def lag_rows(self) -> tuple[int, int]:
        """Rows behind the end of ``measurements`` and ``quarantine`` at the last read."""
        if self._after_m is None:
            return (0, 0)
        return (max(0, self._end_m - self._after_m), max(0, self._end_q - self._after_q))

    async def start(self) -> None:
        """Replay the newest rows into fleet state, then follow every ``interval_s``."""
        await self.poll()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await reap(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception:  # never let the follower die
                log.exception("store follower: poll failed")

    async def poll(self) -> None:
        """One interval: start (replay) if not started yet, else apply what was committed
        since the last poll, up to ``max_chunks`` chunks."""
        if self._after_m is None:
            await self._replay()
            return
        if not self._observers:
            await self._poll_grouped()
            return
        checkpoint = None if self.ledger is None else self.ledger.checkpoint()
        before = (self.stats.measurements_applied, self.stats.quarantine_applied)
        self.stats.polls += 1
        for chunk in range(self.max_chunks):
            tail = await self._read(self._after_m, self._after_q, self.chunk_rows)
            if tail is None:
                return
            if chunk == 0 and checkpoint is not None:
                # own batches settled before this read have their rows at or below its ends
                self._marks.append((checkpoint, tail.end_measurements, tail.end_quarantine))
            caught_up = self._take(tail)
            self._forget_passed()
            if caught_up is not False:  # at the end, or at a pending own commit
                break
        applied = (self.stats.measurements_applied, self.stats.quarantine_applied)
        if applied != before:
            log.debug(
                "store follower: %d measurements and %d quarantine rows applied, lag %s rows",
                applied[0] - before[0],
                applied[1] - before[1],
                self.lag_rows,
            )

    async def _poll_grouped(self) -> None:
        """One interval without commit observers: fleet state needs only the newest sample
        per (asset, quantity), and applying a row twice changes nothing, so the new
        measurement rows (own ones included) are grouped in SQLite and only the result is
        applied; quarantine rows (the gate's verdicts: suspect marks, alerts) are followed
        row by row as in :meth:`poll`. Costs per asset instead of per row: what lets the
        control plane follow workers that commit hundreds of thousands of rows/s."""
        assert self._after_m is not None
        checkpoint = None if self.ledger is None else self.ledger.checkpoint()
        self.stats.polls += 1
        after_m = self._after_m
        try:
            ends, upto, latest = await asyncio.to_thread(
                self._read_grouped, after_m, self._after_q, self.chunk_rows
            )
        except Exception as e:  # sqlite3.Error, OSError, a closed store: retry next interval
            self._read_failed(e)
            return
        good: list[MeasurementRow] = []
        for row in latest:
            decoded = decode_measurement((0, "", 0, *row))
            if isinstance(decoded, str):
                self._malformed("measurements", 0, decoded)
            else:
                good.append(decoded)
        if good:
            self._state.apply(StoredGatedRows.from_store(good, []))
            self.stats.measurements_applied += len(good)
        self.stats.measurement_rows_grouped += upto - after_m
        if checkpoint is not None:
            self._marks.append((checkpoint, ends.end_measurements, ends.end_quarantine))
        self._after_m = upto  # the grouped rows are applied; _take keeps it
        self._take(ends)  # the quarantine rows (``ends`` holds no measurement rows)
        self._forget_passed()

    def _read_grouped(
        self, after_m: int, after_q: int, limit: int
    ) -> tuple[DecodedTail, int, list[tuple[object, ...]]]:
        """The quarantine rows and table ends, the rowid the grouped read goes up to, and
        the newest sample per (asset, quantity) up to it."""
        tail = decode_tail(self._store.tail(after_m, after_q, limit, measurements=False))
        upto = min(tail.end_measurements, after_m + DEFAULT_MAX_GROUPED_ROWS)
        latest = self._store.latest_since(after_m, upto) if upto > after_m else []
        return tail, upto, latest

    def _read_failed(self, e: Exception) -> None:
        self.stats.read_errors += 1
        self.stats.last_error = f"{type(e).__name__}: {e}"
        log.warning(
            "store follower: reading the telemetry store failed (%s); retrying in %.1f s",
            self.stats.last_error,
            self.interval_s,
        )

    async def _read(self, after_m: int, after_q: int, limit: int) -> DecodedTail | None:
        try:
            return await asyncio.to_thread(self._read_decoded, after_m, after_q, limit)
        except Exception as e:  # sqlite3.Error, OSError, a closed store: retry next interval
            self._read_failed(e)
            return None

    def _read_decoded(self, after_m: int, after_q: int, limit: int) -> DecodedTail:
        return decode_tail(self._store.tail(after_m, after_q, limit))

    async def _replay(self) -> None:
        checkpoint = None if self.ledger is None else self.ledger.checkpoint()
        ends = await self._read(0, 0, 0)
        if ends is None:
            return
        end_m, end_q = ends.end_measurements, ends.end_quarantine
        after_m, after_q = max(0, end_m - self.replay_rows), max(0, end_q - self.replay_rows)
        while after_m < end_m or after_q < end_q:
            tail = await self._read(after_m, after_q, self.chunk_rows)
            if tail is None:
                break  # the replay is a convenience: follow from the end regardless
            good: list[MeasurementRow] = []
            for rowid, _key, row in tail.measurements:
                if rowid > end_m:
                    break
                if isinstance(row, str):
                    self._malformed("measurements", rowid, row)
                else:
                    good.append(row)
            gated: list[QuarantinedMeasurement] = []
            for rowid, _key, q, problem in tail.quarantine:
                if rowid > end_q:
                    break
                if problem:
                    self._malformed("quarantine", rowid, problem)
                if q is not None:
                    gated.append(q)
            self._state.apply(StoredGatedRows.from_store(good, gated))
            self.stats.rows_replayed += len(good) + len(gated)
            after_m = min(end_m, tail.measurements[-1][0]) if tail.measurements else end_m
            after_q = min(end_q, tail.quarantine[-1][0]) if tail.quarantine else end_q
        self._after_m, self._after_q, self._end_m, self._end_q = end_m, end_q, end_m, end_q
        if checkpoint is not None:  # own batches committed before the start: passed
            self._marks.append((checkpoint, end_m, end_q))
            self._forget_passed()
        log.info(
            "store follower: following telemetry.db from rowids %d/%d; %d newest rows replayed",
            end_m,
            end_q,
            self.stats.rows_replayed,
        )

    def _take(self, tail: DecodedTail) -> bool | None:
        """Apply one decoded chunk; True when it reached the end of both tables, None when
        it stopped at a pending own commit (its rows wait for the next poll), False when
        more rows are waiting."""
        assert self._after_m is not None
        ledger = self.ledger
        stopped = False
        accepted: list[MeasurementRow] = []
        after_m = self._after_m
        for rowid, (site, seq), row in tail.measurements:
            if ledger is not None and ledger.is_pending(site, seq):
                stopped = True
                break
            after_m = rowid
            if ledger is not None and ledger.is_own(site, seq):
                self.stats.rows_skipped_own += 1
            elif isinstance(row, str):
                self._malformed("measurements", rowid, row)
            else:
                accepted.append(row)
        quarantined: list[QuarantinedMeasurement] = []
        verdicts: dict[str, list[QuarantinedMeasurement]] = {}
        after_q = self._after_q
        for rowid, (site, seq), q, problem in tail.quarantine:
            if ledger is not None and ledger.is_pending(site, seq):
                stopped = True
                break
            after_q = rowid
            if ledger is not None and ledger.is_own(site, seq):
                self.stats.rows_skipped_own += 1
                continue
            if problem:
                self._malformed("quarantine", rowid, problem)
            if q is not None:
                quarantined.append(q)
                if q.evidence is not None:
                    verdicts.setdefault(str(site), []).append(q)
        self._after_m, self._after_q = after_m, after_q
        self._end_m, self._end_q = tail.end_measurements, tail.end_quarantine
        if accepted or quarantined:
            rows = StoredGatedRows.from_store(accepted, quarantined)
            self._state.apply(rows)
            self.stats.measurements_applied += len(accepted)
            self.stats.quarantine_applied += len(quarantined)
            for observe in self._observers:
                try:
                    observe(rows)
                except Exception:  # an observer must never stop the follower
                    log.exception("store follower: a commit observer failed")
        for site, qs in verdicts.items():
            for raise_alert in self._gate_observers:
                try:
                    raise_alert(site, qs)
                except Exception:  # an observer must never stop the follower
                    log.exception("store follower: a gate observer failed")
        if stopped:
            return None
        return after_m >= tail.end_measurements and after_q >= tail.end_quarantine

    def _forget_passed(self) -> None:
        """Forget the own batches whose rows every cursor has passed (see ``_marks``)."""
        marks, ledger = self._marks, self.ledger
        after_m = self._after_m if self._after_m is not None else -1
        while marks and marks[0][1] <= after_m and marks[0][2] <= self._after_q:
            checkpoint, _m, _q = marks.popleft()
            if ledger is not None:
                ledger.forget_through(checkpoint)

    def _malformed(self, table: str, rowid: int, problem: str) -> None:
        """Count a malformed row (skipped, or for unreadable gate evidence kept with
        :data:`UNREADABLE_EVIDENCE`); log the first few of each kind, then every 1000th."""
        self.stats.malformed[problem] += 1
        n = self.stats.malformed[problem]
        if n <= 10 or n % 1000 == 0:
            what = "kept, still marks its asset suspect" if problem == "evidence" else "skipped"
            log.warning(
                "store follower: %s row %d %s: malformed %s (%d so far)",
                table,
                rowid,
                what,
                problem,
                n,
            )

    def status(self) -> dict[str, object]:
        """Progress and lag, for ``GET /v1/status`` (``transports.nats.follower``)."""
        s = self.stats
        lag_m, lag_q = self.lag_rows
        return {
            "started": self.started,
            "interval_s": self.interval_s,
            "polls": s.polls,
            "measurements_applied": s.measurements_applied,
            "quarantine_applied": s.quarantine_applied,
            "rows_replayed": s.rows_replayed,
            "rows_skipped_own": s.rows_skipped_own,
            "measurement_rows_grouped": s.measurement_rows_grouped,
            "lag_rows": {"measurements": lag_m, "quarantine": lag_q},
            "malformed": dict(sorted(s.malformed.items())),
            "read_errors": s.read_errors,
            "last_error": s.last_error or None,
        }
