"""PV forecasts for the running planning cycle: the trained quantile model where its
inputs are known, a climatological forecast where they are not.

:class:`ModelPvForecastSource` (the planning cycle's source): per PV asset, when the
asset's gated history (:mod:`control_plane.forecast.history`) covers the 7 days the model
reads (coverage rule in :mod:`control_plane.forecast.live_inputs`) and the weather feed
(:mod:`control_plane.forecast.weather_feed`) covers the whole 96-step horizon, the trained
PV model (:mod:`control_plane.forecast.train`) at the configured quantile (P10 by default,
the margin rule of :mod:`control_plane.forecast.margin`), scaled to the asset's rating;
otherwise the climatological forecast below. ``last_sources`` names the source of every
asset after each call.

:class:`ClimatologicalPv` / :class:`PvForecastSource`: each PV asset at its clear-sky power
over the horizon (pvlib: solar position and Ineichen clear sky at the fleet's location,
plane-of-array power of a plant the size of the asset's rating) times a *quantile of the
clear-sky index* for that calendar month, learned from
:func:`control_plane.forecast.generate.generate_history` at the same location (daylight
steps only). With the default P10 the plan holds back ``P50 - P10`` per step. Stated
plainly: this knows the season and the hour, not tomorrow's clouds; it is conservative by
construction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from control_plane.assets.model import AssetKind
from control_plane.assets.registry import RegistrySnapshot
from control_plane.forecast.features import HORIZON, Target, build_inputs
from control_plane.forecast.generate import generate_history
from control_plane.forecast.live_inputs import (
    MIN_COVERAGE,
    QUARTER_HOUR_MS,
    Window,
    build_window,
    coverage,
    fill_history,
    quantile_rows,
    train_pv_model,
)
from control_plane.forecast.site import ForecastInputError, ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.train import Forecaster, TrainConfig
from control_plane.forecast.weather_feed import WeatherFeatures

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]

STEPS = 96
STEP = pd.Timedelta(minutes=15)
CLIMATE_DAYS = 730
#: Air temperature assumed for the cell-temperature derate when no forecast is known [degC].
DEFAULT_AIR_C = 15.0


@dataclass(frozen=True, slots=True)
class ClimatologicalPv:
    """Monthly quantiles of the clear-sky index at ``site`` (index 0 = January) [-]."""

    site: ForecastSite
    quantile: float
    monthly_index: tuple[float, ...]
    monthly_median: tuple[float, ...]

    @classmethod
    def learn(
        cls, site: ForecastSite, *, quantile: float = 0.1, days: int = CLIMATE_DAYS, seed: int = 0
    ) -> ClimatologicalPv:
        """Learn the monthly quantiles from generated history at ``site`` (~1 s)."""
        if not 0.0 < quantile < 1.0:
            raise ForecastInputError(f"quantile must be in (0, 1), got {quantile!r}")
        frame = generate_history(days, seed=seed, site=site)
        day = frame["pv_clearsky_kw"].to_numpy() > 0.05 * site.pv_rated_kw
        months = frame["ts_utc"].dt.tz_convert(site.tz).dt.month.to_numpy()
        csi = frame["clear_sky_index"].to_numpy()
        low, mid = [], []
        for m in range(1, 13):
            values = csi[day & (months == m)]
            low.append(float(np.quantile(values, quantile)) if values.size else 0.0)
            mid.append(float(np.quantile(values, 0.5)) if values.size else 0.0)
        return cls(site, quantile, tuple(low), tuple(mid))

    def profile(
        self, start_ms: int, rated_kw: float
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The planned (quantile) and the median PV power [kW] per step of the 96-step
        horizon from ``start_ms``, for a plant of ``rated_kw``."""
        site = replace(self.site, pv_rated_kw=rated_kw)
        index = pd.date_range(pd.Timestamp(start_ms, unit="ms", tz="UTC"), periods=STEPS, freq=STEP)
        sky = clear_sky(index, site, np.full(STEPS, DEFAULT_AIR_C))
        months = index.tz_convert(site.tz).month.to_numpy() - 1
        low = np.asarray(self.monthly_index)[months]
        mid = np.asarray(self.monthly_median)[months]
        plan = np.clip(sky.pv_kw * low, 0.0, rated_kw)
        median = np.clip(sky.pv_kw * mid, 0.0, rated_kw)
        return tuple(float(v) for v in plan), tuple(float(v) for v in median)


class PvForecastSource:
    """The planning cycle's PV source: every PV asset of the registry snapshot, planned at
    the climatological quantile (see the module docstring). ``margin_kw`` after a call
    holds the median minus the plan per asset [kW per step], for the record."""

    def __init__(self, climate: ClimatologicalPv) -> None:
        self.climate = climate
        self.margin_kw: dict[str, tuple[float, ...]] = {}

    def __call__(
        self, start_ms: int, registry: RegistrySnapshot
    ) -> Mapping[str, tuple[float, ...]]:
        out: dict[str, tuple[float, ...]] = {}
        margins: dict[str, tuple[float, ...]] = {}
        cache: dict[float, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        for asset in registry.assets.values():
            if asset.kind is not AssetKind.PV_INVERTER:
                continue
            if asset.rated_p_kw not in cache:
                cache[asset.rated_p_kw] = self.climate.profile(start_ms, asset.rated_p_kw)
            plan, median = cache[asset.rated_p_kw]
            out[asset.asset_id] = plan
            margins[asset.asset_id] = tuple(m - p for m, p in zip(median, plan, strict=True))
        self.margin_kw = margins
        return out


class HistoryReader(Protocol):
    """Measured quarter-hour means [kW] (:class:`control_plane.forecast.history.GatedHistory`)."""

    def series(self, asset_id: str, start_ms: int, steps: int) -> FloatArray: ...


class WeatherReader(Protocol):
    """Stored weather forecasts (:class:`control_plane.forecast.weather_feed.WeatherForecasts`)."""

    def window(self, start_ms: int, steps: int) -> WeatherFeatures: ...


MODEL = "model"


@dataclass(frozen=True, slots=True)
class PvProfile:
    """One asset's horizon: ``plan`` (the planned quantile) and ``median`` (P50) [kW per
    step], and ``source`` (``"model"`` or ``"climatology: <why>"``)."""

    plan: FloatArray
    median: FloatArray
    source: str


class ModelPvForecastSource:
    """The planning cycle's PV source (see the module docstring): the trained model per
    asset where history and weather cover it, else ``climate``.

    ``model`` is None until :meth:`train` (run it in a worker thread) or the caller sets a
    loaded one; meanwhile every asset is planned on the climatology. After each call,
    ``last_sources`` maps each PV asset to its source, ``last_counts`` counts them and
    ``margin_kw`` holds P50 minus the plan per asset [kW per step].
    """

    def __init__(
        self,
        climate: ClimatologicalPv,
        history: HistoryReader,
        weather: WeatherReader,
        *,
        model: Forecaster | None = None,
        quantile: float = 0.1,
        min_coverage: float = MIN_COVERAGE,
    ) -> None:
        if not 0.0 < quantile < 1.0 or not 0.0 < min_coverage <= 1.0:
            raise ForecastInputError("quantile must be in (0, 1), min_coverage in (0, 1]")
        self.climate = climate
        self.site = climate.site
        self.history = history
        self.weather = weather
        self.model = model
        self.quantile = quantile
        self.min_coverage = min_coverage
        self.last_sources: dict[str, str] = {}
        self.last_counts: Counter[str] = Counter()
        self.margin_kw: dict[str, tuple[float, ...]] = {}
        self.training_error: str | None = None

    def train(self, *, days: int = 730, seed: int = 0, config: TrainConfig | None = None) -> None:
        """Train the model on generated history at the site (blocking, a few seconds: run
        it in a worker thread; the climatology serves until it is set)."""
        try:
            self.model = train_pv_model(self.site, days=days, seed=seed, config=config)
        except Exception as e:  # planning goes on with the climatology; say why
            self.training_error = f"{type(e).__name__}: {e}"
            log.exception("PV model training failed; planning PV on the climatology")
            return
        log.info("PV model trained: %s", self.model.metadata)

    def __call__(
        self, start_ms: int, registry: RegistrySnapshot
    ) -> Mapping[str, tuple[float, ...]]:
        ratings = {
            a.asset_id: float(a.rated_p_kw)
            for a in registry.assets.values()
            if a.kind is AssetKind.PV_INVERTER
        }
        profiles = self.profiles(start_ms, ratings)
        self.last_sources = {k: p.source for k, p in profiles.items()}
        self.last_counts = Counter(self.last_sources.values())
        self.margin_kw = {
            k: tuple(float(v) for v in p.median - p.plan) for k, p in profiles.items()
        }
        return {k: tuple(float(v) for v in p.plan) for k, p in profiles.items()}

    def profiles(self, start_ms: int, ratings: Mapping[str, float]) -> dict[str, PvProfile]:
        """Plan and median per asset of ``ratings`` (asset id -> rated power [kW]) for the
        96 steps from ``start_ms`` (a quarter-hour) [ms]."""
        if start_ms % QUARTER_HOUR_MS:
            raise ForecastInputError("start_ms must be on a quarter-hour")
        reason = "model not ready" if self.model is None else None
        found: dict[str, PvProfile] = {}
        why: dict[str, str] = {}
        if self.model is not None and ratings:
            try:
                found, why, reason = self._model_profiles(self.model, start_ms, ratings)
            except Exception as e:  # never let a forecast stop the plan
                log.exception("PV model forecast failed; planning PV on the climatology")
                found, reason = {}, f"model error ({type(e).__name__})"
        out: dict[str, PvProfile] = {}
        cache: dict[float, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        for asset_id, rated in ratings.items():
            if asset_id in found:
                out[asset_id] = found[asset_id]
                continue
            if rated not in cache:
                cache[rated] = self.climate.profile(start_ms, rated)
            plan, median = cache[rated]
            because = reason or why.get(asset_id, "no model forecast")
            out[asset_id] = PvProfile(
                np.asarray(plan), np.asarray(median), f"climatology: {because}"
            )
        return out

    def _model_profiles(
        self, model: Forecaster, start_ms: int, ratings: Mapping[str, float]
    ) -> tuple[dict[str, PvProfile], dict[str, str], str | None]:
        """The model's profiles of the assets whose history is covered, why the others are
        not, or the reason that applies to all (no weather)."""
        horizon = self.weather.window(start_ms, HORIZON)
        if not horizon.complete:
            return {}, {}, "no weather"
        w = build_window(model.site, start_ms, self.weather.window)
        why: dict[str, str] = {}
        unit = model.site.pv_rated_kw
        measured: dict[str, FloatArray] = {}
        for asset_id, rated in ratings.items():
            kw = self.history.series(asset_id, int(w.ts_ms[0]), w.i_start) * (unit / rated)
            full = np.full(w.steps, np.nan)
            full[: w.i_start] = kw
            # the 7 days before m0, and before m1 (measured up to the horizon start)
            share = min(coverage(w, full, 0, w.i0), coverage(w, full, w.i1 - w.i0, w.i_start))
            if share < self.min_coverage:
                why[asset_id] = f"history {100.0 * share:.0f} %"
                continue
            measured[asset_id] = full
        if not measured:
            return {}, why, None
        ids = list(measured)
        filled = {a: fill_history(w, measured[a]) for a in ids}
        today = self._predict(model, w, [filled[a] for a in ids], w.i0)  # (n, q, 96)
        mid = _median_index(model)
        for k, a in enumerate(ids):  # the rest of today: today's P50, in m1's history
            end = min(w.i1, w.i0 + HORIZON)
            filled[a][w.i_start : end] = today[k, mid, w.i_start - w.i0 : end - w.i0]
        tomorrow = self._predict(model, w, [filled[a] for a in ids], w.i1)
        return (
            {
                a: self._compose(w, today[k], tomorrow[k], ratings[a] / unit, ratings[a], model)
                for k, a in enumerate(ids)
            },
            why,
            None,
        )

    def _predict(
        self, model: Forecaster, w: Window, pv_kw: list[FloatArray], cut: int
    ) -> FloatArray:
        """Quantile forecasts [kW of the model's plant], (assets, quantiles, HORIZON), of
        one forward pass over all assets from cut-off step ``cut``."""
        starts = np.asarray([cut], dtype=np.int64)
        parts = [build_inputs(w.series(pv), Target.PV, model.norm, starts) for pv in pv_kw]
        day_x = np.concatenate([p.day_x for p in parts])
        step_x = np.concatenate([p.step_x for p in parts])
        multiplier = np.concatenate([p.multiplier for p in parts])
        with torch.no_grad():
            model.net.eval()
            raw = model.net(
                torch.from_numpy(day_x.astype(np.float32)),
                torch.from_numpy(step_x.astype(np.float32)),
            ).numpy()
        out = np.clip(raw.astype(np.float64), 0.0, None)  # a clear-sky index is never < 0
        kw = model.norm.center + model.norm.scale * out * multiplier[..., None]
        return np.asarray(np.transpose(np.clip(kw, 0.0, None), (0, 2, 1)), dtype=np.float64)

    def _compose(
        self,
        w: Window,
        today: FloatArray,
        tomorrow: FloatArray,
        scale: float,
        rated: float,
        model: Forecaster,
    ) -> PvProfile:
        """The rolling horizon from today's and tomorrow's forecasts, in the asset's kW."""
        steps = w.i_start + np.arange(HORIZON)
        rows = np.zeros((len(model.config.quantiles), HORIZON))
        first = steps < w.i1
        t0 = steps[first] - w.i0
        ok = t0 < HORIZON  # the 25th hour of an autumn DST day: night, stays 0
        idx = np.flatnonzero(first)[ok]
        rows[:, idx] = today[:, t0[ok]]
        rows[:, ~first] = tomorrow[:, steps[~first] - w.i1]
        rows = np.clip(rows * scale, 0.0, rated)
        rows[:, w.cs_kw[steps] <= 0.0] = 0.0  # never PV at night
        plan = quantile_rows(rows, model.config.quantiles, self.quantile)
        median = rows[_median_index(model)]
        return PvProfile(plan, median, MODEL)

    def status(self) -> dict[str, object]:
        """For operators: the model's state and the sources of the last call."""
        return {
            "model": "ready" if self.model is not None else "not ready",
            "training_error": self.training_error,
            "quantile": self.quantile,
            "sources": dict(self.last_counts),
        }


def _median_index(model: Forecaster) -> int:
    qs = model.config.quantiles
    return min(range(len(qs)), key=lambda i: abs(qs[i] - 0.5))
