"""Day-ahead weather forecasts for the fleet's location, as the operator (or a provider
integration) submits them: the input the PV model needs and the control plane cannot
measure.

The document (JSON, e.g. the body of ``PUT /v1/weather``)::

    {
      "issued_ms": 1767171600000,          # int, when the forecast was issued [ms since
                                           #   epoch, UTC]; not in the future (60 s skew),
                                           #   not older than 7 days
      "steps": [                           # 1..1000 quarter-hours, strictly increasing
        {"ts_ms": 1767222000000,           # int, start of the quarter-hour [ms, UTC]:
                                           #   a multiple of 900000, within
                                           #   [now - 1 day, now + 10 days]
         "ghi_w_per_m2": 0.0,              # number, global horizontal irradiance, the
                                           #   quarter-hour's mean [W/m2], in [0, 1500]
         "air_temp_c": 3.5},               # number, air temperature [degC], in [-60, 60]
        ...
      ]
    }

No other keys are accepted anywhere; booleans are not numbers; NaN and infinities are
refused. A refused document stores nothing (:class:`SubmitResult` with a stable
:class:`WeatherRefusal` code and a one-line message naming the field); an accepted one is
stored in one transaction in SQLite (``weather.db``), one row per quarter-hour: for a
quarter-hour forecast more than once, **the newest issue wins** (an equal issue time: the
later submission). Steps more than :data:`RETENTION_DAYS` old are pruned.

:meth:`WeatherForecasts.features_for` turns the stored forecast into the PV model's inputs
(:mod:`control_plane.forecast.features`): ``nwp_clear_sky_index`` = forecast GHI over the
pvlib Ineichen clear-sky GHI at the location (:func:`control_plane.forecast.solar.clear_sky`)
clipped to the range of the training data's forecast index [:data:`CSI_MIN`,
:data:`CSI_MAX`]; at night and in low sun (clear-sky GHI below :data:`LOW_SUN_W_PER_M2`),
where the ratio means nothing, the local day's index (forecast irradiance energy over
clear-sky energy), like the training data's forecast which holds one index per day; and
``nwp_air_temp_c`` per step.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.timeline import calendar

FloatArray = NDArray[np.float64]

QUARTER_HOUR_MS = 15 * 60_000
DAY_MS = 86_400_000
MAX_STEPS = 1000
PAST_WINDOW_MS = DAY_MS  #: oldest step accepted, before now [ms]
FUTURE_WINDOW_MS = 10 * DAY_MS  #: latest step accepted, after now [ms]
ISSUE_SKEW_MS = 60_000  #: an issue time may be this far ahead of our clock [ms]
MAX_ISSUE_AGE_MS = 7 * DAY_MS  #: an issue time may be this old [ms]
GHI_MAX_W_PER_M2 = 1500.0
TEMP_MIN_C, TEMP_MAX_C = -60.0, 60.0
#: The training data's forecast clear-sky index lies in [0.12, 1.02] (weather.py).
CSI_MIN, CSI_MAX = 0.12, 1.02
#: Below this clear-sky GHI a step takes its day's index [W/m2].
LOW_SUN_W_PER_M2 = 50.0
RETENTION_DAYS = 30
_DOC_KEYS = frozenset({"issued_ms", "steps"})
_STEP_KEYS = frozenset({"ts_ms", "ghi_w_per_m2", "air_temp_c"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS weather_step (
    ts_ms INTEGER PRIMARY KEY,
    issued_ms INTEGER NOT NULL,
    ghi_w_per_m2 REAL NOT NULL,
    air_temp_c REAL NOT NULL
);
"""
_UPSERT = """
INSERT INTO weather_step (ts_ms, issued_ms, ghi_w_per_m2, air_temp_c) VALUES (?, ?, ?, ?)
ON CONFLICT (ts_ms) DO UPDATE SET
    issued_ms = excluded.issued_ms,
    ghi_w_per_m2 = excluded.ghi_w_per_m2,
    air_temp_c = excluded.air_temp_c
WHERE excluded.issued_ms >= weather_step.issued_ms
"""


class WeatherRefusal(StrEnum):
    """Stable reasons a weather document is refused. Never rename a member."""

    MALFORMED = "MALFORMED"  # not an object, unknown/missing key, wrong type
    EMPTY = "EMPTY"
    TOO_MANY_STEPS = "TOO_MANY_STEPS"
    NOT_FINITE = "NOT_FINITE"
    OUT_OF_RANGE = "OUT_OF_RANGE"  # GHI or temperature outside its physical range
    NOT_ALIGNED = "NOT_ALIGNED"  # a timestamp not on a quarter-hour
    DUPLICATE_STEP = "DUPLICATE_STEP"
    NOT_INCREASING = "NOT_INCREASING"
    OUT_OF_WINDOW = "OUT_OF_WINDOW"  # a step outside [now - 1 day, now + 10 days]
    ISSUED_IN_FUTURE = "ISSUED_IN_FUTURE"
    ISSUE_TOO_OLD = "ISSUE_TOO_OLD"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The outcome of :meth:`WeatherForecasts.submit`: ``accepted`` with the steps stored
    and the range ``first_ms``..``last_ms`` [ms], or refused with ``reason`` and a one-line
    ``message`` (safe to show the submitter)."""

    accepted: bool
    reason: WeatherRefusal | None = None
    message: str = ""
    steps: int = 0
    issued_ms: int = 0
    first_ms: int = 0
    last_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        if not self.accepted:
            assert self.reason is not None
            return {"accepted": False, "reason": self.reason.value, "message": self.message}
        return {
            "accepted": True,
            "steps": self.steps,
            "issued_ms": self.issued_ms,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


@dataclass(frozen=True, slots=True)
class WeatherFeatures:
    """The PV model's weather inputs per quarter-hour: ``nwp_clear_sky_index`` [-] and
    ``nwp_air_temp_c`` [degC] (NaN where no forecast is stored, in :meth:`window`)."""

    nwp_clear_sky_index: FloatArray
    nwp_air_temp_c: FloatArray

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.nwp_clear_sky_index).all())


@dataclass(frozen=True, slots=True)
class _Step:
    ts_ms: int
    ghi_w_per_m2: float
    air_temp_c: float


class _Refused(Exception):
    def __init__(self, reason: WeatherRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused(WeatherRefusal.MALFORMED, f"{name} must be an integer [ms]")
    return value


def _number(value: Any, name: str, lo: float, hi: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(WeatherRefusal.MALFORMED, f"{name} must be a number [{unit}]")
    v = float(value)
    if not math.isfinite(v):
        raise _Refused(WeatherRefusal.NOT_FINITE, f"{name} must be finite")
    if not lo <= v <= hi:
        raise _Refused(
            WeatherRefusal.OUT_OF_RANGE, f"{name} = {v:g} {unit} is outside [{lo:g}, {hi:g}]"
        )
    return v


def _keys(obj: Any, allowed: frozenset[str], name: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _Refused(WeatherRefusal.MALFORMED, f"{name} must be an object")
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise _Refused(WeatherRefusal.MALFORMED, f"{name}: unknown key {unknown[0]!r}")
    missing = sorted(allowed - set(obj))
    if missing:
        raise _Refused(WeatherRefusal.MALFORMED, f"{name}: missing key {missing[0]!r}")
    return obj


def parse_document(document: Any, now_ms: int) -> tuple[int, list[_Step]]:
    """The issue time [ms] and the steps of a valid document; raises :class:`_Refused`."""
    doc = _keys(document, _DOC_KEYS, "document")
    issued = _int(doc["issued_ms"], "issued_ms")
    if issued > now_ms + ISSUE_SKEW_MS:
        raise _Refused(WeatherRefusal.ISSUED_IN_FUTURE, "issued_ms is in the future")
    if issued < now_ms - MAX_ISSUE_AGE_MS:
        raise _Refused(WeatherRefusal.ISSUE_TOO_OLD, "issued_ms is more than 7 days old")
    raw = doc["steps"]
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes | bytearray):
        raise _Refused(WeatherRefusal.MALFORMED, "steps must be an array")
    if len(raw) > MAX_STEPS:
        raise _Refused(WeatherRefusal.TOO_MANY_STEPS, f"steps: at most {MAX_STEPS} allowed")
    if not raw:
        raise _Refused(WeatherRefusal.EMPTY, "steps must not be empty")
    steps: list[_Step] = []
    for i, item in enumerate(raw):
        name = f"steps[{i}]"
        step = _keys(item, _STEP_KEYS, name)
        ts = _int(step["ts_ms"], f"{name}.ts_ms")
        if ts % QUARTER_HOUR_MS:
            raise _Refused(WeatherRefusal.NOT_ALIGNED, f"{name}.ts_ms is not on a quarter-hour")
        if not now_ms - PAST_WINDOW_MS <= ts <= now_ms + FUTURE_WINDOW_MS:
            raise _Refused(
                WeatherRefusal.OUT_OF_WINDOW,
                f"{name}.ts_ms is outside [now - 1 day, now + 10 days]",
            )
        if steps and ts == steps[-1].ts_ms:
            raise _Refused(WeatherRefusal.DUPLICATE_STEP, f"{name}.ts_ms repeats the step before")
        if steps and ts < steps[-1].ts_ms:
            raise _Refused(WeatherRefusal.NOT_INCREASING, f"{name}.ts_ms is before the step before")
        ghi = _number(step["ghi_w_per_m2"], f"{name}.ghi_w_per_m2", 0.0, GHI_MAX_W_PER_M2, "W/m2")
        temp = _number(step["air_temp_c"], f"{name}.air_temp_c", TEMP_MIN_C, TEMP_MAX_C, "degC")
        steps.append(_Step(ts, ghi, temp))
    return issued, steps


class WeatherForecasts:
    """The stored day-ahead weather forecasts of ``site``'s location (see the module
    docstring). Thread-safe: one lock guards the SQLite connection."""

    def __init__(self, path: Path, site: ForecastSite) -> None:
        self.path = Path(path)
        self.site = site
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self.submitted = 0
        self.refused = 0

    def submit(self, document: Mapping[str, Any], now_ms: int) -> SubmitResult:
        """Validate ``document`` (parsed JSON) at ``now_ms`` [ms] and store it, or refuse it
        and store nothing. Blocking (one SQLite transaction)."""
        try:
            issued, steps = parse_document(document, now_ms)
        except _Refused as e:
            self.refused += 1
            return SubmitResult(False, e.reason, e.message)
        oldest = now_ms - RETENTION_DAYS * DAY_MS
        rows = [(s.ts_ms, issued, s.ghi_w_per_m2, s.air_temp_c) for s in steps]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
                self._db.execute("DELETE FROM weather_step WHERE ts_ms < ?", (oldest,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.submitted += 1
        return SubmitResult(True, None, "", len(steps), issued, steps[0].ts_ms, steps[-1].ts_ms)

    def _rows(self, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        with self._lock:
            return self._db.execute(
                "SELECT ts_ms, ghi_w_per_m2, air_temp_c FROM weather_step "
                "WHERE ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
                (start_ms, end_ms),
            ).fetchall()

    def window(self, start_ms: int, steps: int) -> WeatherFeatures:
        """The model's weather inputs for ``steps`` quarter-hours from ``start_ms`` (a
        quarter-hour boundary); NaN where no forecast is stored."""
        if start_ms % QUARTER_HOUR_MS or not 0 < steps <= 4 * MAX_STEPS:
            raise ValueError("window: start_ms must be a quarter-hour, steps within bounds")
        # whole local days around the window: a night step takes its day's index
        first = pd.Timestamp(start_ms, unit="ms", tz="UTC").tz_convert(self.site.tz).normalize()
        end = pd.Timestamp(start_ms + steps * QUARTER_HOUR_MS, unit="ms", tz="UTC")
        last = (end.tz_convert(self.site.tz) + pd.Timedelta(days=1)).normalize()
        lo_ms = int(first.tz_convert("UTC").value // 1_000_000)
        n = int((last.tz_convert("UTC").value // 1_000_000 - lo_ms) // QUARTER_HOUR_MS)
        ghi = np.full(n, np.nan)
        temp = np.full(n, np.nan)
        for ts, g, t in self._rows(lo_ms, lo_ms + n * QUARTER_HOUR_MS):
            ghi[(ts - lo_ms) // QUARTER_HOUR_MS] = g
            temp[(ts - lo_ms) // QUARTER_HOUR_MS] = t
        index = pd.date_range(pd.Timestamp(lo_ms, unit="ms", tz="UTC"), periods=n, freq="15min")
        csi = clear_sky_index(index, self.site, ghi)
        off = (start_ms - lo_ms) // QUARTER_HOUR_MS
        return WeatherFeatures(csi[off : off + steps].copy(), temp[off : off + steps].copy())

    def features_for(self, start_ms: int, steps: int) -> WeatherFeatures | None:
        """The model's weather inputs for ``steps`` quarter-hours from ``start_ms``, or None
        if any of them has no stored forecast."""
        features = self.window(start_ms, steps)
        return features if features.complete else None

    def stored_steps(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM weather_step").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def clear_sky_index(index_utc: pd.DatetimeIndex, site: ForecastSite, ghi: FloatArray) -> FloatArray:
    """Forecast clear-sky index [-] per step from forecast GHI [W/m2] (NaN = unknown), as
    the module docstring says: the step's ratio in sun, the local day's ratio in low sun and
    at night, clipped to [:data:`CSI_MIN`, :data:`CSI_MAX`]; NaN where GHI is NaN."""
    sky = clear_sky(index_utc, site, np.full(len(index_utc), 15.0)).ghi_w_per_m2
    sunny = sky >= LOW_SUN_W_PER_M2
    ratio = np.divide(ghi, sky, out=np.full(len(ghi), np.nan), where=sunny)
    day = calendar(index_utc, site.tz).day
    known = np.isfinite(ghi) & sunny
    energy = np.bincount(day, weights=np.where(known, ghi, 0.0))
    clear = np.bincount(day, weights=np.where(known, sky, 0.0))
    daily = np.divide(energy, clear, out=np.full(len(clear), np.nan), where=clear > 0.0)
    out = np.where(sunny, ratio, daily[day])
    out = np.where(np.isfinite(ghi), out, np.nan)
    # a day without any sunny forecast step (polar night, or only night steps sent)
    out = np.where(np.isfinite(ghi) & np.isnan(out), 0.5 * (CSI_MIN + CSI_MAX), out)
    return np.asarray(np.clip(out, CSI_MIN, CSI_MAX), dtype=np.float64)
