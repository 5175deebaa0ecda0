"""The simple capacity market: hourly, sell-only, 1 MW lots, pay-as-clear."""

from __future__ import annotations

from datetime import date

import pytest

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import OrderRejected, RejectReason, delivery_starts
from control_plane.markets.exchanges.capacity import CapacityAuction
from control_plane.markets.exchanges.sealed_bid import SyntheticOrder
from security.clock import ManualClock
from tests.markets.conftest import berlin_ms

HOUR = berlin_ms(2026, 6, 2, 18)


def curves(product: Product, start: int) -> list[SyntheticOrder]:
    return [SyntheticOrder(Side.BUY, 12_000, 10_000.0), SyntheticOrder(Side.SELL, 10_000, 3.0)]


def terms(**kw: object) -> OrderTerms:
    base: dict[str, object] = {
        "product": Product.CAPACITY,
        "side": Side.SELL,
        "volume_mw": 4.0,
        "price_eur_per_mwh": 4.5,
        "delivery_start_ms": HOUR,
    }
    base.update(kw)
    return OrderTerms(**base)  # type: ignore[arg-type]


def test_hourly_products_on_a_dst_day() -> None:
    assert len(delivery_starts(Product.CAPACITY, date(2026, 3, 29))) == 23
    assert len(delivery_starts(Product.CAPACITY, date(2026, 10, 25))) == 25


def test_marginal_offer_sets_the_price_and_is_partially_accepted() -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 11))
    ex = CapacityAuction(clock, others=curves)
    oid = ex.submit(terms())
    clock.set(berlin_ms(2026, 6, 1, 12))
    result = ex.clear(Product.CAPACITY, HOUR)
    assert (result.price_eur_per_mwh, result.volume_kw) == (4.5, 12_000)
    assert ex.order_status(oid).filled_kw == 2_000


def test_capacity_offers_are_whole_megawatts() -> None:
    ex = CapacityAuction(ManualClock(berlin_ms(2026, 6, 1, 11)), others=curves)
    with pytest.raises(OrderRejected) as e:
        ex.submit(terms(volume_mw=2.5))
    assert e.value.reason is RejectReason.BAD_INCREMENT
