"""Market calendar rules as pure functions of instants: gate closure and product periods.

All markets here run on Europe/Berlin market time (CET/CEST). The delivery *day* of a
product is the local calendar day of its delivery start, so DST days (23 h and 25 h,
i.e. 92 and 100 quarter-hours) need no special case: "12:00 the day before" is
computed on the local calendar and converted with :mod:`zoneinfo`.

| product   | gate closure                               | period        |
|-----------|--------------------------------------------|---------------|
| day_ahead | 12:00 local, the day before delivery       | 15 min        |
| intraday  | 5 min before delivery start                | 15 min        |
| capacity  | 12:00 local, the day before delivery       | 1 h (local)   |
| fcr       | 08:00 local, the day before delivery       | 4 h (local)   |
| afrr_pos, afrr_neg (capacity) | 09:00 local, the day before delivery | 4 h (local) |
| afrr_energy_pos, afrr_energy_neg | 25 min before delivery start | 15 min       |
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from control_plane.markets.actions import Product

MARKET_TZ = ZoneInfo("Europe/Berlin")
INTRADAY_LEAD_MS = 5 * 60 * 1000
AFRR_ENERGY_LEAD_MS = 25 * 60 * 1000
QUARTER_HOUR_PRODUCTS = frozenset(
    {Product.DAY_AHEAD, Product.INTRADAY, Product.AFRR_ENERGY_POS, Product.AFRR_ENERGY_NEG}
)

_DAY_BEFORE_GATE: dict[Product, time] = {
    Product.DAY_AHEAD: time(12, 0),
    Product.CAPACITY: time(12, 0),
    Product.FCR: time(8, 0),
    Product.AFRR_POS: time(9, 0),
    Product.AFRR_NEG: time(9, 0),
}


def local_time(ts_ms: int) -> datetime:
    """``ts_ms`` [Unix epoch ms] as an aware datetime in market time."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(MARKET_TZ)


def local_iso(ts_ms: int) -> str:
    """``ts_ms`` in market time, ISO 8601 with its offset (e.g. 2026-03-29T12:00:00+02:00)."""
    return local_time(ts_ms).isoformat(timespec="seconds")


def _local_ms(day: date, at: time) -> int:
    return int(datetime.combine(day, at, tzinfo=MARKET_TZ).timestamp() * 1000)


def gate_closure_ms(product: Product, delivery_start_ms: int) -> int:
    """The last instant [Unix epoch ms] at which an order for this delivery may be placed."""
    if product is Product.INTRADAY:
        return delivery_start_ms - INTRADAY_LEAD_MS
    if product in (Product.AFRR_ENERGY_POS, Product.AFRR_ENERGY_NEG):
        return delivery_start_ms - AFRR_ENERGY_LEAD_MS
    delivery_day = local_time(delivery_start_ms).date()
    return _local_ms(delivery_day - timedelta(days=1), _DAY_BEFORE_GATE[product])


def delivery_aligned(product: Product, delivery_start_ms: int) -> bool:
    """Whether the delivery start is the start of one of the product's periods (local time)."""
    if delivery_start_ms % 1000:
        return False
    t = local_time(delivery_start_ms)
    if t.second or t.microsecond:
        return False
    if product in QUARTER_HOUR_PRODUCTS:
        return t.minute % 15 == 0
    if product is Product.CAPACITY:
        return t.minute == 0
    return t.minute == 0 and t.hour % 4 == 0


def quarter_hours_in_day(day: date) -> int:
    """Number of 15-min products on a local delivery day: 96, or 92/100 on DST days."""
    start = _local_ms(day, time(0))
    end = _local_ms(day + timedelta(days=1), time(0))
    return (end - start) // (15 * 60 * 1000)
