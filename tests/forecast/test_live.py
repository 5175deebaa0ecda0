"""The planning cycle's climatological PV forecast: clear-sky power times a monthly
quantile of the clear-sky index, zero at night, below the median by the margin."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import RegistrySnapshot
from control_plane.forecast.live import ClimatologicalPv, PvForecastSource
from control_plane.forecast.site import ForecastInputError, ForecastSite

JUNE_MIDNIGHT_BERLIN = int(datetime(2026, 5, 31, 22, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def climate() -> ClimatologicalPv:
    return ClimatologicalPv.learn(ForecastSite(), days=400)


def test_the_plan_is_zero_at_night_below_the_median_and_the_rating(
    climate: ClimatologicalPv,
) -> None:
    plan, median = climate.profile(JUNE_MIDNIGHT_BERLIN, rated_kw=10.0)
    assert len(plan) == len(median) == 96
    assert plan[0] == plan[95] == 0.0  # local midnight: the sun is down
    assert max(plan) > 0.0 and max(median) <= 10.0
    assert all(p <= m for p, m in zip(plan, median, strict=True))
    noon = 12 * 4  # 12:00 local
    assert median[noon] > 2 * plan[noon]  # P10 of the clear-sky index holds back a lot
    assert all(q <= m for q, m in zip(climate.monthly_index, climate.monthly_median, strict=True))


def test_the_source_covers_exactly_the_pv_assets_and_records_the_margin(
    climate: ClimatologicalPv,
) -> None:
    snapshot = RegistrySnapshot(
        version=1,
        sites=frozenset({"s1"}),
        assets={
            "s1-pv": Asset("s1-pv", "s1", AssetKind.PV_INVERTER, rated_p_kw=8.0),
            "s1-bat": Asset("s1-bat", "s1", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0),
        },
    )
    source = PvForecastSource(climate)
    out = source(JUNE_MIDNIGHT_BERLIN, snapshot)
    assert set(out) == {"s1-pv"} and set(source.margin_kw) == {"s1-pv"}
    assert all(m >= 0.0 for m in source.margin_kw["s1-pv"])
    assert max(out["s1-pv"]) <= 8.0


def test_a_quantile_outside_0_1_is_refused() -> None:
    with pytest.raises(ForecastInputError, match="quantile"):
        ClimatologicalPv.learn(ForecastSite(), quantile=1.5, days=30)
