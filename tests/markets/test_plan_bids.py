"""The optimizer's plan becomes bids without a kW invented: floors, sides, prices, refusals."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.plan_bids import PlanNotBiddable, bid_schedule_from_plan, whole_kw
from control_plane.optimizer.assets import STEPS
from control_plane.optimizer.market import MarketPrices, MarketRules, synthetic_prices
from control_plane.optimizer.plan import Plan

DAY = date(2026, 6, 2)
PRICES = synthetic_prices(3)
RULES = MarketRules()


def plan(p_kw: np.ndarray, reserve_kw: np.ndarray | None = None, *, bids: bool = True) -> Plan:
    reserve = np.zeros((p_kw.shape[0], 6)) if reserve_kw is None else reserve_kw
    ids = tuple(f"b{i}" for i in range(p_kw.shape[0]))
    return Plan(ids, p_kw, reserve, "rounded" if bids else "fallback", bids)


def test_net_position_per_quarter_hour_becomes_one_bid_each() -> None:
    p = np.zeros((2, STEPS))
    p[0, 10], p[1, 10] = 3000.0, 1999.9999999  # float noise just under 5000 kW: 5000
    p[0, 20] = 1234.6  # a fraction of a kW is dropped, never rounded up
    p[0, 40] = -700.0  # the fleet imports: a buy
    p[0, 50], p[1, 50] = 500.0, -500.0  # nets to zero: no bid
    reserve = np.zeros((2, 6))
    reserve[:, 2] = [1000.0, 2000.0]
    s = bid_schedule_from_plan(
        plan(p, reserve), day=DAY, prices=PRICES, rules=RULES, schedule_id="x"
    )
    starts = delivery_starts(Product.DAY_AHEAD, DAY)
    fcr = delivery_starts(Product.FCR, DAY)
    got = [
        (b.product, b.side, b.delivery_start_ms, b.volume_mw, b.price_limit_eur_per_mwh)
        for b in s.bids
    ]
    assert got == [
        (Product.DAY_AHEAD, Side.SELL, starts[10], 5.0, PRICES.energy_eur_per_mwh[10]),
        (Product.DAY_AHEAD, Side.SELL, starts[20], 1.234, PRICES.energy_eur_per_mwh[20]),
        (Product.DAY_AHEAD, Side.BUY, starts[40], 0.7, PRICES.energy_eur_per_mwh[40]),
        (Product.FCR, Side.SELL, fcr[2], 3.0, PRICES.fcr_eur_per_mw_h[2]),
    ]


def test_fallback_plan_places_no_bids() -> None:
    p = np.full((1, STEPS), 1000.0)
    s = bid_schedule_from_plan(
        plan(p, bids=False), day=DAY, prices=PRICES, rules=RULES, schedule_id="f"
    )
    assert s.bids == ()


def test_dst_day_is_refused_not_approximated() -> None:
    p = np.full((1, STEPS), 1000.0)
    with pytest.raises(PlanNotBiddable, match="92"):
        bid_schedule_from_plan(
            plan(p), day=date(2026, 3, 29), prices=PRICES, rules=RULES, schedule_id="dst"
        )


def test_negative_reserve_is_refused() -> None:
    reserve = np.zeros((1, 6))
    reserve[0, 1] = -1000.0
    with pytest.raises(PlanNotBiddable, match="negative"):
        bid_schedule_from_plan(
            plan(np.zeros((1, STEPS)), reserve),
            day=DAY,
            prices=PRICES,
            rules=RULES,
            schedule_id="n",
        )


def test_non_finite_volume_is_refused() -> None:
    with pytest.raises(PlanNotBiddable):
        whole_kw(float("nan"))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-5000, max_value=5000, allow_nan=False),
        min_size=STEPS,
        max_size=STEPS,
    ),
    st.lists(st.floats(min_value=0, max_value=8000, allow_nan=False), min_size=6, max_size=6),
)
def test_no_bid_exceeds_the_plan(energy: list[float], reserve: list[float]) -> None:
    p = np.asarray([energy])
    r = np.asarray([reserve])
    s = bid_schedule_from_plan(plan(p, r), day=DAY, prices=PRICES, rules=RULES, schedule_id="h")
    starts = {t: i for i, t in enumerate(delivery_starts(Product.DAY_AHEAD, DAY))}
    blocks = {t: i for i, t in enumerate(delivery_starts(Product.FCR, DAY))}
    for b in s.bids:
        kw = b.terms().volume_kw
        if b.product is Product.DAY_AHEAD:
            x = energy[starts[b.delivery_start_ms]]
            assert (b.side is Side.SELL) == (x > 0)
        else:
            x = reserve[blocks[b.delivery_start_ms]]
        assert kw <= abs(x) + 1e-6
        assert abs(x) - kw < 1.0  # and nothing dropped beyond the sub-kW remainder


def test_prices_must_cover_the_blocks() -> None:
    reserve = np.ones((1, 6)) * 1000.0
    short = MarketPrices(PRICES.energy_eur_per_mwh, PRICES.fcr_eur_per_mw_h[:4])
    with pytest.raises(Exception, match="fcr_eur_per_mw_h"):
        bid_schedule_from_plan(
            plan(np.zeros((1, STEPS)), reserve), day=DAY, prices=short, rules=RULES, schedule_id="p"
        )
