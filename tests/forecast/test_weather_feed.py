"""The weather feed: hostile documents are refused with a stable reason and store nothing;
valid ones are stored (newest issue wins) and become the PV model's inputs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.weather_feed import (
    CSI_MAX,
    CSI_MIN,
    QUARTER_HOUR_MS,
    WeatherForecasts,
    WeatherRefusal,
)

SITE = ForecastSite()
NOW = 1_780_264_800_000  # 2026-05-31 22:00 UTC = local midnight in Berlin (June 1)
DAY = 96


def doc(n: int = DAY, *, start: int = NOW, issued: int = NOW, ghi: float = 100.0) -> dict[str, Any]:
    return {
        "issued_ms": issued,
        "steps": [
            {"ts_ms": start + k * QUARTER_HOUR_MS, "ghi_w_per_m2": ghi, "air_temp_c": 12.5}
            for k in range(n)
        ],
    }


@pytest.fixture
def store(tmp_path: Path) -> WeatherForecasts:
    return WeatherForecasts(tmp_path / "weather.db", SITE)


def _with(step: int, key: str, value: Any) -> dict[str, Any]:
    d = doc(4)
    d["steps"][step][key] = value
    return d


HOSTILE: list[tuple[str, Any, WeatherRefusal]] = [
    ("not an object", [1, 2], WeatherRefusal.MALFORMED),
    ("unknown key", {**doc(1), "site": "x"}, WeatherRefusal.MALFORMED),
    ("missing issue", {"steps": doc(1)["steps"]}, WeatherRefusal.MALFORMED),
    ("issue as string", {**doc(1), "issued_ms": str(NOW)}, WeatherRefusal.MALFORMED),
    ("issue as bool", {**doc(1), "issued_ms": True}, WeatherRefusal.MALFORMED),
    ("steps not an array", {**doc(1), "steps": "abc"}, WeatherRefusal.MALFORMED),
    ("steps as an object", {**doc(1), "steps": {"ts_ms": NOW}}, WeatherRefusal.MALFORMED),
    ("step not an object", {**doc(1), "steps": [NOW]}, WeatherRefusal.MALFORMED),
    ("step unknown key", _with(1, "dni", 3.0), WeatherRefusal.MALFORMED),
    ("ts as float", _with(0, "ts_ms", float(NOW)), WeatherRefusal.MALFORMED),
    ("ghi as string", _with(2, "ghi_w_per_m2", "100"), WeatherRefusal.MALFORMED),
    ("temp as bool", _with(2, "air_temp_c", False), WeatherRefusal.MALFORMED),
    ("temp as null", _with(2, "air_temp_c", None), WeatherRefusal.MALFORMED),
    ("empty", {**doc(1), "steps": []}, WeatherRefusal.EMPTY),
    ("oversized", doc(1001), WeatherRefusal.TOO_MANY_STEPS),
    ("NaN GHI", _with(3, "ghi_w_per_m2", float("nan")), WeatherRefusal.NOT_FINITE),
    ("infinite temp", _with(0, "air_temp_c", float("inf")), WeatherRefusal.NOT_FINITE),
    ("negative GHI", _with(1, "ghi_w_per_m2", -1.0), WeatherRefusal.OUT_OF_RANGE),
    ("GHI above 1500", _with(1, "ghi_w_per_m2", 1500.5), WeatherRefusal.OUT_OF_RANGE),
    ("temp below -60", _with(1, "air_temp_c", -61), WeatherRefusal.OUT_OF_RANGE),
    ("temp above 60", _with(1, "air_temp_c", 60.1), WeatherRefusal.OUT_OF_RANGE),
    ("unaligned", _with(2, "ts_ms", NOW + 2 * QUARTER_HOUR_MS + 1), WeatherRefusal.NOT_ALIGNED),
    ("duplicate", _with(2, "ts_ms", NOW + QUARTER_HOUR_MS), WeatherRefusal.DUPLICATE_STEP),
    ("decreasing", _with(2, "ts_ms", NOW - QUARTER_HOUR_MS), WeatherRefusal.NOT_INCREASING),
    ("far future", doc(1, start=NOW + 10 * 86_400_000 + QUARTER_HOUR_MS), WeatherRefusal.OUT_OF_WINDOW),
    ("far past", doc(1, start=NOW - 86_400_000 - QUARTER_HOUR_MS), WeatherRefusal.OUT_OF_WINDOW),
    ("issued in the future", doc(1, issued=NOW + 3_600_000), WeatherRefusal.ISSUED_IN_FUTURE),
    ("issued long ago", doc(1, issued=NOW - 8 * 86_400_000), WeatherRefusal.ISSUE_TOO_OLD),
]  # fmt: skip


@pytest.mark.parametrize(("name", "document", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_documents_are_refused_and_lose_nothing_stored(
    store: WeatherForecasts, name: str, document: Any, reason: WeatherRefusal
) -> None:
    good = store.submit(doc(DAY, ghi=200.0), NOW)
    assert good.accepted and good.steps == DAY
    before = store.window(NOW, DAY)
    result = store.submit(document, NOW)
    assert not result.accepted and result.reason is reason, result
    assert result.message and "\n" not in result.message
    assert result.to_json()["reason"] == reason.value
    after = store.window(NOW, DAY)
    assert store.stored_steps() == DAY
    np.testing.assert_array_equal(before.nwp_clear_sky_index, after.nwp_clear_sky_index)
    np.testing.assert_array_equal(before.nwp_air_temp_c, after.nwp_air_temp_c)


def test_the_message_names_the_step_and_field(store: WeatherForecasts) -> None:
    result = store.submit(_with(1, "ghi_w_per_m2", 2000), NOW)
    assert result.message == "steps[1].ghi_w_per_m2 = 2000 W/m2 is outside [0, 1500]"


def test_a_refusal_leaves_the_submitted_document_untouched(store: WeatherForecasts) -> None:
    document = _with(3, "ghi_w_per_m2", float("nan"))
    snapshot = copy.deepcopy(document["steps"][:3])
    store.submit(document, NOW)
    assert document["steps"][:3] == snapshot


def test_the_newest_issue_wins_per_step_and_an_older_one_never_overwrites(
    store: WeatherForecasts,
) -> None:
    noon = NOW + 48 * QUARTER_HOUR_MS  # 12:00 local
    assert store.submit(doc(DAY, issued=NOW - 3_600_000, ghi=300.0), NOW).accepted
    assert store.submit(doc(8, start=noon, issued=NOW, ghi=600.0), NOW).accepted
    assert store.submit(doc(DAY, issued=NOW - 7_200_000, ghi=50.0), NOW).accepted  # older
    with store._lock:
        rows = dict(store._db.execute("SELECT ts_ms, ghi_w_per_m2 FROM weather_step").fetchall())
    assert rows[noon] == 600.0 and rows[noon + 8 * QUARTER_HOUR_MS] == 300.0 and rows[NOW] == 300.0


def test_the_clear_sky_index_follows_the_forecast_ghi_and_nights_take_the_day(
    store: WeatherForecasts,
) -> None:
    index = pd.date_range(pd.Timestamp(NOW, unit="ms", tz="UTC"), periods=DAY, freq="15min")
    sky = clear_sky(index, SITE, np.full(DAY, 15.0)).ghi_w_per_m2
    document = {
        "issued_ms": NOW,
        "steps": [
            {"ts_ms": NOW + k * QUARTER_HOUR_MS, "ghi_w_per_m2": 0.6 * sky[k], "air_temp_c": 20.0}
            for k in range(DAY)
        ],
    }
    assert store.submit(document, NOW).accepted
    features = store.features_for(NOW, DAY)
    assert features is not None
    csi = features.nwp_clear_sky_index
    assert np.allclose(csi, 0.6)  # sunny steps by ratio, night steps the day's ratio
    assert np.all(features.nwp_air_temp_c == 20.0)
    assert np.all((csi >= CSI_MIN) & (csi <= CSI_MAX))


def test_features_are_none_unless_the_whole_horizon_is_covered(store: WeatherForecasts) -> None:
    assert store.features_for(NOW, DAY) is None
    assert store.submit(doc(DAY - 1), NOW).accepted
    assert store.features_for(NOW, DAY) is None  # the last step is missing
    assert store.features_for(NOW, DAY - 1) is not None
    window = store.window(NOW, DAY)
    assert np.isnan(window.nwp_clear_sky_index[-1]) and not window.complete


def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    first = WeatherForecasts(tmp_path / "weather.db", SITE)
    assert first.submit(doc(DAY), NOW).accepted
    first.close()
    second = WeatherForecasts(tmp_path / "weather.db", SITE)
    assert second.features_for(NOW, DAY) is not None
    second.close()
