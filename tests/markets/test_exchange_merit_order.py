"""Merit-order clearing against hand-computed curves: marginal price, pay-as-clear, partials."""

from __future__ import annotations

import pytest

from control_plane.markets.actions import Side
from control_plane.markets.exchanges.merit_order import AuctionOrder, clear_merit_order

S, B = Side.SELL, Side.BUY


def o(oid: str, side: Side, mw: float, price: float, seq: int = 0) -> AuctionOrder:
    return AuctionOrder(oid, side, round(mw * 1000), price, seq)


def test_marginal_buy_order_is_partially_accepted_and_sets_the_price() -> None:
    # Supply 10@20, 10@50, 10@80; demand 15@100, 10@60.
    # Stack: A(20) meets X(100) 10 MW; B(50) meets X 5 MW, then Y(60) 5 MW; C(80) > Y(60): stop.
    # Cleared 20 MW; Y gets 5 of 10 MW and is marginal: price 60.
    out = clear_merit_order(
        [
            o("A", S, 10, 20),
            o("B", S, 10, 50),
            o("C", S, 10, 80),
            o("X", B, 15, 100),
            o("Y", B, 10, 60),
        ]
    )
    assert out.price_eur_per_mwh == 60
    assert out.volume_kw == 20_000
    assert dict(out.accepted_kw) == {"A": 10_000, "B": 10_000, "C": 0, "X": 15_000, "Y": 5_000}


def test_marginal_sell_order_is_partially_accepted_and_sets_the_price() -> None:
    # Supply 10@20, 10@50; demand 15@100, 5@40. B(50) > Y(40): B sells 5 of 10 MW at 50.
    out = clear_merit_order(
        [o("A", S, 10, 20), o("B", S, 10, 50), o("X", B, 15, 100), o("Y", B, 5, 40)]
    )
    assert out.price_eur_per_mwh == 50
    assert out.volume_kw == 15_000
    assert out.accepted_kw["B"] == 5_000 and out.accepted_kw["Y"] == 0


def test_exact_match_price_is_the_lowest_clearing_price() -> None:
    # 10@20 meets 10@100 exactly; the next buyer bids 40, the next seller asks 50: any price
    # in [40, 50] clears 10 MW; the lowest, set by the first rejected buy order, is 40.
    out = clear_merit_order(
        [o("A", S, 10, 20), o("B", S, 10, 50), o("X", B, 10, 100), o("Y", B, 10, 40)]
    )
    assert (out.price_eur_per_mwh, out.volume_kw) == (40, 10_000)


def test_inelastic_demand_pays_the_highest_accepted_offer() -> None:
    out = clear_merit_order(
        [
            o("tso", B, 25, 10_000),
            o("a", S, 10, 5),
            o("b", S, 10, 8),
            o("c", S, 10, 12),
            o("d", S, 5, 30),
        ]
    )
    assert out.price_eur_per_mwh == 12  # c is marginal, 5 of 10 MW accepted
    assert [out.accepted_kw[k] for k in "abcd"] == [10_000, 10_000, 5_000, 0]


def test_exact_inelastic_demand_pays_the_last_accepted_offer() -> None:
    out = clear_merit_order(
        [o("tso", B, 20, 10_000), o("a", S, 10, 5), o("b", S, 10, 8), o("c", S, 10, 12)]
    )
    assert out.price_eur_per_mwh == 8


def test_equal_prices_keep_submission_order() -> None:
    out = clear_merit_order(
        [o("late", S, 10, 30, seq=2), o("early", S, 10, 30, seq=1), o("X", B, 15, 50)]
    )
    assert out.accepted_kw["early"] == 10_000 and out.accepted_kw["late"] == 5_000
    assert out.price_eur_per_mwh == 30


def test_curves_that_do_not_cross_clear_nothing() -> None:
    out = clear_merit_order([o("A", S, 10, 50), o("X", B, 10, 40)])
    assert out.price_eur_per_mwh is None and out.volume_kw == 0
    assert set(out.accepted_kw.values()) == {0}


def test_negative_prices_clear() -> None:
    out = clear_merit_order([o("must-run", S, 30, -500), o("X", B, 10, -20), o("Y", B, 10, -60)])
    assert out.price_eur_per_mwh == -500 and out.volume_kw == 20_000


def test_duplicate_order_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        clear_merit_order([o("A", S, 1, 1), o("A", B, 1, 2)])
