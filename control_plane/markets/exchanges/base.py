"""The one market-adapter interface every exchange implements, its value objects and errors.

An adapter is Gridfort's *account* at one exchange: it accepts, changes and cancels our
orders, reports their state, our fills, and the public clearing results. Simulated
exchanges (this package) and real ones (later: EPEX/Regelleistung APIs) implement the
same :class:`MarketAdapter` protocol, so the :class:`~control_plane.markets.gateway.MarketGateway`
does not know which one it talks to.

Units: volumes are exact integer kW (``volume_kw``; the API types carry MW in
:class:`~control_plane.markets.actions.OrderTerms`), prices in EUR/MWh. For capacity
products (``fcr``, ``afrr_pos``, ``afrr_neg``, ``capacity``) the price field holds EUR per
MW and hour of the product period (EUR/MW/h, the same dimension as EUR/MWh). Instants in
Unix epoch ms.
Side: ``sell`` = export / offering capacity (positive position), ``buy`` = import.

Errors: :class:`ExchangeError` is the base; :class:`OrderRejected` carries a stable
:class:`RejectReason` (an exchange's own validation, independent of our policy);
:class:`UnknownOrder` for an order ID the exchange never issued; :class:`ExchangeUnavailable`
when the exchange cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Protocol

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.gate_closure import MARKET_TZ, QUARTER_HOUR_PRODUCTS, local_time
from security.refusals import GridfortError

QUARTER_HOUR_MS = 15 * 60 * 1000
HOUR_MS = 60 * 60 * 1000


class RejectReason(StrEnum):
    """Why an exchange refuses an order or an operation. Stable: audit records key on them."""

    WRONG_PRODUCT = "WRONG_PRODUCT"
    WRONG_SIDE = "WRONG_SIDE"
    GATE_CLOSED = "GATE_CLOSED"
    NOT_ALIGNED = "NOT_ALIGNED"
    BELOW_MINIMUM = "BELOW_MINIMUM"
    BAD_INCREMENT = "BAD_INCREMENT"
    PRICE_OUT_OF_LIMITS = "PRICE_OUT_OF_LIMITS"
    ORDER_NOT_OPEN = "ORDER_NOT_OPEN"
    NOT_CLEARED_YET = "NOT_CLEARED_YET"
    ALREADY_CLEARED = "ALREADY_CLEARED"


class ExchangeError(GridfortError):
    """Base of every error an exchange adapter raises on purpose."""


class OrderRejected(ExchangeError):
    """The exchange refused the operation; ``reason`` is stable, the message is for humans."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class UnknownOrder(ExchangeError):
    """No order with this ID exists at this exchange (for our account)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"unknown order {order_id!r}")
        self.order_id = order_id


class ExchangeUnavailable(ExchangeError):
    """The exchange did not answer (timeout, connection refused, maintenance)."""


class OrderStatus(StrEnum):
    OPEN = "open"  # accepted, waiting for the auction or resting in the book
    PARTIALLY_FILLED = "partially_filled"  # some volume traded; the rest open or expired
    FILLED = "filled"
    CANCELLED = "cancelled"  # by us; a partially filled order keeps its fills
    NOT_ACCEPTED = "not_accepted"  # the auction cleared without it


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as the exchange sees it now. ``open_kw`` is what may still trade."""

    order_id: str
    terms: OrderTerms
    status: OrderStatus
    filled_kw: int
    open_kw: int

    def __post_init__(self) -> None:
        if self.filled_kw < 0 or self.open_kw < 0:
            raise ValueError("filled_kw and open_kw must not be negative")
        if self.filled_kw + self.open_kw > self.terms.volume_kw:
            raise ValueError("filled_kw + open_kw exceeds the order volume")


@dataclass(frozen=True, slots=True)
class Fill:
    """Volume of one of our orders that traded. ``seq`` counts up per exchange from 1."""

    seq: int
    trade_id: str
    order_id: str
    product: Product
    side: Side
    delivery_start_ms: int
    volume_kw: int
    price_eur_per_mwh: float
    ts_ms: int

    def __post_init__(self) -> None:
        if self.volume_kw <= 0:
            raise ValueError("a fill has a positive volume")

    @property
    def volume_mw(self) -> float:
        return self.volume_kw / 1000

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "trade_id": self.trade_id,
            "order_id": self.order_id,
            "product": self.product.value,
            "side": self.side.value,
            "delivery_start_ms": self.delivery_start_ms,
            "volume_kw": self.volume_kw,
            "price_eur_per_mwh": self.price_eur_per_mwh,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class ClearingResult:
    """The public result of one auctioned product: uniform price (None: nothing cleared)."""

    product: Product
    delivery_start_ms: int
    price_eur_per_mwh: float | None
    volume_kw: int
    cleared_ms: int


class MarketAdapter(Protocol):
    """One exchange, seen from our account. Methods raise :class:`ExchangeError` subclasses."""

    @property
    def name(self) -> str: ...

    @property
    def products(self) -> frozenset[Product]: ...

    def submit(self, terms: OrderTerms) -> str:
        """Place an order; returns the exchange's order ID."""
        ...

    def modify(self, order_id: str, terms: OrderTerms) -> None:
        """Replace the terms of an open order (new total volume, same product and delivery)."""
        ...

    def cancel(self, order_id: str) -> None:
        """Cancel what is still open of an order; fills stay."""
        ...

    def order_status(self, order_id: str) -> OrderState: ...

    def fills(self, after_seq: int = 0) -> list[Fill]:
        """Our fills with ``seq > after_seq``, oldest first."""
        ...

    def clearing_results(self) -> list[ClearingResult]:
        """Results of every auction cleared so far (empty for continuous markets)."""
        ...


# -- product calendar ----------------------------------------------------------------------------


def _local_midnight_ms(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=MARKET_TZ).timestamp() * 1000)


def product_period_ms(product: Product, delivery_start_ms: int) -> int:
    """Length [ms] of the product period starting at ``delivery_start_ms``.

    15 min for energy (aFRR energy too), 1 h for capacity, and 4 h *local* blocks for FCR
    and aFRR capacity: the 00:00-04:00 block of a DST day lasts 3 h (spring) or 5 h (autumn).
    """
    if product in QUARTER_HOUR_PRODUCTS:
        return QUARTER_HOUR_MS
    if product is Product.CAPACITY:
        return HOUR_MS
    start = local_time(delivery_start_ms)
    end_wall = start.replace(tzinfo=None) + timedelta(hours=4)
    end_ms = int(end_wall.replace(tzinfo=MARKET_TZ).timestamp() * 1000)
    return end_ms - delivery_start_ms


def delivery_starts(product: Product, day: date) -> list[int]:
    """Every delivery start [Unix epoch ms] of ``product`` on a local delivery day, in order.

    Day-ahead, intraday, aFRR energy: 92, 96 or 100 quarter-hours; FCR and aFRR capacity:
    six 4-h local blocks; capacity: 23, 24 or 25 hours.
    """
    start, end = _local_midnight_ms(day), _local_midnight_ms(day + timedelta(days=1))
    out: list[int] = []
    t = start
    while t < end:
        out.append(t)
        t += product_period_ms(product, t)
    return out


def period_hours(product: Product, delivery_start_ms: int) -> float:
    """Length of the product period [h]."""
    return product_period_ms(product, delivery_start_ms) / HOUR_MS
