"""The optimizer's plan as market bids: the seam where volume enters the market gateway.

:func:`bid_schedule_from_plan` turns a day-ahead :class:`~control_plane.optimizer.plan.Plan`
into a :class:`~control_plane.markets.gateway.BidSchedule`, and nothing else makes bids
from the optimizer. It never invents volume:

- day-ahead: one bid per quarter-hour with a non-zero net portfolio position
  (``Plan.portfolio_kw``), ``sell`` when the fleet exports, ``buy`` when it imports;
- FCR: one ``sell`` bid per 4-h block with reserve (``Plan.reserve_kw`` summed over the
  batteries);
- volume: the plan's, in whole kW (the order unit) rounded *down* after a tolerance of
  1e-6 kW for floating-point noise, so a bid is never larger than the plan; it is not
  rounded to market lots: a plan that is not in whole lots (status ``unrounded``) yields
  bids the policy denies with ``LOT_INCREMENT``, audited, rather than volume the plan
  does not hold;
- price limit: the price the plan was optimized for (``MarketPrices``: EUR/MWh per
  quarter-hour, EUR/MW/h per FCR block);
- a fallback plan (``Plan.bids`` False) places no bids.

The optimizer's horizon is 96 quarter-hours from local midnight and 16-step FCR blocks:
a DST day (92 or 100 quarter-hours) or other block lengths are refused with
:class:`PlanNotBiddable`, not mapped approximately.
"""

from __future__ import annotations

import math
from datetime import date

import numpy as np

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.gateway import BidSchedule, ScheduledBid
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.plan import Plan
from security.refusals import GridfortError

#: Float noise tolerated above a whole kW before rounding down [kW].
KW_TOLERANCE = 1e-6
FCR_BLOCK_STEPS = 16


class PlanNotBiddable(GridfortError):
    """The plan cannot be mapped onto the day's market products; the message says why."""


def whole_kw(x_kw: float) -> int:
    """``abs(x_kw)`` [kW] rounded down to a whole kW (never above the plan)."""
    if not math.isfinite(x_kw):
        raise PlanNotBiddable(f"plan volume {x_kw!r} kW is not finite")
    return math.floor(abs(x_kw) + KW_TOLERANCE)


def bid_schedule_from_plan(
    plan: Plan,
    *,
    day: date,
    prices: MarketPrices,
    rules: MarketRules,
    schedule_id: str,
) -> BidSchedule:
    """The bids of ``plan`` for delivery ``day`` (local market day); see the module doc."""
    if not plan.bids:
        return BidSchedule(schedule_id, ())
    energy_starts = delivery_starts(Product.DAY_AHEAD, day)
    net_kw = plan.portfolio_kw()
    if len(energy_starts) != net_kw.shape[0]:
        raise PlanNotBiddable(
            f"the plan has {net_kw.shape[0]} quarter-hours, delivery day {day} has "
            f"{len(energy_starts)} (a DST day is not planned yet)"
        )
    energy_prices = prices.energy()
    bids: list[ScheduledBid] = []
    for t, start in enumerate(energy_starts):
        kw = whole_kw(float(net_kw[t]))
        if kw == 0:
            continue
        side = Side.SELL if net_kw[t] > 0 else Side.BUY
        bids.append(
            ScheduledBid(Product.DAY_AHEAD, side, start, kw / 1000, float(energy_prices[t]))
        )
    reserve_kw = np.asarray(plan.reserve_kw, dtype=np.float64).sum(axis=0)
    if (reserve_kw < -KW_TOLERANCE).any():
        raise PlanNotBiddable("the plan holds negative FCR reserve")
    if reserve_kw.size and reserve_kw.max(initial=0.0) > 0:
        fcr_starts = delivery_starts(Product.FCR, day)
        if rules.fcr_block_steps != FCR_BLOCK_STEPS or len(fcr_starts) != reserve_kw.shape[0]:
            raise PlanNotBiddable(
                f"the plan has {reserve_kw.shape[0]} FCR blocks of {rules.fcr_block_steps} "
                f"quarter-hours; the FCR market on {day} has {len(fcr_starts)} 4-h blocks"
            )
        fcr_prices = prices.fcr(rules)
        for b, start in enumerate(fcr_starts):
            kw = whole_kw(float(reserve_kw[b]))
            if kw:
                bids.append(
                    ScheduledBid(Product.FCR, Side.SELL, start, kw / 1000, float(fcr_prices[b]))
                )
    return BidSchedule(schedule_id, tuple(bids))
