"""The optimizer's plan as market bids: the seam where volume enters the market gateway.

:func:`bid_schedule_from_plan` turns a day-ahead :class:`~control_plane.optimizer.plan.Plan`
into a :class:`~control_plane.markets.gateway.BidSchedule`, and nothing else makes bids
from the optimizer. It never invents volume:

- day-ahead: one bid per quarter-hour with a non-zero net portfolio position
  (``Plan.portfolio_kw``), ``sell`` when the fleet exports, ``buy`` when it imports;
- FCR: one ``sell`` bid per 4-h block with reserve (``Plan.reserve_kw`` summed over the
  batteries);
- aFRR capacity: one ``sell`` bid per 4-h block and direction with reserve, ``AFRR_POS``
  from ``Plan.afrr_up_kw`` and ``AFRR_NEG`` from ``Plan.afrr_down_kw`` (summed over the
  batteries), mapped onto the plan's steps exactly as FCR (below);
- volume: the plan's, in whole kW (the order unit) rounded *down* after a tolerance of
  1e-6 kW for floating-point noise, so a bid is never larger than the plan; it is not
  rounded to market lots: a plan that is not in whole lots (status ``unrounded``) yields
  bids the policy denies with ``LOT_INCREMENT``, audited, rather than volume the plan
  does not hold;
- price limit: the price the plan was optimized for (``MarketPrices``: EUR/MWh per
  quarter-hour, EUR/MW/h per FCR or aFRR block and direction);
- a fallback plan (``Plan.bids`` False) places no bids.

The optimizer's horizon is 96 quarter-hours (UTC-uniform) from local midnight with
16-step FCR blocks; each market product is mapped onto the plan steps it covers, never
approximately:

- a normal day: quarter-hour ``t`` is plan step ``t``, FCR block ``b`` is plan block ``b``;
- the spring DST day (92 quarter-hours, the 00-04 block lasts 3 h): the first 92 steps
  are the day (steps 92-95 are the next day's, a lookahead, not bid); an FCR or aFRR block
  is offered at the *smallest* reserve the plan holds over the steps it covers (the plan's
  blocks do not line up with the market's after the clock change), at the highest price
  the plan assumed over them;
- the autumn DST day (100 quarter-hours, the 00-04 block lasts 5 h): the plan ends at
  23:00 local, so the last four quarter-hours and the last FCR and aFRR blocks are not bid
  (the plan holds nothing for them).

Any other mismatch (block lengths other than 16 steps, a plan of another length) is
refused with :class:`PlanNotBiddable`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, timedelta

import numpy as np

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.gateway import BidSchedule, ScheduledBid
from control_plane.optimizer.assets import STEPS
from control_plane.optimizer.market import FloatArray, MarketPrices, MarketRules
from control_plane.optimizer.plan import Plan
from security.refusals import GridfortError

#: Float noise tolerated above a whole kW before rounding down [kW].
KW_TOLERANCE = 1e-6
FCR_BLOCK_STEPS = 16
QUARTER_HOUR_MS = 900_000
#: How a block product is named in refusals.
_LABEL = {Product.FCR: "FCR", Product.AFRR_POS: "aFRR up", Product.AFRR_NEG: "aFRR down"}


class PlanNotBiddable(GridfortError):
    """The plan cannot be mapped onto the day's market products; the message says why."""


def whole_kw(x_kw: float) -> int:
    """``abs(x_kw)`` [kW] rounded down to a whole kW (never above the plan)."""
    if not math.isfinite(x_kw):
        raise PlanNotBiddable(f"plan volume {x_kw!r} kW is not finite")
    return math.floor(abs(x_kw) + KW_TOLERANCE)


def _day_end_ms(day: date) -> int:
    """Local midnight after ``day`` [epoch ms]."""
    return delivery_starts(Product.DAY_AHEAD, day + timedelta(days=1))[0]


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
    steps = net_kw.shape[0]
    if steps != STEPS:
        raise PlanNotBiddable(f"the plan has {steps} quarter-hours, not {STEPS}")
    day_start, day_end = energy_starts[0], _day_end_ms(day)
    energy_prices = prices.energy()
    bids: list[ScheduledBid] = []
    for start in energy_starts:
        t = (start - day_start) // QUARTER_HOUR_MS
        if t >= steps:
            break  # the 25-h day's last hour: the plan holds nothing for it
        kw = whole_kw(float(net_kw[t]))
        if kw == 0:
            continue
        side = Side.SELL if net_kw[t] > 0 else Side.BUY
        bids.append(
            ScheduledBid(Product.DAY_AHEAD, side, start, kw / 1000, float(energy_prices[t]))
        )
    calendar = (day, day_start, day_end, steps)
    bids += _block_bids(Product.FCR, plan.reserve_kw, lambda: prices.fcr(rules), rules, calendar)
    bids += _block_bids(
        Product.AFRR_POS, plan.afrr_up_kw, lambda: prices.afrr(rules)[0], rules, calendar
    )
    bids += _block_bids(
        Product.AFRR_NEG, plan.afrr_down_kw, lambda: prices.afrr(rules)[1], rules, calendar
    )
    return BidSchedule(schedule_id, tuple(bids))


def _block_bids(
    product: Product,
    held_kw: FloatArray,
    block_prices: Callable[[], FloatArray],
    rules: MarketRules,
    calendar: tuple[date, int, int, int],
) -> list[ScheduledBid]:
    """``sell`` bids of a 4-h block product (FCR, aFRR capacity) from ``held_kw`` (batteries,
    plan blocks) [kW]: per market block, the smallest total the plan holds over the plan steps
    the block covers, at the highest plan block price [EUR/MW/h] over them. ``calendar`` =
    (delivery day, its first and end delivery ms, plan steps)."""
    day, day_start, day_end, steps = calendar
    reserve_kw = np.asarray(held_kw, dtype=np.float64).sum(axis=0)
    if (reserve_kw < -KW_TOLERANCE).any():
        raise PlanNotBiddable(f"the plan holds negative {_LABEL[product]} reserve")
    if not reserve_kw.size or reserve_kw.max(initial=0.0) <= 0:
        return []
    if rules.fcr_block_steps != FCR_BLOCK_STEPS or reserve_kw.shape[0] != rules.blocks:
        raise PlanNotBiddable(
            f"the plan has {reserve_kw.shape[0]} {_LABEL[product]} blocks of "
            f"{rules.fcr_block_steps} quarter-hours; bids need {rules.blocks} blocks of "
            f"{FCR_BLOCK_STEPS}"
        )
    per_step = np.repeat(reserve_kw, FCR_BLOCK_STEPS)  # the reserve held in each step
    price_per_step = np.repeat(block_prices(), FCR_BLOCK_STEPS)
    starts = delivery_starts(product, day)
    bids: list[ScheduledBid] = []
    for b, start in enumerate(starts):
        stop = starts[b + 1] if b + 1 < len(starts) else day_end
        first = (start - day_start) // QUARTER_HOUR_MS
        last = (stop - day_start) // QUARTER_HOUR_MS
        if last > steps:
            continue  # part of the block lies beyond the plan: nothing is held there
        kw = whole_kw(float(per_step[first:last].min()))
        if kw:
            price = float(price_per_step[first:last].max())
            bids.append(ScheduledBid(product, Side.SELL, start, kw / 1000, price))
    return bids
