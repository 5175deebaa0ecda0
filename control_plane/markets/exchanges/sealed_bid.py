"""A sealed-bid auction exchange: the day-ahead, reserve and capacity markets share it.

Orders are collected until the product's gate closure; then :meth:`SealedBidAuction.clear`
adds the other participants' curves (a seeded, synthetic market), clears the merit order
(:mod:`~control_plane.markets.exchanges.merit_order`) and turns our accepted volume into
fills, at the uniform clearing price (pay-as-clear) or at each order's own price
(pay-as-bid). Time comes from the injected clock. No I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import (
    ClearingResult,
    Fill,
    OrderRejected,
    OrderState,
    OrderStatus,
    RejectReason,
    UnknownOrder,
    delivery_starts,
)
from control_plane.markets.exchanges.merit_order import AuctionOrder, clear_merit_order
from control_plane.markets.gate_closure import delivery_aligned, gate_closure_ms, local_iso
from security.clock import Clock


class Pricing(StrEnum):
    PAY_AS_CLEAR = "pay_as_clear"  # every accepted order gets the marginal price
    PAY_AS_BID = "pay_as_bid"  # every accepted order gets its own limit price


@dataclass(frozen=True, slots=True)
class AuctionRules:
    """The rules of one auctioned product. Volumes [kW], prices [EUR/MWh or EUR/MW/h]."""

    product: Product
    min_kw: int
    increment_kw: int
    price_min: float
    price_max: float
    sides: frozenset[Side]
    pricing: Pricing = Pricing.PAY_AS_CLEAR

    def __post_init__(self) -> None:
        if self.min_kw <= 0 or self.increment_kw <= 0 or self.min_kw % self.increment_kw:
            raise ValueError("min_kw must be a positive multiple of increment_kw")
        if not self.price_min < self.price_max:
            raise ValueError("price_min must be below price_max")


@dataclass(frozen=True, slots=True)
class SyntheticOrder:
    """An order of another participant: side, volume [kW], limit price."""

    side: Side
    volume_kw: int
    price_eur_per_mwh: float


#: The other participants' orders for (product, delivery start): a pure, seeded function.
OtherParticipants = Callable[[Product, int], list[SyntheticOrder]]


def check_terms(rules: AuctionRules, terms: OrderTerms) -> None:
    """The exchange's own order validation (independent of our policy); raises OrderRejected."""
    if terms.product is not rules.product:
        raise OrderRejected(RejectReason.WRONG_PRODUCT, f"{terms.product} is not {rules.product}")
    if terms.side not in rules.sides:
        raise OrderRejected(
            RejectReason.WRONG_SIDE, f"{rules.product} takes no {terms.side} orders"
        )
    if not delivery_aligned(terms.product, terms.delivery_start_ms):
        raise OrderRejected(
            RejectReason.NOT_ALIGNED,
            f"{local_iso(terms.delivery_start_ms)} is not a {rules.product} period start",
        )
    kw = terms.volume_kw
    if kw < rules.min_kw:
        raise OrderRejected(RejectReason.BELOW_MINIMUM, f"{kw} kW < minimum {rules.min_kw} kW")
    if kw % rules.increment_kw:
        raise OrderRejected(
            RejectReason.BAD_INCREMENT, f"{kw} kW is not a multiple of {rules.increment_kw} kW"
        )
    if not rules.price_min <= terms.price_eur_per_mwh <= rules.price_max:
        raise OrderRejected(
            RejectReason.PRICE_OUT_OF_LIMITS,
            f"{terms.price_eur_per_mwh} outside {rules.price_min}..{rules.price_max}",
        )


@dataclass(slots=True)
class _Order:
    order_id: str
    terms: OrderTerms
    seq: int
    status: OrderStatus = OrderStatus.OPEN
    filled_kw: int = 0


class SealedBidAuction:
    """A :class:`~control_plane.markets.exchanges.base.MarketAdapter` for auctioned products."""

    def __init__(
        self,
        name: str,
        rules: list[AuctionRules],
        clock: Clock,
        others: OtherParticipants,
    ) -> None:
        self._name = name
        self._rules = {r.product: r for r in rules}
        self._clock = clock
        self._others = others
        self._orders: dict[str, _Order] = {}
        self._fills: list[Fill] = []
        self._results: dict[tuple[Product, int], ClearingResult] = {}
        self._ids = itertools.count(1)

    @property
    def name(self) -> str:
        return self._name

    @property
    def products(self) -> frozenset[Product]:
        return frozenset(self._rules)

    def _rules_for(self, terms: OrderTerms) -> AuctionRules:
        rules = self._rules.get(terms.product)
        if rules is None:
            raise OrderRejected(RejectReason.WRONG_PRODUCT, f"{self._name} has no {terms.product}")
        return rules

    def _check_gate(self, product: Product, delivery_start_ms: int) -> None:
        closure = gate_closure_ms(product, delivery_start_ms)
        if self._clock.now_ms() >= closure or (product, delivery_start_ms) in self._results:
            raise OrderRejected(
                RejectReason.GATE_CLOSED,
                f"{product} gate for {local_iso(delivery_start_ms)} closed at {local_iso(closure)}",
            )

    def submit(self, terms: OrderTerms) -> str:
        check_terms(self._rules_for(terms), terms)
        self._check_gate(terms.product, terms.delivery_start_ms)
        seq = next(self._ids)
        order_id = f"{self._name}-{seq}"
        self._orders[order_id] = _Order(order_id, terms, seq)
        return order_id

    def _open(self, order_id: str) -> _Order:
        order = self._orders.get(order_id)
        if order is None:
            raise UnknownOrder(order_id)
        if order.status is not OrderStatus.OPEN:
            raise OrderRejected(RejectReason.ORDER_NOT_OPEN, f"{order_id} is {order.status}")
        self._check_gate(order.terms.product, order.terms.delivery_start_ms)
        return order

    def modify(self, order_id: str, terms: OrderTerms) -> None:
        order = self._open(order_id)
        if (terms.product, terms.delivery_start_ms) != (
            order.terms.product,
            order.terms.delivery_start_ms,
        ):
            raise OrderRejected(
                RejectReason.WRONG_PRODUCT, "a modify keeps the product and delivery period"
            )
        check_terms(self._rules_for(terms), terms)
        order.terms = terms

    def cancel(self, order_id: str) -> None:
        self._open(order_id).status = OrderStatus.CANCELLED

    def order_status(self, order_id: str) -> OrderState:
        order = self._orders.get(order_id)
        if order is None:
            raise UnknownOrder(order_id)
        open_kw = order.terms.volume_kw if order.status is OrderStatus.OPEN else 0
        return OrderState(order_id, order.terms, order.status, order.filled_kw, open_kw)

    def fills(self, after_seq: int = 0) -> list[Fill]:
        return [f for f in self._fills if f.seq > after_seq]

    def clearing_results(self) -> list[ClearingResult]:
        return sorted(self._results.values(), key=lambda r: (r.delivery_start_ms, r.product))

    def clear(
        self, product: Product, delivery_start_ms: int, *, extra: Sequence[SyntheticOrder] = ()
    ) -> ClearingResult:
        """Run the auction of one product period; only after its gate closure, only once.
        ``extra``: orders that join the other participants' (e.g. a TSO's activation)."""
        rules = self._rules.get(product)
        if rules is None:
            raise OrderRejected(RejectReason.WRONG_PRODUCT, f"{self._name} has no {product}")
        now = self._clock.now_ms()
        if now < gate_closure_ms(product, delivery_start_ms):
            raise OrderRejected(RejectReason.NOT_CLEARED_YET, "the gate is still open")
        key = (product, delivery_start_ms)
        if key in self._results:
            raise OrderRejected(RejectReason.ALREADY_CLEARED, f"{product} {delivery_start_ms}")
        ours = [
            o
            for o in self._orders.values()
            if o.status is OrderStatus.OPEN and (o.terms.product, o.terms.delivery_start_ms) == key
        ]
        book = [
            AuctionOrder(
                o.order_id, o.terms.side, o.terms.volume_kw, o.terms.price_eur_per_mwh, o.seq
            )
            for o in ours
        ]
        for n, s in enumerate([*self._others(product, delivery_start_ms), *extra]):
            book.append(
                AuctionOrder(f"other-{n}", s.side, s.volume_kw, s.price_eur_per_mwh, 10**9 + n)
            )
        outcome = clear_merit_order(book)
        for o in ours:
            kw = outcome.accepted_kw[o.order_id]
            o.filled_kw = kw
            if kw == 0:
                o.status = OrderStatus.NOT_ACCEPTED
                continue
            o.status = (
                OrderStatus.FILLED if kw == o.terms.volume_kw else OrderStatus.PARTIALLY_FILLED
            )
            price = (
                o.terms.price_eur_per_mwh
                if rules.pricing is Pricing.PAY_AS_BID
                else outcome.price_eur_per_mwh
            )
            if price is None:  # unreachable: an accepted order means something cleared
                raise OrderRejected(RejectReason.NOT_CLEARED_YET, "no clearing price")
            seq = len(self._fills) + 1
            self._fills.append(
                Fill(
                    seq,
                    f"{self._name}-t{seq}",
                    o.order_id,
                    product,
                    o.terms.side,
                    delivery_start_ms,
                    kw,
                    price,
                    now,
                )
            )
        result = ClearingResult(
            product, delivery_start_ms, outcome.price_eur_per_mwh, outcome.volume_kw, now
        )
        self._results[key] = result
        return result

    def clear_day(self, product: Product, day: date) -> list[ClearingResult]:
        """Clear every period of a local delivery day (92/96/100 quarter-hours on DA)."""
        return [self.clear(product, t) for t in delivery_starts(product, day)]
