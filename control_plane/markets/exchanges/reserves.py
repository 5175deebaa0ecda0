"""Simulated balancing-reserve markets: FCR, aFRR capacity and aFRR energy, per direction.

FCR (frequency containment reserve), as on regelleistung.net: six 4-hour products per
local day (00-04, 04-08, ... ; 3 h or 5 h for the first block of a DST day); symmetric
(one offered MW is held both up and down), so only ``sell`` offers; minimum 1 MW in
1 MW increments; gate closure 08:00 local the day before; the TSOs' demand is inelastic;
pay-as-clear: every accepted offer gets the marginal (highest accepted) capacity price.

aFRR capacity, one product per direction (``afrr_pos`` upward, ``afrr_neg`` downward):
the same 4-h blocks, 1 MW minimum and increment, gate closure 09:00 the day before,
pay-as-bid (each accepted offer is paid its own price), as in Germany.

aFRR energy, one product per direction (``afrr_energy_pos``, ``afrr_energy_neg``): 15-min
products, offers of 1 MW steps until 25 min before delivery, price limits
-15,000..15,000 EUR/MWh (the price the provider *receives* per MWh activated in that
direction; negative: it pays). :class:`AfrrEnergyMarket` activates them in merit order
(cheapest first, the marginal one partially) for the volume the TSO needs, pay-as-clear
at the marginal activated price (PICASSO-like); :func:`activate_afrr_energy` is that
merit order as a pure function.

Prices of capacity products are EUR per MW and hour of the product period (EUR/MW/h).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import ClearingResult
from control_plane.markets.exchanges.day_ahead import reference_price_eur_per_mwh
from control_plane.markets.exchanges.merit_order import (
    AuctionOrder,
    AuctionOutcome,
    clear_merit_order,
)
from control_plane.markets.exchanges.sealed_bid import (
    AuctionRules,
    OtherParticipants,
    Pricing,
    SealedBidAuction,
    SyntheticOrder,
)
from security.clock import Clock

CAPACITY_PRICE_MAX = 10_000.0  # EUR/MW/h
AFRR_ENERGY_PRICE_LIMIT = 15_000.0  # EUR/MWh, harmonised aFRR energy price limit

FCR_RULES = AuctionRules(
    product=Product.FCR,
    min_kw=1000,
    increment_kw=1000,
    price_min=0.0,
    price_max=CAPACITY_PRICE_MAX,
    sides=frozenset({Side.SELL}),
    pricing=Pricing.PAY_AS_CLEAR,
)

AFRR_CAPACITY_RULES = tuple(
    AuctionRules(
        product=p,
        min_kw=1000,
        increment_kw=1000,
        price_min=0.0,
        price_max=CAPACITY_PRICE_MAX,
        sides=frozenset({Side.SELL}),
        pricing=Pricing.PAY_AS_BID,
    )
    for p in (Product.AFRR_POS, Product.AFRR_NEG)
)

AFRR_ENERGY_RULES = tuple(
    AuctionRules(
        product=p,
        min_kw=1000,
        increment_kw=1000,
        price_min=-AFRR_ENERGY_PRICE_LIMIT,
        price_max=AFRR_ENERGY_PRICE_LIMIT,
        sides=frozenset({Side.SELL}),
        pricing=Pricing.PAY_AS_CLEAR,
    )
    for p in (Product.AFRR_ENERGY_POS, Product.AFRR_ENERGY_NEG)
)

#: TSO demand per 4-h block of the synthetic market [kW].
FCR_DEMAND_KW = 60_000
AFRR_DEMAND_KW = {Product.AFRR_POS: 80_000, Product.AFRR_NEG: 70_000}


def reference_capacity_price(product: Product) -> float:
    """A typical clearing price [EUR/MW/h] of the synthetic reserve markets (a forecast)."""
    return {Product.FCR: 12.0, Product.AFRR_POS: 8.0, Product.AFRR_NEG: 6.0}.get(product, 8.0)


def reference_afrr_energy_price(product: Product, delivery_start_ms: int) -> float:
    """A typical marginal aFRR energy price [EUR/MWh received] for a quarter-hour: above
    the day-ahead shape upward, below it downward (a forecast)."""
    da = reference_price_eur_per_mwh(delivery_start_ms)
    return round(da + 40.0 if product is Product.AFRR_ENERGY_POS else da / 2 - 40.0, 2)


def synthetic_reserves(seed: int) -> OtherParticipants:
    """Other providers' offers per block (seeded) and the TSOs' inelastic demand."""

    def others(product: Product, delivery_start_ms: int) -> list[SyntheticOrder]:
        rng = np.random.default_rng([seed, delivery_start_ms // 1000, 2])
        ref = reference_capacity_price(product)
        demand = FCR_DEMAND_KW if product is Product.FCR else AFRR_DEMAND_KW[product]
        out = [SyntheticOrder(Side.BUY, demand, CAPACITY_PRICE_MAX)]
        for _ in range(14):
            kw = int(rng.integers(1, 16)) * 1000
            price = round(max(0.0, ref * float(rng.gamma(4.0, 0.25))), 2)
            out.append(SyntheticOrder(Side.SELL, kw, price))
        return out

    return others


class ReserveAuction(SealedBidAuction):
    """FCR and aFRR capacity (both directions) auctions behind one adapter."""

    def __init__(
        self, clock: Clock, *, seed: int = 0, others: OtherParticipants | None = None
    ) -> None:
        super().__init__(
            "reserves",
            [FCR_RULES, *AFRR_CAPACITY_RULES],
            clock,
            others or synthetic_reserves(seed),
        )


def synthetic_afrr_energy(seed: int) -> OtherParticipants:
    """Other providers' energy offers per direction and quarter-hour (seeded); no demand:
    the TSO's activation joins at :meth:`AfrrEnergyMarket.activate`."""

    def others(product: Product, delivery_start_ms: int) -> list[SyntheticOrder]:
        rng = np.random.default_rng(
            [seed, delivery_start_ms // 1000, 4, product == Product.AFRR_ENERGY_POS]
        )
        ref = reference_afrr_energy_price(product, delivery_start_ms)
        return [
            SyntheticOrder(
                Side.SELL,
                int(rng.integers(1, 21)) * 1000,
                round(ref + float(rng.normal(0.0, 30.0)), 2),
            )
            for _ in range(16)
        ]

    return others


class AfrrEnergyMarket(SealedBidAuction):
    """aFRR energy offers per direction and quarter-hour; the TSO activates them."""

    def __init__(
        self, clock: Clock, *, seed: int = 0, others: OtherParticipants | None = None
    ) -> None:
        super().__init__(
            "afrr-energy", list(AFRR_ENERGY_RULES), clock, others or synthetic_afrr_energy(seed)
        )

    def activate(
        self, product: Product, delivery_start_ms: int, activated_kw: int
    ) -> ClearingResult:
        """Activate ``activated_kw`` [kW] of ``product`` for one quarter-hour (after its gate
        closure, once): merit order over every offer, marginal price for all activated."""
        if activated_kw < 0:
            raise ValueError("activated_kw must not be negative")
        tso = (
            [SyntheticOrder(Side.BUY, activated_kw, AFRR_ENERGY_PRICE_LIMIT)]
            if activated_kw
            else []
        )
        return self.clear(product, delivery_start_ms, extra=tso)


def activate_afrr_energy(bids: Sequence[AuctionOrder], activated_kw: int) -> AuctionOutcome:
    """Merit-order activation of aFRR energy offers (``sell``, either direction) for one
    quarter-hour.

    ``activated_kw`` [kW] is the TSO's activated volume; the cheapest bids are activated
    first, the marginal one partially; all activated bids get the marginal price. Pure.
    """
    if activated_kw < 0:
        raise ValueError("activated_kw must not be negative")
    if any(b.side is not Side.SELL for b in bids):
        raise ValueError("aFRR energy bids are sell offers (in either direction)")
    if activated_kw == 0:
        return AuctionOutcome(None, 0, {b.order_id: 0 for b in bids})
    tso = AuctionOrder("tso-activation", Side.BUY, activated_kw, AFRR_ENERGY_PRICE_LIMIT, 0)
    out = clear_merit_order([*bids, tso])
    accepted = {k: v for k, v in out.accepted_kw.items() if k != tso.order_id}
    return AuctionOutcome(out.price_eur_per_mwh, out.volume_kw, accepted)
