"""Gate closure and product periods in Europe/Berlin market time, DST days included."""

from __future__ import annotations

from datetime import date

import pytest

from control_plane.markets.actions import Product
from control_plane.markets.gate_closure import (
    delivery_aligned,
    gate_closure_ms,
    local_iso,
    quarter_hours_in_day,
)
from tests.markets.conftest import berlin_ms


def test_day_ahead_gate_is_noon_local_the_day_before() -> None:
    # Delivery 00:00 CEST on 2 June is 22:00 UTC on 1 June: the delivery *day* is local.
    start = berlin_ms(2026, 6, 2, 0)
    assert local_iso(gate_closure_ms(Product.DAY_AHEAD, start)) == "2026-06-01T12:00:00+02:00"


def test_day_ahead_gate_in_winter_is_11_utc() -> None:
    start = berlin_ms(2026, 1, 15, 18)
    assert gate_closure_ms(Product.DAY_AHEAD, start) == berlin_ms(2026, 1, 14, 12)
    assert local_iso(gate_closure_ms(Product.DAY_AHEAD, start)).endswith("+01:00")


def test_gate_for_spring_dst_day_is_noon_cet_the_day_before() -> None:
    # 2026-03-29 has 23 hours; 03:00 CEST is its first hour after the jump.
    start = berlin_ms(2026, 3, 29, 3)
    assert local_iso(gate_closure_ms(Product.DAY_AHEAD, start)) == "2026-03-28T12:00:00+01:00"


def test_gate_on_autumn_dst_day_is_noon_cet_after_fall_back() -> None:
    start = berlin_ms(2026, 10, 26, 0)
    assert local_iso(gate_closure_ms(Product.DAY_AHEAD, start)) == "2026-10-25T12:00:00+01:00"


def test_fcr_gate_is_8_local_the_day_before() -> None:
    start = berlin_ms(2026, 6, 2, 16)
    assert local_iso(gate_closure_ms(Product.FCR, start)) == "2026-06-01T08:00:00+02:00"


def test_intraday_gate_is_5_min_before_delivery() -> None:
    start = berlin_ms(2026, 6, 2, 16)
    assert gate_closure_ms(Product.INTRADAY, start) == start - 5 * 60 * 1000


@pytest.mark.parametrize(("day", "n"), [(date(2026, 3, 29), 92), (date(2026, 10, 25), 100)])
def test_dst_days_have_92_and_100_quarter_hours(day: date, n: int) -> None:
    assert quarter_hours_in_day(day) == n
    assert quarter_hours_in_day(date(2026, 6, 2)) == 96


@pytest.mark.parametrize(
    ("product", "hour", "minute", "aligned"),
    [
        (Product.DAY_AHEAD, 10, 15, True),
        (Product.DAY_AHEAD, 10, 7, False),
        (Product.INTRADAY, 23, 45, True),
        (Product.FCR, 8, 0, True),
        (Product.FCR, 9, 0, False),
        (Product.AFRR_POS, 20, 0, True),
        (Product.AFRR_NEG, 10, 0, False),
        (Product.AFRR_ENERGY_NEG, 10, 45, True),
        (Product.AFRR_ENERGY_POS, 10, 50, False),
        (Product.CAPACITY, 7, 30, False),
    ],
)
def test_delivery_alignment(product: Product, hour: int, minute: int, aligned: bool) -> None:
    assert delivery_aligned(product, berlin_ms(2026, 6, 2, hour, minute)) is aligned


def test_fcr_blocks_follow_local_time_on_dst_day() -> None:
    # On 2026-03-29 the 04:00 CEST block starts 3 h after midnight: still a block start.
    assert delivery_aligned(Product.FCR, berlin_ms(2026, 3, 29, 4))
    assert not delivery_aligned(Product.FCR, berlin_ms(2026, 3, 29, 0) + 4 * 3600 * 1000)
