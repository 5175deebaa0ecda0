"""The planning cycle's model PV source: the trained model where gated history and the
weather feed cover the horizon, the climatology (with the reason) elsewhere; zero at
night, P10 <= P50 <= rating; signed model files only."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import RegistrySnapshot
from control_plane.forecast.artifacts import save_forecaster
from control_plane.forecast.features import Target
from control_plane.forecast.generate import generate_history
from control_plane.forecast.history import GatedHistory, QuarterHourRow
from control_plane.forecast.live import ClimatologicalPv, ModelPvForecastSource
from control_plane.forecast.live_inputs import local_midnights, train_pv_model
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.train import Forecaster, TrainConfig
from control_plane.forecast.weather_feed import WeatherForecasts
from control_plane.planning import PlanningConfig
from security.refusals import ConfigError

SITE = ForecastSite()
TINY = TrainConfig(max_epochs=15, patience=5, seed=0)
QH = 900_000
# 2025-06-12 11:00 Berlin: the horizon runs to 10:45 tomorrow
START_MS = int(
    pd.Timestamp("2025-06-12 11:00", tz="Europe/Berlin").tz_convert("UTC").value // 10**6
)


@pytest.fixture(scope="module")
def model() -> Forecaster:
    return train_pv_model(SITE, days=120, config=TINY)


@pytest.fixture(scope="module")
def climate() -> ClimatologicalPv:
    return ClimatologicalPv.learn(SITE, days=60)


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    return generate_history(14, seed=5, site=SITE, start=dt.date(2025, 6, 1))


def snapshot(**ratings: float) -> RegistrySnapshot:
    assets = {a: Asset(a, "s1", AssetKind.PV_INVERTER, rated_p_kw=r) for a, r in ratings.items()}
    assets["bat"] = Asset("bat", "s1", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0)
    return RegistrySnapshot(version=1, sites=frozenset({"s1"}), assets=assets)


def fill_history(h: GatedHistory, frame: pd.DataFrame, asset: str, rated: float) -> None:
    ts = pd.DatetimeIndex(frame["ts_utc"]).asi8 // 1_000_000
    kw = frame["pv_kw"].to_numpy() * rated / SITE.pv_rated_kw
    h.write([QuarterHourRow(asset, int(t), float(v), 1) for t, v in zip(ts, kw, strict=True)], 0)


def submit_weather(w: WeatherForecasts, frame: pd.DataFrame, start_ms: int) -> None:
    index = pd.DatetimeIndex(frame["ts_utc"])
    ts = index.asi8 // 1_000_000
    m0, m1 = local_midnights(start_ms, SITE.tz)
    keep = (ts >= m0) & (ts < m1 + 96 * QH)
    sky = clear_sky(index[keep], SITE, np.full(int(keep.sum()), 15.0)).ghi_w_per_m2
    ghi = frame["nwp_clear_sky_index"].to_numpy()[keep] * sky
    temp = frame["nwp_air_temp_c"].to_numpy()[keep]
    steps = [
        {"ts_ms": int(t), "ghi_w_per_m2": float(g), "air_temp_c": float(c)}
        for t, g, c in zip(ts[keep], ghi, temp, strict=True)
    ]
    assert w.submit({"issued_ms": start_ms, "steps": steps}, start_ms).accepted


@pytest.fixture
def stores(tmp_path: Path) -> tuple[GatedHistory, WeatherForecasts]:
    h = GatedHistory(tmp_path / "history.db", retention_days=3650)
    return h, WeatherForecasts(tmp_path / "weather.db", SITE)


def test_the_model_is_used_when_history_and_weather_cover_the_horizon(
    model: Forecaster,
    climate: ClimatologicalPv,
    truth: pd.DataFrame,
    stores: tuple[GatedHistory, WeatherForecasts],
) -> None:
    history, weather = stores
    fill_history(history, truth, "big", 50.0)
    fill_history(history, truth, "small", 5.0)
    submit_weather(weather, truth, START_MS)
    source = ModelPvForecastSource(climate, history, weather, model=model)
    out = source(START_MS, snapshot(big=50.0, small=5.0))
    assert source.last_sources == {"big": "model", "small": "model"}
    assert source.last_counts["model"] == 2
    big, small = np.asarray(out["big"]), np.asarray(out["small"])
    assert len(big) == 96 and np.allclose(big, 10 * small)  # scaled to the rating
    profiles = source.profiles(START_MS, {"big": 50.0})
    plan, median = profiles["big"].plan, profiles["big"].median
    assert np.all(plan <= median + 1e-9) and np.all(median <= 50.0) and np.all(plan >= 0.0)
    index = pd.date_range(pd.Timestamp(START_MS, unit="ms", tz="UTC"), periods=96, freq="15min")
    night = clear_sky(index, SITE, np.full(96, 15.0)).pv_kw <= 0.0
    assert night.any() and np.all(median[night] == 0.0)  # never PV at night
    m1 = local_midnights(START_MS, SITE.tz)[1]
    tomorrow = (index.asi8 // 1_000_000) >= m1
    assert plan[tomorrow].max() > 0.0 and plan[~tomorrow].max() > 0.0  # both days forecast
    assert all(m >= -1e-9 for m in source.margin_kw["big"])


def test_without_weather_or_history_the_climatology_serves_with_the_reason(
    model: Forecaster,
    climate: ClimatologicalPv,
    truth: pd.DataFrame,
    stores: tuple[GatedHistory, WeatherForecasts],
) -> None:
    history, weather = stores
    source = ModelPvForecastSource(climate, history, weather, model=model)
    source(START_MS, snapshot(pv=10.0))
    assert source.last_sources == {"pv": "climatology: no weather"}
    submit_weather(weather, truth, START_MS)
    partial = truth.iloc[: len(truth) // 2 + 200]  # ~2 days of the last 7 missing
    fill_history(history, partial, "pv", 10.0)
    out = source(START_MS, snapshot(pv=10.0))
    reason = source.last_sources["pv"]
    assert reason.startswith("climatology: history ") and reason.endswith(" %"), reason
    plan, _ = climate.profile(START_MS, 10.0)
    assert out["pv"] == plan


def test_until_the_model_is_trained_the_climatology_serves(
    climate: ClimatologicalPv, stores: tuple[GatedHistory, WeatherForecasts]
) -> None:
    source = ModelPvForecastSource(climate, *stores)
    source(START_MS, snapshot(pv=10.0))
    assert source.last_sources == {"pv": "climatology: model not ready"}
    assert source.status()["model"] == "not ready"


def test_a_small_history_gap_is_filled_and_the_model_still_serves(
    model: Forecaster,
    climate: ClimatologicalPv,
    truth: pd.DataFrame,
    stores: tuple[GatedHistory, WeatherForecasts],
) -> None:
    history, weather = stores
    ts = pd.DatetimeIndex(truth["ts_utc"]).asi8 // 1_000_000
    gap = (ts >= START_MS - 2 * 86_400_000) & (ts < START_MS - 2 * 86_400_000 + 8 * QH)
    fill_history(history, truth[~gap], "pv", 10.0)  # 2 h missing two days ago
    submit_weather(weather, truth, START_MS)
    source = ModelPvForecastSource(climate, history, weather, model=model)
    source(START_MS, snapshot(pv=10.0))
    assert source.last_sources == {"pv": "model"}


# -- signed model files ---------------------------------------------------------------------


def _pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_a_signed_model_is_loaded_and_anything_else_refused_at_start(
    model: Forecaster, tmp_path: Path, stores: tuple[GatedHistory, WeatherForecasts]
) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = _pem(key, tmp_path / "forecast.pub.pem")
    good = tmp_path / "pv.gfcast"
    save_forecaster(good, model, key)

    def config(path: Path) -> PlanningConfig:
        return PlanningConfig(pv_model=str(path), pv_model_key=str(pub))

    source = config(good).pv_source(*stores)
    assert isinstance(source, ModelPvForecastSource) and source.model is not None

    unsigned = tmp_path / "unsigned.gfcast"
    save_forecaster(unsigned, model, None)
    foreign = tmp_path / "foreign.gfcast"
    save_forecaster(foreign, model, other)
    tampered = tmp_path / "tampered.gfcast"
    data = bytearray(good.read_bytes())
    data[200] ^= 0x01
    tampered.write_bytes(bytes(data))
    load = tmp_path / "load.gfcast"
    save_forecaster(load, dataclasses.replace(model, target=Target.LOAD), key)
    far = tmp_path / "far.gfcast"
    elsewhere = dataclasses.replace(SITE, latitude_deg=40.0)
    save_forecaster(far, dataclasses.replace(model, site=elsewhere), key)
    for path, words in (
        (unsigned, "UNSIGNED"),
        (foreign, "UNTRUSTED_KEY"),
        (tampered, "refused"),
        (load, "not pv"),
        (far, "not the configured location"),
    ):
        with pytest.raises(ConfigError, match=words):
            config(path).pv_source(*stores)


def test_model_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="pv_model_key"):
        PlanningConfig(pv_model="x.gfcast")
    with pytest.raises(ConfigError, match="pv_live_model"):
        PlanningConfig(pv_model="x.gfcast", pv_model_key="k.pem", pv_live_model=False)
    with pytest.raises(ConfigError, match="PEM public key"):
        PlanningConfig(pv_model="x.gfcast", pv_model_key="/nonexistent.pem").pv_source()
