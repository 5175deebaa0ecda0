"""The simulated day-ahead auction: gate closure, increments, DST days, pay-as-clear fills."""

from __future__ import annotations

import itertools
from datetime import date

import pytest

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import (
    OrderRejected,
    OrderStatus,
    RejectReason,
    UnknownOrder,
    delivery_starts,
)
from control_plane.markets.exchanges.day_ahead import DayAheadAuction
from control_plane.markets.exchanges.sealed_bid import SyntheticOrder
from control_plane.markets.gate_closure import quarter_hours_in_day
from security.clock import ManualClock
from tests.markets.conftest import berlin_ms

DELIVERY = berlin_ms(2026, 6, 2, 18)
BEFORE_GATE = berlin_ms(2026, 6, 1, 11, 59)
AFTER_GATE = berlin_ms(2026, 6, 1, 12, 0)


def hand_curves(product: Product, start: int) -> list[SyntheticOrder]:
    # Others: supply 10@20 and 10@50; demand 15@100 and 10@60.
    return [
        SyntheticOrder(Side.SELL, 10_000, 20.0),
        SyntheticOrder(Side.SELL, 10_000, 50.0),
        SyntheticOrder(Side.BUY, 15_000, 100.0),
        SyntheticOrder(Side.BUY, 10_000, 60.0),
    ]


def da(**kw: object) -> OrderTerms:
    base: dict[str, object] = {
        "product": Product.DAY_AHEAD,
        "side": Side.SELL,
        "volume_mw": 5.0,
        "price_eur_per_mwh": 40.0,
        "delivery_start_ms": DELIVERY,
    }
    base.update(kw)
    return OrderTerms(**base)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(BEFORE_GATE)


@pytest.fixture
def exchange(clock: ManualClock) -> DayAheadAuction:
    return DayAheadAuction(clock, others=hand_curves)


def test_our_sell_order_is_accepted_at_the_uniform_price(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    # Our 5 MW @40 joins: supply 10@20, 5@40, 10@50; demand 15@100, 10@60.
    # 20 MW@20..40 serve X(15) and 5 of Y; B(50) then meets Y's last 5 MW: B and Y exact,
    # 25 MW cleared; no rejected buyer, so the price is the last accepted offer, 50.
    oid = exchange.submit(da())
    clock.set(AFTER_GATE)
    result = exchange.clear(Product.DAY_AHEAD, DELIVERY)
    assert (result.price_eur_per_mwh, result.volume_kw) == (50.0, 25_000)
    [fill] = exchange.fills()
    assert (fill.order_id, fill.volume_kw, fill.price_eur_per_mwh) == (oid, 5_000, 50.0)
    assert exchange.order_status(oid).status is OrderStatus.FILLED


def test_our_marginal_order_is_partially_accepted(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    # Our 10 MW @55 is the dearest accepted offer: 20 MW cheaper + 5 of ours = demand 25 MW.
    oid = exchange.submit(da(volume_mw=10.0, price_eur_per_mwh=55.0))
    clock.set(AFTER_GATE)
    result = exchange.clear(Product.DAY_AHEAD, DELIVERY)
    assert result.price_eur_per_mwh == 55.0
    state = exchange.order_status(oid)
    assert (state.status, state.filled_kw, state.open_kw) == (
        OrderStatus.PARTIALLY_FILLED,
        5_000,
        0,
    )
    assert exchange.fills()[0].volume_kw == 5_000


def test_order_above_the_clearing_price_is_not_accepted(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    oid = exchange.submit(da(price_eur_per_mwh=120.0))
    clock.set(AFTER_GATE)
    exchange.clear(Product.DAY_AHEAD, DELIVERY)
    assert exchange.order_status(oid).status is OrderStatus.NOT_ACCEPTED
    assert exchange.fills() == []


def test_buy_order_pays_the_clearing_price(exchange: DayAheadAuction, clock: ManualClock) -> None:
    # Our buy 5 MW @200 outbids everyone: the 20 MW of supply go to us (5) and X (15) exactly;
    # Y(60) is the first rejected buyer, so the lowest clearing price is 60.
    oid = exchange.submit(da(side=Side.BUY, price_eur_per_mwh=200.0))
    clock.set(AFTER_GATE)
    assert exchange.clear(Product.DAY_AHEAD, DELIVERY).price_eur_per_mwh == 60.0
    [fill] = exchange.fills()
    assert (fill.order_id, fill.side, fill.price_eur_per_mwh) == (oid, Side.BUY, 60.0)


def test_after_gate_closure_orders_are_rejected(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    clock.set(AFTER_GATE)
    with pytest.raises(OrderRejected) as e:
        exchange.submit(da())
    assert e.value.reason is RejectReason.GATE_CLOSED


def test_modify_and_cancel_only_before_the_gate(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    oid = exchange.submit(da())
    exchange.modify(oid, da(volume_mw=3.0))
    assert exchange.order_status(oid).terms.volume_kw == 3_000
    clock.set(AFTER_GATE)
    with pytest.raises(OrderRejected) as e:
        exchange.cancel(oid)
    assert e.value.reason is RejectReason.GATE_CLOSED


def test_cancelled_order_does_not_take_part(exchange: DayAheadAuction, clock: ManualClock) -> None:
    oid = exchange.submit(da())
    exchange.cancel(oid)
    clock.set(AFTER_GATE)
    exchange.clear(Product.DAY_AHEAD, DELIVERY)
    assert exchange.order_status(oid).status is OrderStatus.CANCELLED
    assert exchange.fills() == []


@pytest.mark.parametrize(
    ("terms", "reason"),
    [
        (dict(volume_mw=5.05), RejectReason.BAD_INCREMENT),
        (dict(volume_mw=0.05), RejectReason.BELOW_MINIMUM),
        (dict(price_eur_per_mwh=4000.01), RejectReason.PRICE_OUT_OF_LIMITS),
        (dict(delivery_start_ms=DELIVERY + 5 * 60_000), RejectReason.NOT_ALIGNED),
        (dict(product=Product.FCR, volume_mw=5.0), RejectReason.WRONG_PRODUCT),
    ],
)
def test_exchange_validates_orders_itself(
    exchange: DayAheadAuction, terms: dict[str, object], reason: RejectReason
) -> None:
    with pytest.raises(OrderRejected) as e:
        exchange.submit(da(**terms))
    assert e.value.reason is reason


def test_clearing_before_gate_closure_and_twice_is_refused(
    exchange: DayAheadAuction, clock: ManualClock
) -> None:
    with pytest.raises(OrderRejected):
        exchange.clear(Product.DAY_AHEAD, DELIVERY)
    clock.set(AFTER_GATE)
    exchange.clear(Product.DAY_AHEAD, DELIVERY)
    with pytest.raises(OrderRejected) as e:
        exchange.clear(Product.DAY_AHEAD, DELIVERY)
    assert e.value.reason is RejectReason.ALREADY_CLEARED


def test_unknown_order() -> None:
    with pytest.raises(UnknownOrder):
        DayAheadAuction(ManualClock(0)).order_status("nope")


@pytest.mark.parametrize(
    ("day", "n"), [(date(2026, 3, 29), 92), (date(2026, 6, 2), 96), (date(2026, 10, 25), 100)]
)
def test_dst_days_have_92_96_100_products_and_clear(day: date, n: int) -> None:
    starts = delivery_starts(Product.DAY_AHEAD, day)
    assert len(starts) == n == quarter_hours_in_day(day)
    assert all(b - a == 15 * 60_000 for a, b in itertools.pairwise(starts))
    clock = ManualClock(berlin_ms(day.year, day.month, day.day - 1, 10))
    exchange = DayAheadAuction(clock, seed=7)
    # Autumn: the second 02:00 hour (CET) exists only on this day; bid into both 02:00s.
    ours = [
        exchange.submit(da(delivery_start_ms=t, price_eur_per_mwh=-500.0)) for t in starts[8:12]
    ]
    clock.set(berlin_ms(day.year, day.month, day.day - 1, 12))
    results = exchange.clear_day(Product.DAY_AHEAD, day)
    assert len(results) == n
    assert all(r.price_eur_per_mwh is not None for r in results)
    assert {f.order_id for f in exchange.fills()} == set(ours)  # floor-priced offers clear


def test_synthetic_market_is_reproducible_from_the_seed() -> None:
    def prices(seed: int) -> list[float | None]:
        clock = ManualClock(AFTER_GATE)
        ex = DayAheadAuction(clock, seed=seed)
        return [r.price_eur_per_mwh for r in ex.clear_day(Product.DAY_AHEAD, date(2026, 6, 2))]

    assert prices(1) == prices(1)
    assert prices(1) != prices(2)
