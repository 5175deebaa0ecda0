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


def _bids(s: object) -> list[tuple[Product, int, float, float]]:
    return [
        (b.product, b.delivery_start_ms, b.volume_mw, b.price_limit_eur_per_mwh)
        for b in s.bids  # type: ignore[attr-defined]
    ]


def test_spring_dst_day_bids_its_92_quarter_hours_and_the_smallest_reserve_per_block() -> None:
    """2026-03-29: 23 h. Plan steps 0-91 are the day (92-95 belong to the next one); the
    market's 00-04 block is 3 h (steps 0-11), so it straddles no plan block, while the
    04-08 block (steps 12-27) spans plan blocks 0 and 1: offered at the smaller reserve."""
    day = date(2026, 3, 29)
    p = np.full((1, STEPS), 1000.0)
    reserve = np.array([[3000.0, 2000.0, 0.0, 0.0, 0.0, 5000.0]])
    got = _bids(
        bid_schedule_from_plan(
            plan(p, reserve), day=day, prices=PRICES, rules=RULES, schedule_id="d"
        )
    )
    energy = [g for g in got if g[0] is Product.DAY_AHEAD]
    starts = delivery_starts(Product.DAY_AHEAD, day)
    assert len(starts) == 92 and [g[1] for g in energy] == starts  # every quarter-hour, once
    assert energy[91][3] == PRICES.energy_eur_per_mwh[91]
    fcr = {g[1]: (g[2], g[3]) for g in got if g[0] is Product.FCR}
    blocks = delivery_starts(Product.FCR, day)
    f = PRICES.fcr_eur_per_mw_h
    assert fcr[blocks[0]] == (3.0, f[0])  # steps 0-11: inside plan block 0
    assert fcr[blocks[1]] == (2.0, max(f[0], f[1]))  # steps 12-27: min over blocks 0 and 1
    assert blocks[2] not in fcr and blocks[3] not in fcr  # no reserve planned there
    # 20-24 local = steps 76-91, within plan blocks 4 (0 kW) and 5: the minimum is 0
    assert blocks[5] not in fcr


def test_autumn_dst_day_leaves_the_hour_beyond_the_plan_unbid() -> None:
    """2026-10-25: 25 h. The plan's 96 steps end at 23:00 local: the last four
    quarter-hours and the last FCR block (partly beyond the plan) get no bid."""
    day = date(2026, 10, 25)
    p = np.full((1, STEPS), -2000.0)
    reserve = np.full((1, 6), 1000.0)
    got = _bids(
        bid_schedule_from_plan(
            plan(p, reserve), day=day, prices=PRICES, rules=RULES, schedule_id="d"
        )
    )
    starts = delivery_starts(Product.DAY_AHEAD, day)
    energy = [g for g in got if g[0] is Product.DAY_AHEAD]
    assert len(starts) == 100 and [g[1] for g in energy] == starts[:96]
    blocks = delivery_starts(Product.FCR, day)
    fcr = [g[1] for g in got if g[0] is Product.FCR]
    assert fcr == blocks[:5]  # 00-04 (5 h: steps 0-19) ... 16-20; not 20-24 (steps 84-99)


def test_a_plan_of_another_length_is_refused() -> None:
    p = np.full((1, STEPS - 4), 1000.0)
    with pytest.raises(PlanNotBiddable, match="92 quarter-hours"):
        bid_schedule_from_plan(plan(p), day=DAY, prices=PRICES, rules=RULES, schedule_id="x")


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


AFRR_PRICES = synthetic_prices(3, afrr=True)


def afrr_plan(up: np.ndarray, down: np.ndarray, fcr: np.ndarray | None = None) -> Plan:
    n = up.shape[0]
    reserve = np.zeros((n, 6)) if fcr is None else fcr
    ids = tuple(f"b{i}" for i in range(n))
    return Plan(
        ids, np.zeros((n, STEPS)), reserve, "rounded", True, afrr_up_kw=up, afrr_down_kw=down
    )


def test_afrr_up_and_down_become_pos_and_neg_sell_bids_per_block() -> None:
    up = np.zeros((2, 6))
    down = np.zeros((2, 6))
    up[:, 1] = [600.0, 400.0]  # 1 MW positive aFRR in block 1
    down[0, 4] = 2000.0 - 1e-9  # float noise under 2 MW: 2 MW negative aFRR in block 4
    fcr = np.zeros((2, 6))
    fcr[1, 3] = 1000.0
    s = bid_schedule_from_plan(
        afrr_plan(up, down, fcr), day=DAY, prices=AFRR_PRICES, rules=RULES, schedule_id="a"
    )
    blocks = delivery_starts(Product.AFRR_POS, DAY)
    assert blocks == delivery_starts(Product.AFRR_NEG, DAY) == delivery_starts(Product.FCR, DAY)
    got = [(b.product, b.side, b.delivery_start_ms, b.volume_mw, b.price_limit_eur_per_mwh)
           for b in s.bids]  # fmt: skip
    assert got == [
        (Product.FCR, Side.SELL, blocks[3], 1.0, AFRR_PRICES.fcr_eur_per_mw_h[3]),
        (Product.AFRR_POS, Side.SELL, blocks[1], 1.0, AFRR_PRICES.afrr_up_eur_per_mw_h[1]),
        (Product.AFRR_NEG, Side.SELL, blocks[4], 2.0, AFRR_PRICES.afrr_down_eur_per_mw_h[4]),
    ]


def test_afrr_spring_dst_block_is_offered_at_the_smallest_reserve_it_covers() -> None:
    day = date(2026, 3, 29)  # 04-08 local = plan steps 12-27, across plan blocks 0 and 1
    up = np.array([[3000.0, 2000.0, 0.0, 0.0, 0.0, 0.0]])
    down = np.array([[0.0, 1000.0, 1000.0, 0.0, 0.0, 0.0]])
    got = _bids(
        bid_schedule_from_plan(
            afrr_plan(up, down), day=day, prices=AFRR_PRICES, rules=RULES, schedule_id="d"
        )
    )
    blocks = delivery_starts(Product.AFRR_POS, day)
    pos = {g[1]: (g[2], g[3]) for g in got if g[0] is Product.AFRR_POS}
    neg = {g[1]: (g[2], g[3]) for g in got if g[0] is Product.AFRR_NEG}
    u, d = AFRR_PRICES.afrr_up_eur_per_mw_h, AFRR_PRICES.afrr_down_eur_per_mw_h
    assert pos == {blocks[0]: (3.0, u[0]), blocks[1]: (2.0, max(u[0], u[1]))}
    # steps 12-27 hold 0 MW down in plan block 0: no bid; 08-12 = steps 28-43: blocks 1, 2
    assert neg == {blocks[2]: (1.0, max(d[1], d[2]))}


def test_negative_afrr_is_refused() -> None:
    up = np.zeros((1, 6))
    up[0, 2] = -1000.0
    with pytest.raises(PlanNotBiddable, match="negative aFRR up"):
        bid_schedule_from_plan(
            afrr_plan(up, np.zeros((1, 6))),
            day=DAY,
            prices=AFRR_PRICES,
            rules=RULES,
            schedule_id="n",
        )


def test_fallback_plan_places_no_afrr_bids() -> None:
    p = afrr_plan(np.full((1, 6), 1000.0), np.full((1, 6), 1000.0))
    fallback = Plan(p.asset_ids, p.p_kw, p.reserve_kw, "fallback", False,
                    afrr_up_kw=p.afrr_up_kw, afrr_down_kw=p.afrr_down_kw)  # fmt: skip
    s = bid_schedule_from_plan(fallback, day=DAY, prices=AFRR_PRICES, rules=RULES, schedule_id="f")
    assert s.bids == ()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=8000, allow_nan=False), min_size=6, max_size=6),
    st.lists(st.floats(min_value=0, max_value=8000, allow_nan=False), min_size=6, max_size=6),
    st.sampled_from([date(2026, 6, 2), date(2026, 3, 29), date(2026, 10, 25)]),
)
def test_no_afrr_bid_exceeds_the_plan(up: list[float], down: list[float], day: date) -> None:
    s = bid_schedule_from_plan(
        afrr_plan(np.asarray([up]), np.asarray([down])),
        day=day,
        prices=AFRR_PRICES,
        rules=RULES,
        schedule_id="h",
    )
    starts = delivery_starts(Product.AFRR_POS, day)
    day_start = delivery_starts(Product.DAY_AHEAD, day)[0]
    held = {Product.AFRR_POS: np.repeat(up, 16), Product.AFRR_NEG: np.repeat(down, 16)}
    assert {b.product for b in s.bids} <= set(held)
    for b in s.bids:
        assert b.side is Side.SELL
        k = starts.index(b.delivery_start_ms)
        first = (b.delivery_start_ms - day_start) // 900_000
        stop = starts[k + 1] if k + 1 < len(starts) else None
        last = STEPS if stop is None else (stop - day_start) // 900_000
        assert b.terms().volume_kw <= held[b.product][first:last].min() + 1e-6
