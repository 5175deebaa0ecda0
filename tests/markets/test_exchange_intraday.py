"""The continuous intraday market: price-time priority, partial fills, cancel, modify, gate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import OrderRejected, OrderStatus, RejectReason
from control_plane.markets.exchanges.intraday import IntradayExchange, OrderBook
from security.clock import ManualClock
from tests.markets.conftest import berlin_ms

B, S = Side.BUY, Side.SELL
DELIVERY = berlin_ms(2026, 6, 2, 18)


def test_best_price_trades_first_at_the_resting_price() -> None:
    book = OrderBook()
    book.add("a1", "x", S, 10_000, 50.0)
    book.add("a2", "x", S, 10_000, 48.0)
    trades = book.add("b", "y", B, 15_000, 55.0)
    assert [(t.sell_order_id, t.volume_kw, t.price_eur_per_mwh) for t in trades] == [
        ("a2", 10_000, 48.0),
        ("a1", 5_000, 50.0),
    ]
    assert [(o.order_id, o.open_kw) for o in book.asks()] == [("a1", 5_000)]
    assert book.bids() == []


def test_at_one_price_the_earlier_order_trades_first() -> None:
    book = OrderBook()
    book.add("first", "x", B, 10_000, 50.0)
    book.add("second", "x", B, 10_000, 50.0)
    trades = book.add("s", "y", S, 15_000, 49.0)
    assert [(t.buy_order_id, t.volume_kw, t.price_eur_per_mwh) for t in trades] == [
        ("first", 10_000, 50.0),
        ("second", 5_000, 50.0),
    ]


def test_orders_that_do_not_cross_rest() -> None:
    book = OrderBook()
    book.add("a", "x", S, 1_000, 60.0)
    assert book.add("b", "y", B, 1_000, 59.99) == []
    assert [o.order_id for o in book.bids()] == ["b"] and [o.order_id for o in book.asks()] == ["a"]


def test_cancel_of_a_partially_filled_order_keeps_its_fills() -> None:
    book = OrderBook()
    book.add("bid", "us", B, 20_000, 50.0)
    book.add("hit", "them", S, 5_000, 45.0)
    assert book.cancel("bid") == 15_000
    order = book.orders["bid"]
    assert (order.filled_kw, order.open_kw, order.cancelled_kw) == (5_000, 0, 15_000)
    assert book.bids() == []
    assert book.cancel("bid") == 0


def test_lowering_volume_keeps_priority_a_price_change_loses_it() -> None:
    book = OrderBook()
    book.add("a", "x", S, 10_000, 50.0)
    book.add("b", "x", S, 10_000, 50.0)
    book.modify("a", 6_000, 50.0)
    assert [o.order_id for o in book.asks()] == ["a", "b"]
    book.modify("a", 6_000, 49.0)
    book.modify("a", 6_000, 50.0)
    assert [o.order_id for o in book.asks()] == ["b", "a"]
    with pytest.raises(ValueError):
        book.modify("a", 0, 50.0)


def test_a_modify_that_crosses_trades() -> None:
    book = OrderBook()
    book.add("bid", "x", B, 4_000, 40.0)
    book.add("ask", "y", S, 4_000, 45.0)
    trades = book.modify("ask", 4_000, 40.0)
    assert [(t.volume_kw, t.price_eur_per_mwh) for t in trades] == [(4_000, 40.0)]


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from([B, S]),
            st.integers(1, 50).map(lambda n: n * 100),
            st.integers(40, 60).map(float),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 60)),
        st.tuples(st.just("modify"), st.integers(0, 60), st.integers(1, 50), st.integers(40, 60)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_matching_conserves_volume(script: list[tuple[object, ...]]) -> None:
    book = OrderBook()
    trades = []
    ids: list[str] = []
    for op in script:
        if op[0] == "add":
            _, side, kw, price = op
            oid = f"o{len(ids)}"
            ids.append(oid)
            trades += book.add(oid, "p", side, kw, price)  # type: ignore[arg-type]
        elif ids and op[0] == "cancel":
            book.cancel(ids[int(op[1]) % len(ids)])  # type: ignore[call-overload]
        elif ids and op[0] == "modify":
            order = book.orders[ids[int(op[1]) % len(ids)]]  # type: ignore[call-overload]
            new_kw = order.filled_kw + int(op[2]) * 100  # type: ignore[call-overload]
            if order.open_kw:
                trades += book.modify(order.order_id, new_kw, float(op[3]))  # type: ignore[arg-type]
    traded = sum(t.volume_kw for t in trades)
    orders = book.orders.values()
    assert sum(o.filled_kw for o in orders if o.side is B) == traded
    assert sum(o.filled_kw for o in orders if o.side is S) == traded
    for o in orders:
        assert o.open_kw >= 0 and o.filled_kw >= 0 and o.cancelled_kw >= 0
        assert o.filled_kw + o.open_kw + o.cancelled_kw == o.volume_kw
    assert all(t.volume_kw > 0 for t in trades)
    bids, asks = book.bids(), book.asks()
    if bids and asks:
        assert bids[0].price_eur_per_mwh < asks[0].price_eur_per_mwh  # the book never rests crossed


def terms(**kw: object) -> OrderTerms:
    base: dict[str, object] = {
        "product": Product.INTRADAY,
        "side": Side.SELL,
        "volume_mw": 2.0,
        "price_eur_per_mwh": 80.0,
        "delivery_start_ms": DELIVERY,
    }
    base.update(kw)
    return OrderTerms(**base)  # type: ignore[arg-type]


def test_adapter_partial_fill_then_cancel() -> None:
    clock = ManualClock(berlin_ms(2026, 6, 2, 17))
    ex = IntradayExchange(clock, liquidity=False)
    ex.book(DELIVERY).add("them", "other", B, 500, 90.0)
    oid = ex.submit(terms())
    state = ex.order_status(oid)
    assert (state.status, state.filled_kw, state.open_kw) == (
        OrderStatus.PARTIALLY_FILLED,
        500,
        1_500,
    )
    [fill] = ex.fills()
    assert (fill.order_id, fill.side, fill.volume_kw, fill.price_eur_per_mwh) == (oid, S, 500, 90.0)
    ex.cancel(oid)
    state = ex.order_status(oid)
    assert (state.status, state.filled_kw, state.open_kw) == (OrderStatus.PARTIALLY_FILLED, 500, 0)
    with pytest.raises(OrderRejected) as e:
        ex.cancel(oid)
    assert e.value.reason is RejectReason.ORDER_NOT_OPEN


def test_adapter_trades_against_seeded_liquidity_and_closes_5_min_before_delivery() -> None:
    clock = ManualClock(berlin_ms(2026, 6, 2, 17, 54))
    ex = IntradayExchange(clock, seed=3)
    oid = ex.submit(terms(price_eur_per_mwh=-9999.0))  # sell at any price: hits the bids
    assert ex.order_status(oid).filled_kw > 0
    assert all(f.price_eur_per_mwh < 200 for f in ex.fills())
    clock.set(berlin_ms(2026, 6, 2, 17, 55))
    with pytest.raises(OrderRejected) as e:
        ex.submit(terms())
    assert e.value.reason is RejectReason.GATE_CLOSED


def test_adapter_modify_lowers_volume() -> None:
    ex = IntradayExchange(ManualClock(berlin_ms(2026, 6, 2, 12)), liquidity=False)
    oid = ex.submit(terms(volume_mw=3.0))
    ex.modify(oid, terms(volume_mw=1.0))
    assert ex.order_status(oid).open_kw == 1_000
    with pytest.raises(OrderRejected):
        ex.modify(oid, terms(volume_mw=1.0, side=Side.BUY))
