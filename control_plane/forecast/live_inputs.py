"""The PV model's inputs in the running control plane: measured history, gaps filled, and
the weather feed, laid out as the :class:`~control_plane.forecast.features.Series` the
model was trained on; and the model itself (trained here at start, or a signed file).

A rolling horizon from ``start`` (a quarter-hour) spans the rest of today and part of
tomorrow. The model forecasts one local day from a local-midnight cut-off, so two cut-offs
are used: ``m0`` (today's midnight, at or before ``start``) and ``m1`` (the next one). The
:class:`Window` covers ``[m0 - 7 days, m1 + 96 steps)``, the history both need and both
horizons. Everything is per unit of the model's plant (``model.site.pv_rated_kw``); an
asset's power is scaled by its rating on the way in and out.

Coverage rule: a cut-off's history counts as measured when at least :data:`MIN_COVERAGE`
of its *daylight* quarter-hours (clear-sky power above
:data:`~control_plane.forecast.features.DAYLIGHT_FRACTION` of the rating) in the 7 days
before it (for ``m1``: up to ``start``) have a gated mean. Gaps are filled: night steps
with 0 kW (the sun is down), daylight steps with the step's clear-sky power times its local
day's measured clear-sky index (energy over clear-sky energy of the day's measured daylight
steps; the window's, for a day without any). The part of today not yet measured
(``[start, m1)``, in ``m1``'s history) is today's P50 from the ``m0`` forecast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from control_plane.forecast.artifacts import ForecastArtifactError, load_forecaster
from control_plane.forecast.evaluate import split_starts
from control_plane.forecast.features import (
    DAYLIGHT_FRACTION,
    FRAME_COLUMNS,
    HORIZON,
    Series,
    Target,
    forecast_starts,
    normalizer,
    series_from_frame,
)
from control_plane.forecast.generate import generate_history
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.timeline import calendar
from control_plane.forecast.train import Forecaster, TrainConfig, train_forecaster
from control_plane.forecast.weather_feed import WeatherFeatures
from security.refusals import ConfigError

FloatArray = NDArray[np.float64]
#: The weather inputs of ``steps`` quarter-hours from a start [ms] (NaN where unknown).
WeatherWindow = Callable[[int, int], WeatherFeatures]

QUARTER_HOUR_MS = 15 * 60_000
DAY_MS = 86_400_000
HISTORY_MS = 7 * DAY_MS
MIN_COVERAGE = 0.9  #: share of daylight quarter-hours that must be measured [-]
DEFAULT_AIR_C = 15.0  #: air temperature where no forecast is known [degC]
TRAIN_DAYS = 730  #: generated days the start-up model is trained on
#: A loaded model's site may be this far from the configured location [deg].
MAX_SITE_OFFSET_DEG = 1.0


def local_midnights(start_ms: int, tz: str) -> tuple[int, int]:
    """The local midnights at or before and after ``start_ms`` [ms]."""
    local = pd.Timestamp(start_ms, unit="ms", tz="UTC").tz_convert(tz)
    m0 = local.normalize()
    m1 = (m0 + pd.Timedelta(days=1, hours=3)).normalize()  # +27 h: safe across DST
    return int(m0.tz_convert("UTC").value // 1_000_000), int(
        m1.tz_convert("UTC").value // 1_000_000
    )


@dataclass(frozen=True, slots=True)
class Window:
    """The steps ``[m0 - 7 days, m1 + 96)`` of one planning call, shared by all assets:
    positions ``i0`` (m0), ``i1`` (m1) and ``i_start`` (the horizon start), clear-sky power
    of the model's plant ``cs_kw`` [kW], the daylight mask, and the weather inputs filled
    over both horizons."""

    site: ForecastSite
    ts_ms: NDArray[np.int64]
    start_ms: int
    i0: int
    i1: int
    i_start: int
    cs_kw: FloatArray
    daylight: NDArray[np.bool_]
    day: NDArray[np.int64]
    nwp_csi: FloatArray
    nwp_temp: FloatArray
    series_base: Series

    @property
    def steps(self) -> int:
        return len(self.ts_ms)

    def series(self, pv_kw: FloatArray) -> Series:
        """The model's series with ``pv_kw`` [kW of the model's plant] as history."""
        values = dict(self.series_base.values)
        values["pv_kw"] = pv_kw
        return Series(values, self.ts_ms, self.series_base.cal, self.site)


def build_window(site: ForecastSite, start_ms: int, weather: WeatherWindow) -> Window:
    """The window of the horizon at ``start_ms``; ``weather(m0, steps)`` gives the weather
    inputs over ``[m0, m1 + 96)`` (NaN where unknown: filled by the local day's mean, else
    the window's)."""
    m0, m1 = local_midnights(start_ms, site.tz)
    first = m0 - HISTORY_MS
    n = (m1 - first) // QUARTER_HOUR_MS + HORIZON
    i0 = (m0 - first) // QUARTER_HOUR_MS
    features = weather(m0, n - i0)
    index = pd.date_range(pd.Timestamp(first, unit="ms", tz="UTC"), periods=n, freq="15min")
    ts_ms = np.asarray(index.asi8 // 1_000_000, dtype=np.int64)
    i1 = (m1 - first) // QUARTER_HOUR_MS
    cal = calendar(index, site.tz)
    csi = np.full(n, np.nan)
    temp = np.full(n, np.nan)
    csi[i0:] = features.nwp_clear_sky_index
    temp[i0:] = features.nwp_air_temp_c
    csi = _fill_by_day(csi, cal.day)
    temp = _fill_by_day(temp, cal.day)
    air = np.where(np.isfinite(temp), temp, DEFAULT_AIR_C)
    cs_kw = clear_sky(index, site, air).pv_kw
    zeros = np.zeros(n)
    values = dict.fromkeys(FRAME_COLUMNS, zeros)
    values.update(pv_clearsky_kw=cs_kw, nwp_air_temp_c=air, nwp_clear_sky_index=csi)
    base = Series(values, ts_ms, cal, site)
    return Window(
        site,
        ts_ms,
        start_ms,
        int(i0),
        int(i1),
        int((start_ms - first) // QUARTER_HOUR_MS),
        cs_kw,
        cs_kw > DAYLIGHT_FRACTION * site.pv_rated_kw,
        cal.day,
        csi,
        air,
        base,
    )


def _fill_by_day(x: FloatArray, day: NDArray[np.int64]) -> FloatArray:
    """NaN steps take their day's mean of known steps, else the mean of all known steps."""
    known = np.isfinite(x)
    if not known.any():
        return x
    sums = np.bincount(day, weights=np.where(known, x, 0.0))
    counts = np.bincount(day, weights=known.astype(np.float64))
    overall = float(x[known].mean())
    per_day = np.divide(sums, counts, out=np.full(len(sums), overall), where=counts > 0)
    return np.where(known, x, per_day[day])


def coverage(w: Window, measured_kw: FloatArray, lo: int, hi: int) -> float:
    """Share of daylight steps in ``[lo, hi)`` with a measurement [-] (1 if none)."""
    lit = w.daylight[lo:hi]
    if not lit.any():
        return 1.0
    return float(np.isfinite(measured_kw[lo:hi])[lit].mean())


def fill_history(w: Window, measured_kw: FloatArray) -> FloatArray:
    """``measured_kw`` [kW of the model's plant, NaN = missing] over ``[0, i_start)`` with
    the gaps filled (module docstring); steps from ``i_start`` on are left 0."""
    end = w.i_start
    m = np.clip(measured_kw[:end], 0.0, None)
    cs, lit = w.cs_kw[:end], w.daylight[:end]
    known = np.isfinite(m) & lit
    day = w.day[:end]
    energy = np.bincount(day, weights=np.where(known, m, 0.0))
    clear = np.bincount(day, weights=np.where(known, cs, 0.0))
    overall = float(m[known].sum() / max(cs[known].sum(), 1e-9)) if known.any() else 0.5
    ratio = np.divide(energy, clear, out=np.full(len(clear), overall), where=clear > 1e-9)
    gap = np.where(lit, cs * ratio[day], 0.0)
    out = np.zeros(w.steps)
    out[:end] = np.where(np.isfinite(m), m, gap)
    return np.asarray(np.clip(out, 0.0, w.site.pv_rated_kw), dtype=np.float64)


def quantile_rows(values: FloatArray, quantiles: tuple[float, ...], q: float) -> FloatArray:
    """Per step the forecast at quantile ``q`` from ``values`` (..., quantiles, steps),
    linear between the model's quantiles and clamped outside them."""
    qs = np.asarray(quantiles)
    if q <= qs[0]:
        return np.asarray(values[..., 0, :])
    if q >= qs[-1]:
        return np.asarray(values[..., -1, :])
    k = int(np.searchsorted(qs, q))
    a = (q - qs[k - 1]) / (qs[k] - qs[k - 1])
    return np.asarray((1.0 - a) * values[..., k - 1, :] + a * values[..., k, :])


# -- the model --------------------------------------------------------------------------


def train_pv_model(
    site: ForecastSite,
    *,
    days: int = TRAIN_DAYS,
    seed: int = 0,
    config: TrainConfig | None = None,
) -> Forecaster:
    """The PV model trained on ``days`` of generated history at ``site`` (deterministic;
    a few seconds on one core), split in time as ``gridfort forecast eval`` does."""
    series = series_from_frame(generate_history(days, seed=seed, site=site), site)
    return train_on(series, config or TrainConfig(seed=seed))


def train_on(series: Series, config: TrainConfig) -> Forecaster:
    """The PV model trained on the cut-offs of ``series`` (the last 20 % held out)."""
    train_s, val_s, _ = split_starts(forecast_starts(series))
    norm = normalizer(series, Target.PV, int(val_s[0]))
    return train_forecaster(series, Target.PV, norm, train_s, val_s, config)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; :class:`ConfigError` otherwise."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"planning.pv_model_key: cannot read a PEM public key from {path}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"planning.pv_model_key: {path} is not an Ed25519 public key")
    return key


def load_pv_model(path: Path, key_path: Path, site: ForecastSite) -> Forecaster:
    """A signed PV model (``*.gfcast``) for ``site``'s location; anything else (unsigned,
    tampered, another key, another target or location, no P50) is a :class:`ConfigError`."""
    key = load_public_key(key_path)
    try:
        model = load_forecaster(path, key)
    except ForecastArtifactError as e:
        raise ConfigError(f"planning.pv_model: {e}") from None
    if model.target is not Target.PV:
        raise ConfigError(f"planning.pv_model: {path} forecasts {model.target.value}, not pv")
    ms = model.site
    far = math.hypot(ms.latitude_deg - site.latitude_deg, ms.longitude_deg - site.longitude_deg)
    if far > MAX_SITE_OFFSET_DEG or ms.tz != site.tz:
        raise ConfigError(
            f"planning.pv_model: {path} was trained for ({ms.latitude_deg}, "
            f"{ms.longitude_deg}, {ms.tz}), not the configured location"
        )
    if not any(math.isclose(q, 0.5) for q in model.config.quantiles):
        raise ConfigError(f"planning.pv_model: {path} has no P50 quantile")
    return model
