"""The synthetic history: determinism, DST days, PV at night, weather and price properties."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from control_plane.forecast.dataset import read_history, write_history
from control_plane.forecast.generate import COLUMNS, generate_history
from control_plane.forecast.site import ForecastInputError, ForecastSite
from control_plane.forecast.timeline import calendar, utc_steps


def test_same_seed_gives_the_same_history_and_another_seed_does_not() -> None:
    a = generate_history(20, seed=3)
    b = generate_history(20, seed=3)
    c = generate_history(20, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["load_kw"], c["load_kw"])
    assert list(a.columns) == list(COLUMNS)


@pytest.mark.parametrize(
    ("start", "steps"),
    [
        (dt.date(2024, 3, 30), [96, 92, 96]),  # spring forward on 31 March
        (dt.date(2024, 10, 26), [96, 100, 96]),  # fall back on 27 October
    ],
)
def test_local_days_have_92_96_or_100_utc_steps(start: dt.date, steps: list[int]) -> None:
    index = utc_steps(start, 3, "Europe/Berlin")
    cal = calendar(index, "Europe/Berlin")
    assert [cal.steps_in_day(d) for d in range(cal.days)] == steps
    assert str(index.tz) == "UTC"
    assert np.all(np.diff(index.asi8) == 15 * 60 * 10**9)
    local = index.tz_convert("Europe/Berlin")
    assert (local[cal.day_starts[:-1]].hour == 0).all()


def test_pv_is_zero_at_night_and_never_above_rating() -> None:
    site = ForecastSite(pv_rated_kw=50.0)
    f = generate_history(60, seed=1, site=site, start=dt.date(2024, 5, 1))
    night = f["pv_clearsky_kw"] == 0.0
    assert night.mean() > 0.25
    assert (f.loc[night, "pv_kw"] == 0.0).all()
    local_hour = pd.DatetimeIndex(f["ts_utc"]).tz_convert(site.tz).hour
    assert (f.loc[(local_hour < 3) | (local_hour >= 23), "pv_kw"] == 0.0).all()
    assert f["pv_kw"].max() <= 50.0 and f["pv_kw"].min() >= 0.0
    assert f["pv_kw"].max() > 30.0  # a clear May noon comes close to the rating


def test_clear_overcast_and_broken_days_all_occur() -> None:
    f = generate_history(365, seed=0)
    day = pd.DatetimeIndex(f["ts_utc"]).tz_convert("Europe/Berlin").date
    g = f.groupby(day)
    index = g["pv_kw"].sum() / g["pv_clearsky_kw"].sum()
    assert (index > 0.85).mean() > 0.1  # clear
    assert (index < 0.35).mean() > 0.1  # overcast
    assert ((index > 0.45) & (index < 0.75)).mean() > 0.1  # broken clouds
    # persistence across days: today's index correlates with yesterday's
    assert np.corrcoef(index.to_numpy()[1:], index.to_numpy()[:-1])[0, 1] > 0.3


def test_load_has_a_weekly_pattern_and_price_a_duck_curve() -> None:
    f = generate_history(120, seed=2)
    local = pd.DatetimeIndex(f["ts_utc"]).tz_convert("Europe/Berlin")
    weekend = local.weekday >= 5
    assert f.loc[weekend, "load_kw"].mean() < 0.95 * f.loc[~weekend, "load_kw"].mean()
    price = f["price_eur_per_mwh"]
    assert np.corrcoef(price, f["load_kw"])[0, 1] > 0.2
    assert np.corrcoef(price, f["pv_kw"])[0, 1] < -0.2
    assert (price < 0).any() and price.max() > 150.0


def test_history_round_trips_through_parquet_and_bad_files_are_refused(tmp_path: Path) -> None:
    site = ForecastSite(pv_rated_kw=42.0)
    f = generate_history(10, seed=1, site=site)
    path = tmp_path / "h.parquet"
    write_history(path, f, site, seed=1)
    back, site_back, meta = read_history(path)
    assert site_back == site and meta["seed"] == 1
    np.testing.assert_array_equal(back["pv_kw"].to_numpy(), f["pv_kw"].to_numpy())
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ForecastInputError, match="not a readable Parquet"):
        read_history(junk)


def test_invalid_site_names_the_field() -> None:
    with pytest.raises(ForecastInputError, match="pv_rated_kw"):
        ForecastSite(pv_rated_kw=-1.0)
    with pytest.raises(ForecastInputError, match="tz"):
        ForecastSite(tz="Mars/Olympus")
