"""The simulated continuous intraday market: an order book per quarter-hour.

:class:`OrderBook` is the pure matching engine: limit orders, price-time priority (best
price first; at one price, the earlier order first), an incoming order trades against
resting orders at *their* price while it crosses, partial fills, the rest rests.
A cancel removes what is still open (fills stay). A modify that only lowers the volume
keeps the order's time priority; any other modify (price change, volume increase) is a
cancel-and-replace that loses it, as on EPEX SIDC. Volumes are exact integers [kW].

:class:`IntradayExchange` is the adapter: one book per 15-min delivery period, 0.1 MW
minimum and increment, price limits -9999..9999 EUR/MWh, trading until 5 min before
delivery (the gate from :mod:`control_plane.markets.gate_closure`), and seeded synthetic
liquidity from other participants placed when a book is first used. Simplifications: no
self-trade prevention, no iceberg or block orders, no cross-border capacity.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import (
    ClearingResult,
    Fill,
    OrderRejected,
    OrderState,
    OrderStatus,
    RejectReason,
    UnknownOrder,
)
from control_plane.markets.exchanges.day_ahead import reference_price_eur_per_mwh
from control_plane.markets.exchanges.sealed_bid import AuctionRules, Pricing, check_terms
from control_plane.markets.gate_closure import gate_closure_ms, local_iso
from security.clock import Clock

INTRADAY_RULES = AuctionRules(
    product=Product.INTRADAY,
    min_kw=100,
    increment_kw=100,
    price_min=-9999.0,
    price_max=9999.0,
    sides=frozenset({Side.BUY, Side.SELL}),
    pricing=Pricing.PAY_AS_BID,  # continuous trading: each trade at the resting order's price
)
OURS = "gridfort"


@dataclass(slots=True)
class BookOrder:
    """An order in the book. ``volume_kw = filled_kw + open_kw + cancelled_kw`` always."""

    order_id: str
    owner: str
    side: Side
    price_eur_per_mwh: float
    volume_kw: int
    seq: int
    filled_kw: int = 0
    open_kw: int = 0
    cancelled_kw: int = 0


@dataclass(frozen=True, slots=True)
class Trade:
    """One match: ``volume_kw`` [kW] at the resting order's price [EUR/MWh]."""

    trade_id: str
    buy_order_id: str
    sell_order_id: str
    volume_kw: int
    price_eur_per_mwh: float
    aggressor_side: Side


def _key(o: BookOrder) -> tuple[float, int]:
    return (-o.price_eur_per_mwh if o.side is Side.BUY else o.price_eur_per_mwh, o.seq)


class OrderBook:
    """A price-time priority limit order book for one product period. Pure, no clock."""

    def __init__(self) -> None:
        self._bids: list[BookOrder] = []
        self._asks: list[BookOrder] = []
        self.orders: dict[str, BookOrder] = {}
        self._seq = itertools.count(1)
        self._trade_ids = itertools.count(1)

    def bids(self) -> list[BookOrder]:
        """Resting buy orders, best first."""
        return list(self._bids)

    def asks(self) -> list[BookOrder]:
        """Resting sell orders, best first."""
        return list(self._asks)

    def add(
        self, order_id: str, owner: str, side: Side, volume_kw: int, price_eur_per_mwh: float
    ) -> list[Trade]:
        """Match a new limit order, then rest what is left. Returns the trades, in order."""
        if order_id in self.orders:
            raise ValueError(f"duplicate order ID {order_id!r}")
        if volume_kw <= 0:
            raise ValueError("volume_kw must be > 0")
        order = BookOrder(order_id, owner, side, price_eur_per_mwh, volume_kw, next(self._seq))
        order.open_kw = volume_kw
        self.orders[order_id] = order
        return self._match_and_rest(order)

    def _match_and_rest(self, order: BookOrder) -> list[Trade]:
        opposite = self._asks if order.side is Side.BUY else self._bids
        trades: list[Trade] = []
        while order.open_kw and opposite:
            best = opposite[0]
            crosses = (
                best.price_eur_per_mwh <= order.price_eur_per_mwh
                if order.side is Side.BUY
                else best.price_eur_per_mwh >= order.price_eur_per_mwh
            )
            if not crosses:
                break
            q = min(order.open_kw, best.open_kw)
            for o in (order, best):
                o.open_kw -= q
                o.filled_kw += q
            buy, sell = (order, best) if order.side is Side.BUY else (best, order)
            trades.append(
                Trade(
                    f"t{next(self._trade_ids)}",
                    buy.order_id,
                    sell.order_id,
                    q,
                    best.price_eur_per_mwh,
                    order.side,
                )
            )
            if best.open_kw == 0:
                opposite.pop(0)
        if order.open_kw:
            own = self._bids if order.side is Side.BUY else self._asks
            bisect.insort(own, order, key=_key)
        return trades

    def _remove(self, order: BookOrder) -> None:
        own = self._bids if order.side is Side.BUY else self._asks
        own.remove(order)

    def cancel(self, order_id: str) -> int:
        """Cancel what is open of an order; returns the cancelled volume [kW] (0 if none)."""
        order = self.orders[order_id]
        if order.open_kw == 0:
            return 0
        self._remove(order)
        cancelled = order.open_kw
        order.cancelled_kw += cancelled
        order.open_kw = 0
        return cancelled

    def modify(self, order_id: str, volume_kw: int, price_eur_per_mwh: float) -> list[Trade]:
        """Set a resting order's total volume and price (see the module doc for priority)."""
        order = self.orders[order_id]
        if order.open_kw == 0:
            raise ValueError(f"order {order_id!r} has nothing open to modify")
        new_open = volume_kw - order.filled_kw
        if new_open <= 0:
            raise ValueError("the new volume must exceed the volume already filled")
        if price_eur_per_mwh == order.price_eur_per_mwh and new_open <= order.open_kw:
            order.cancelled_kw += order.open_kw - new_open
            order.open_kw = new_open
            return []
        self._remove(order)
        order.cancelled_kw += order.open_kw  # the old remainder is replaced ...
        order.volume_kw += new_open  # ... by a new open volume with a new time priority
        order.open_kw = new_open
        order.price_eur_per_mwh = price_eur_per_mwh
        order.seq = next(self._seq)
        return self._match_and_rest(order)


def _state(order: BookOrder, terms: OrderTerms) -> OrderState:
    if order.open_kw and order.filled_kw:
        status = OrderStatus.PARTIALLY_FILLED
    elif order.open_kw:
        status = OrderStatus.OPEN
    elif order.cancelled_kw:
        status = OrderStatus.PARTIALLY_FILLED if order.filled_kw else OrderStatus.CANCELLED
    else:
        status = OrderStatus.FILLED
    filled = min(order.filled_kw, terms.volume_kw)
    return OrderState(
        order.order_id, terms, status, filled, min(order.open_kw, terms.volume_kw - filled)
    )


class IntradayExchange:
    """The continuous intraday market as a
    :class:`~control_plane.markets.exchanges.base.MarketAdapter`."""

    def __init__(self, clock: Clock, *, seed: int = 0, liquidity: bool = True) -> None:
        self._clock = clock
        self._seed = seed
        self._liquidity = liquidity
        self._books: dict[int, OrderBook] = {}
        self._ours: dict[str, tuple[int, OrderTerms]] = {}
        self._fills: list[Fill] = []
        self._ids = itertools.count(1)

    @property
    def name(self) -> str:
        return "intraday"

    @property
    def products(self) -> frozenset[Product]:
        return frozenset({Product.INTRADAY})

    def book(self, delivery_start_ms: int) -> OrderBook:
        """The book of one quarter-hour, seeded with other participants' orders on first use."""
        book = self._books.get(delivery_start_ms)
        if book is None:
            book = self._books[delivery_start_ms] = OrderBook()
            if self._liquidity:
                rng = np.random.default_rng([self._seed, delivery_start_ms // 1000, 4])
                ref = reference_price_eur_per_mwh(delivery_start_ms)
                for n in range(5):
                    spread = 1.0 + n * 2.0 + float(rng.uniform(0.0, 1.0))
                    kw = int(rng.integers(5, 50)) * 100
                    book.add(f"other-b{n}", "other", Side.BUY, kw, round(ref - spread, 2))
                    book.add(f"other-a{n}", "other", Side.SELL, kw, round(ref + spread, 2))
        return book

    def _check_gate(self, delivery_start_ms: int) -> None:
        closure = gate_closure_ms(Product.INTRADAY, delivery_start_ms)
        if self._clock.now_ms() >= closure:
            raise OrderRejected(
                RejectReason.GATE_CLOSED,
                f"intraday for {local_iso(delivery_start_ms)} closed at {local_iso(closure)}",
            )

    def _record(self, trades: list[Trade], start: int) -> None:
        now = self._clock.now_ms()
        for t in trades:
            for order_id, side in ((t.buy_order_id, Side.BUY), (t.sell_order_id, Side.SELL)):
                if order_id in self._ours:
                    seq = len(self._fills) + 1
                    self._fills.append(
                        Fill(
                            seq,
                            f"intraday-{start}-{t.trade_id}",
                            order_id,
                            Product.INTRADAY,
                            side,
                            start,
                            t.volume_kw,
                            t.price_eur_per_mwh,
                            now,
                        )
                    )

    def submit(self, terms: OrderTerms) -> str:
        check_terms(INTRADAY_RULES, terms)
        self._check_gate(terms.delivery_start_ms)
        order_id = f"intraday-{next(self._ids)}"
        self._ours[order_id] = (terms.delivery_start_ms, terms)
        trades = self.book(terms.delivery_start_ms).add(
            order_id, OURS, terms.side, terms.volume_kw, terms.price_eur_per_mwh
        )
        self._record(trades, terms.delivery_start_ms)
        return order_id

    def _ours_open(self, order_id: str) -> tuple[int, OrderTerms, BookOrder]:
        if order_id not in self._ours:
            raise UnknownOrder(order_id)
        start, terms = self._ours[order_id]
        order = self._books[start].orders[order_id]
        if order.open_kw == 0:
            raise OrderRejected(RejectReason.ORDER_NOT_OPEN, f"{order_id} has nothing open")
        self._check_gate(start)
        return start, terms, order

    def modify(self, order_id: str, terms: OrderTerms) -> None:
        start, old, _ = self._ours_open(order_id)
        if (terms.product, terms.side, terms.delivery_start_ms) != (old.product, old.side, start):
            raise OrderRejected(
                RejectReason.WRONG_PRODUCT, "a modify keeps the product, side and delivery period"
            )
        check_terms(INTRADAY_RULES, terms)
        try:
            trades = self._books[start].modify(order_id, terms.volume_kw, terms.price_eur_per_mwh)
        except ValueError as e:
            raise OrderRejected(RejectReason.BELOW_MINIMUM, str(e)) from None
        self._ours[order_id] = (start, terms)
        self._record(trades, start)

    def cancel(self, order_id: str) -> None:
        start, _, _ = self._ours_open(order_id)
        self._books[start].cancel(order_id)

    def order_status(self, order_id: str) -> OrderState:
        if order_id not in self._ours:
            raise UnknownOrder(order_id)
        start, terms = self._ours[order_id]
        return _state(self._books[start].orders[order_id], terms)

    def fills(self, after_seq: int = 0) -> list[Fill]:
        return [f for f in self._fills if f.seq > after_seq]

    def clearing_results(self) -> list[ClearingResult]:
        return []
