"""Market adapters: one interface (:mod:`.base`) and the simulated exchanges behind it."""

from control_plane.markets.exchanges.base import (
    ClearingResult,
    ExchangeError,
    ExchangeUnavailable,
    Fill,
    MarketAdapter,
    OrderRejected,
    OrderState,
    OrderStatus,
    RejectReason,
    UnknownOrder,
    delivery_starts,
    period_hours,
    product_period_ms,
)
from control_plane.markets.exchanges.capacity import CapacityAuction
from control_plane.markets.exchanges.day_ahead import DayAheadAuction
from control_plane.markets.exchanges.intraday import IntradayExchange, OrderBook
from control_plane.markets.exchanges.reserves import ReserveAuction, activate_afrr_energy

__all__ = [
    "CapacityAuction",
    "ClearingResult",
    "DayAheadAuction",
    "ExchangeError",
    "ExchangeUnavailable",
    "Fill",
    "IntradayExchange",
    "MarketAdapter",
    "OrderBook",
    "OrderRejected",
    "OrderState",
    "OrderStatus",
    "RejectReason",
    "ReserveAuction",
    "UnknownOrder",
    "activate_afrr_energy",
    "delivery_starts",
    "period_hours",
    "product_period_ms",
]
