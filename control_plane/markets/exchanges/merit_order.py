"""Merit-order clearing of one sealed-bid auction product: a pure function.

Supply (sell) orders are stacked by ascending limit price, demand (buy) orders by
descending limit price; ties keep submission order (``seq``; a simplification of the
pro-rata rule real exchanges apply to orders at exactly the marginal price). Volume is
matched while the cheapest remaining supply is not dearer than the dearest remaining
demand. The cleared volume is the intersection of the two curves.

Uniform price (pay-as-clear): the lowest price at which the accepted supply meets the
accepted demand, which is the price of the *marginal order*:

- the marginal sell order is partially accepted -> its price;
- the marginal buy order is partially accepted -> its price;
- both curves match exactly -> the higher of the last accepted sell price and the first
  rejected buy price (for an inelastic demand, e.g. a TSO's reserve need, that is the
  highest accepted offer).

Every accepted order trades the full clearing price, whatever its limit. Partial
acceptance touches only the marginal order; all volumes stay exact integers [kW].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from control_plane.markets.actions import Side


@dataclass(frozen=True, slots=True)
class AuctionOrder:
    """One order in an auction book: ``volume_kw`` [kW] > 0 at a limit price [EUR/MWh]."""

    order_id: str
    side: Side
    volume_kw: int
    price_eur_per_mwh: float
    seq: int

    def __post_init__(self) -> None:
        if self.volume_kw <= 0:
            raise ValueError("volume_kw must be > 0")
        if not math.isfinite(self.price_eur_per_mwh):
            raise ValueError("price_eur_per_mwh must be finite")


@dataclass(frozen=True, slots=True)
class AuctionOutcome:
    """Clearing price (None when nothing clears), cleared volume and each order's share."""

    price_eur_per_mwh: float | None
    volume_kw: int
    accepted_kw: Mapping[str, int]


def clear_merit_order(orders: Sequence[AuctionOrder]) -> AuctionOutcome:
    """Clear one product. Pure; ``accepted_kw`` has an entry (maybe 0) for every order."""
    ids = [o.order_id for o in orders]
    if len(set(ids)) != len(ids):
        raise ValueError("order IDs must be unique within an auction")
    supply = sorted(
        (o for o in orders if o.side is Side.SELL), key=lambda o: (o.price_eur_per_mwh, o.seq)
    )
    demand = sorted(
        (o for o in orders if o.side is Side.BUY), key=lambda o: (-o.price_eur_per_mwh, o.seq)
    )
    accepted = dict.fromkeys(ids, 0)
    i = j = 0
    rem_s = supply[0].volume_kw if supply else 0
    rem_d = demand[0].volume_kw if demand else 0
    last_s = last_d = -1
    while i < len(supply) and j < len(demand):
        s, d = supply[i], demand[j]
        if s.price_eur_per_mwh > d.price_eur_per_mwh:
            break
        q = min(rem_s, rem_d)
        accepted[s.order_id] += q
        accepted[d.order_id] += q
        last_s, last_d = i, j
        rem_s -= q
        rem_d -= q
        if rem_s == 0:
            i += 1
            rem_s = supply[i].volume_kw if i < len(supply) else 0
        if rem_d == 0:
            j += 1
            rem_d = demand[j].volume_kw if j < len(demand) else 0
    volume = sum(accepted[o.order_id] for o in supply)
    if volume == 0:
        return AuctionOutcome(None, 0, accepted)
    s_last, d_last = supply[last_s], demand[last_d]
    if accepted[s_last.order_id] < s_last.volume_kw:
        price = s_last.price_eur_per_mwh
    elif accepted[d_last.order_id] < d_last.volume_kw:
        price = d_last.price_eur_per_mwh
    else:
        first_rejected_buy = demand[last_d + 1] if last_d + 1 < len(demand) else None
        price = s_last.price_eur_per_mwh
        if first_rejected_buy is not None:
            price = max(price, first_rejected_buy.price_eur_per_mwh)
    return AuctionOutcome(price, volume, accepted)
