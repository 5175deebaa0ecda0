"""A simple simulated capacity market: hourly firm-capacity products.

Rules: one sealed-bid auction per hour of the delivery day; gate closure 12:00 local the
day before; ``sell`` offers only (providers commit available capacity); minimum 1 MW
in 1 MW increments; the system operator's demand is inelastic (a seeded volume per
hour); pay-as-clear at the marginal offer; price in EUR per MW and hour (EUR/MW/h),
limits 0..10,000. Unavailability of committed capacity is penalised in settlement
(:mod:`control_plane.markets.settlement`), pro rata to the undelivered amount and time.
"""

from __future__ import annotations

import numpy as np

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.sealed_bid import (
    AuctionRules,
    OtherParticipants,
    Pricing,
    SealedBidAuction,
    SyntheticOrder,
)
from security.clock import Clock

CAPACITY_RULES = AuctionRules(
    product=Product.CAPACITY,
    min_kw=1000,
    increment_kw=1000,
    price_min=0.0,
    price_max=10_000.0,
    sides=frozenset({Side.SELL}),
    pricing=Pricing.PAY_AS_CLEAR,
)


def synthetic_capacity(seed: int) -> OtherParticipants:
    """The operator's demand (30-50 MW) and ten other offers per hour, from ``seed``."""

    def others(product: Product, delivery_start_ms: int) -> list[SyntheticOrder]:
        rng = np.random.default_rng([seed, delivery_start_ms // 1000, 3])
        out = [SyntheticOrder(Side.BUY, int(rng.integers(30, 51)) * 1000, CAPACITY_RULES.price_max)]
        for _ in range(10):
            kw = int(rng.integers(2, 11)) * 1000
            out.append(SyntheticOrder(Side.SELL, kw, round(float(rng.uniform(1.0, 6.0)), 2)))
        return out

    return others


class CapacityAuction(SealedBidAuction):
    """The capacity market as a :class:`~control_plane.markets.exchanges.base.MarketAdapter`."""

    def __init__(
        self, clock: Clock, *, seed: int = 0, others: OtherParticipants | None = None
    ) -> None:
        super().__init__("capacity", [CAPACITY_RULES], clock, others or synthetic_capacity(seed))
