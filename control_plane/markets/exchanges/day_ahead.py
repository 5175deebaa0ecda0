"""The simulated day-ahead auction (SDAC-like), Europe/Berlin market time.

Rules implemented: one sealed-bid auction per local delivery day; gate closure 12:00
local the day before delivery; 15-minute products (92, 96 or 100 per day on DST days);
orders in 0.1 MW increments (minimum 0.1 MW), buy or sell; harmonised price limits
-500..4000 EUR/MWh; merit-order clearing per product with a uniform pay-as-clear price
set by the marginal order, which may be partially accepted
(:mod:`~control_plane.markets.exchanges.merit_order`). Simplifications: simple hourly
orders only (no block or complex orders), no market coupling, ties in time order.

The other participants are synthetic: for each quarter-hour a seeded random supply
stack around a daily price shape (morning and evening peaks, a solar dip at noon),
must-run supply at the price floor and inelastic demand at the price cap. The same seed
gives the same market.
"""

from __future__ import annotations

import math

import numpy as np

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.sealed_bid import (
    AuctionRules,
    OtherParticipants,
    Pricing,
    SealedBidAuction,
    SyntheticOrder,
)
from control_plane.markets.gate_closure import local_time
from security.clock import Clock

PRICE_MIN_EUR_PER_MWH = -500.0
PRICE_MAX_EUR_PER_MWH = 4000.0

DAY_AHEAD_RULES = AuctionRules(
    product=Product.DAY_AHEAD,
    min_kw=100,
    increment_kw=100,
    price_min=PRICE_MIN_EUR_PER_MWH,
    price_max=PRICE_MAX_EUR_PER_MWH,
    sides=frozenset({Side.BUY, Side.SELL}),
    pricing=Pricing.PAY_AS_CLEAR,
)


def reference_price_eur_per_mwh(delivery_start_ms: int) -> float:
    """The daily price shape [EUR/MWh] the synthetic market is drawn around (a forecast)."""
    t = local_time(delivery_start_ms)
    h = t.hour + t.minute / 60
    shape = (
        60.0
        + 20.0 * math.exp(-(((h - 8.0) / 2.0) ** 2))
        + 45.0 * math.exp(-(((h - 19.0) / 2.5) ** 2))
        - 30.0 * math.exp(-(((h - 13.0) / 2.5) ** 2))
    )
    return round(shape, 2)


def synthetic_day_ahead(seed: int) -> OtherParticipants:
    """The other participants' orders for one quarter-hour, drawn from ``seed``."""

    def others(product: Product, delivery_start_ms: int) -> list[SyntheticOrder]:
        rng = np.random.default_rng([seed, delivery_start_ms // 1000, 1])
        ref = reference_price_eur_per_mwh(delivery_start_ms)
        out = [
            SyntheticOrder(Side.SELL, 40_000, PRICE_MIN_EUR_PER_MWH),  # must-run
            SyntheticOrder(Side.BUY, 60_000, PRICE_MAX_EUR_PER_MWH),  # inelastic load
        ]
        for _ in range(12):
            kw = int(rng.integers(10, 200)) * 100
            price = round(ref + float(rng.normal(0.0, 1.0)) * 25.0, 2)
            out.append(SyntheticOrder(Side.SELL, kw, price))
        for _ in range(8):
            kw = int(rng.integers(10, 200)) * 100
            price = round(ref + float(rng.normal(-0.3, 1.0)) * 30.0, 2)
            out.append(SyntheticOrder(Side.BUY, kw, price))
        return out

    return others


class DayAheadAuction(SealedBidAuction):
    """The day-ahead market as a :class:`~control_plane.markets.exchanges.base.MarketAdapter`.

    ``others`` defaults to :func:`synthetic_day_ahead` of ``seed``; tests pass hand-made
    curves to check clearing against hand-computed merit orders.
    """

    def __init__(
        self, clock: Clock, *, seed: int = 0, others: OtherParticipants | None = None
    ) -> None:
        super().__init__("day-ahead", [DAY_AHEAD_RULES], clock, others or synthetic_day_ahead(seed))
