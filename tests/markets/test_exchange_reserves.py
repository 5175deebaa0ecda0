"""FCR and aFRR capacity: 4-hour local blocks (DST too), 1 MW lots, sell only, gates,
pricing; aFRR energy per direction: 15-min offers until 25 min before, merit-order
activation at the marginal price."""

from __future__ import annotations

from datetime import date

import pytest

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import (
    HOUR_MS,
    OrderRejected,
    RejectReason,
    delivery_starts,
    product_period_ms,
)
from control_plane.markets.exchanges.merit_order import AuctionOrder
from control_plane.markets.exchanges.reserves import (
    AfrrEnergyMarket,
    ReserveAuction,
    activate_afrr_energy,
)
from control_plane.markets.exchanges.sealed_bid import SyntheticOrder
from control_plane.markets.gate_closure import local_iso
from security.clock import ManualClock
from tests.markets.conftest import berlin_ms

BLOCK = berlin_ms(2026, 6, 2, 8)  # the 08:00-12:00 block


def tso_curves(product: Product, start: int) -> list[SyntheticOrder]:
    # TSO needs 25 MW; others offer 10@5, 10@8, 10@12 [EUR/MW/h].
    return [
        SyntheticOrder(Side.BUY, 25_000, 10_000.0),
        SyntheticOrder(Side.SELL, 10_000, 5.0),
        SyntheticOrder(Side.SELL, 10_000, 8.0),
        SyntheticOrder(Side.SELL, 10_000, 12.0),
    ]


def offer(product: Product = Product.FCR, **kw: object) -> OrderTerms:
    base: dict[str, object] = {
        "product": product,
        "side": Side.SELL,
        "volume_mw": 5.0,
        "price_eur_per_mwh": 6.0,
        "delivery_start_ms": BLOCK,
    }
    base.update(kw)
    return OrderTerms(**base)  # type: ignore[arg-type]


def test_fcr_blocks_are_six_local_4h_blocks() -> None:
    starts = delivery_starts(Product.FCR, date(2026, 6, 2))
    assert [local_iso(t)[11:16] for t in starts] == [
        "00:00",
        "04:00",
        "08:00",
        "12:00",
        "16:00",
        "20:00",
    ]
    assert {product_period_ms(Product.FCR, t) for t in starts} == {4 * HOUR_MS}


@pytest.mark.parametrize(("day", "first_h"), [(date(2026, 3, 29), 3), (date(2026, 10, 25), 5)])
def test_fcr_first_block_of_a_dst_day_is_3h_or_5h(day: date, first_h: int) -> None:
    starts = delivery_starts(Product.FCR, day)
    assert len(starts) == 6
    assert product_period_ms(Product.FCR, starts[0]) == first_h * HOUR_MS
    assert [product_period_ms(Product.FCR, t) for t in starts[1:]] == [4 * HOUR_MS] * 5


def test_fcr_gate_closes_at_8_the_day_before() -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 7, 59))
    ex = ReserveAuction(clock, others=tso_curves)
    ex.submit(offer())
    clock.set(berlin_ms(2026, 6, 1, 8))
    with pytest.raises(OrderRejected) as e:
        ex.submit(offer())
    assert e.value.reason is RejectReason.GATE_CLOSED


@pytest.mark.parametrize(
    ("terms", "reason"),
    [
        (dict(volume_mw=0.5), RejectReason.BELOW_MINIMUM),
        (dict(volume_mw=1.5), RejectReason.BAD_INCREMENT),
        (dict(side=Side.BUY), RejectReason.WRONG_SIDE),
        (dict(delivery_start_ms=berlin_ms(2026, 6, 2, 9)), RejectReason.NOT_ALIGNED),
        (dict(price_eur_per_mwh=-1.0), RejectReason.PRICE_OUT_OF_LIMITS),
    ],
)
def test_fcr_offer_rules(terms: dict[str, object], reason: RejectReason) -> None:
    ex = ReserveAuction(ManualClock(berlin_ms(2026, 6, 1, 7)), others=tso_curves)
    with pytest.raises(OrderRejected) as e:
        ex.submit(offer(**terms))
    assert e.value.reason is reason


def test_fcr_is_pay_as_clear() -> None:
    # Ours 5@6 joins 10@5, 10@8, 10@12 for 25 MW: 5, 6(ours), 8 accepted fully (25 MW): exact,
    # no rejected buyer: the price is the highest accepted offer, 8; 10@12 is rejected.
    clock = ManualClock(berlin_ms(2026, 6, 1, 7))
    ex = ReserveAuction(clock, others=tso_curves)
    oid = ex.submit(offer())
    clock.set(berlin_ms(2026, 6, 1, 8))
    result = ex.clear(Product.FCR, BLOCK)
    assert (result.price_eur_per_mwh, result.volume_kw) == (8.0, 25_000)
    [fill] = ex.fills()
    assert (fill.order_id, fill.volume_kw, fill.price_eur_per_mwh) == (oid, 5_000, 8.0)


@pytest.mark.parametrize("product", [Product.AFRR_POS, Product.AFRR_NEG])
def test_afrr_capacity_is_pay_as_bid_per_direction(product: Product) -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 7))
    ex = ReserveAuction(clock, others=tso_curves)
    ex.submit(offer(product))
    clock.set(berlin_ms(2026, 6, 1, 9))  # aFRR gate: 09:00 the day before
    assert ex.clear(product, BLOCK).price_eur_per_mwh == 8.0
    [fill] = ex.fills()
    assert (fill.product, fill.price_eur_per_mwh) == (product, 6.0)  # our own bid


def test_afrr_directions_are_separate_products() -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 7))
    ex = ReserveAuction(clock, others=tso_curves)
    ex.submit(offer(Product.AFRR_POS, volume_mw=5.0))
    ex.submit(offer(Product.AFRR_NEG, volume_mw=3.0))
    clock.set(berlin_ms(2026, 6, 1, 9))
    ex.clear(Product.AFRR_NEG, BLOCK)  # clearing one direction leaves the other open
    assert [(f.product, f.volume_kw) for f in ex.fills()] == [(Product.AFRR_NEG, 3_000)]
    with pytest.raises(OrderRejected) as e:
        ex.submit(offer(Product.AFRR_POS, side=Side.BUY))
    assert e.value.reason is RejectReason.WRONG_SIDE


QH = berlin_ms(2026, 6, 2, 10, 15)


def energy_offers(product: Product, start: int) -> list[SyntheticOrder]:
    return [SyntheticOrder(Side.SELL, 4_000, 50.0), SyntheticOrder(Side.SELL, 4_000, 200.0)]


def test_afrr_energy_offers_close_25_minutes_before_delivery() -> None:
    clock = ManualClock(QH - 26 * 60_000)
    ex = AfrrEnergyMarket(clock, others=energy_offers)
    ex.submit(
        offer(Product.AFRR_ENERGY_POS, volume_mw=2.0, price_eur_per_mwh=120.0, delivery_start_ms=QH)
    )
    clock.set(QH - 25 * 60_000)
    with pytest.raises(OrderRejected) as e:
        ex.submit(offer(Product.AFRR_ENERGY_POS, volume_mw=1.0, delivery_start_ms=QH))
    assert e.value.reason is RejectReason.GATE_CLOSED
    with pytest.raises(OrderRejected) as e:
        ex.submit(offer(Product.AFRR_ENERGY_POS, volume_mw=1.0, delivery_start_ms=QH + 60_000))
    assert e.value.reason is RejectReason.NOT_ALIGNED


def test_afrr_energy_activation_in_merit_order_pays_the_marginal_price() -> None:
    clock = ManualClock(QH - 30 * 60_000)
    ex = AfrrEnergyMarket(clock, others=energy_offers)
    ours = ex.submit(
        offer(Product.AFRR_ENERGY_NEG, volume_mw=3.0, price_eur_per_mwh=-20.0, delivery_start_ms=QH)
    )
    clock.set(QH)
    # 5 MW activated downward: ours (-20) first, then 2 MW of the 50 EUR offer, which sets the price.
    result = ex.activate(Product.AFRR_ENERGY_NEG, QH, 5_000)
    assert (result.price_eur_per_mwh, result.volume_kw) == (50.0, 5_000)
    [fill] = ex.fills()
    assert (fill.order_id, fill.product, fill.volume_kw, fill.price_eur_per_mwh) == (
        ours,
        Product.AFRR_ENERGY_NEG,
        3_000,
        50.0,
    )
    with pytest.raises(OrderRejected):
        ex.activate(Product.AFRR_ENERGY_NEG, QH, 1_000)  # once per quarter-hour


def test_nothing_activated_fills_nothing() -> None:
    clock = ManualClock(QH - 30 * 60_000)
    ex = AfrrEnergyMarket(clock, others=energy_offers)
    ex.submit(offer(Product.AFRR_ENERGY_POS, volume_mw=1.0, delivery_start_ms=QH))
    clock.set(QH)
    assert ex.activate(Product.AFRR_ENERGY_POS, QH, 0).volume_kw == 0
    assert ex.fills() == []


def test_afrr_energy_activation_is_merit_order_pay_as_clear() -> None:
    bids = [
        AuctionOrder("a", Side.SELL, 5_000, 90.0, 1),
        AuctionOrder("b", Side.SELL, 5_000, 60.0, 2),
        AuctionOrder("c", Side.SELL, 5_000, 150.0, 3),
    ]
    out = activate_afrr_energy(bids, 7_000)
    assert dict(out.accepted_kw) == {"b": 5_000, "a": 2_000, "c": 0}
    assert out.price_eur_per_mwh == 90.0
    assert activate_afrr_energy(bids, 0).volume_kw == 0
