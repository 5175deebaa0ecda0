"""Settlement: revenue arithmetic, imbalance, unavailability penalties pro rata."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import HOUR_MS, Fill
from control_plane.markets.settlement import (
    AvailabilityInterval,
    GatedDeliverySeries,
    capacity_rows,
    settle,
)
from security.audit_log import verify_audit_log
from tests.markets.conftest import berlin_ms

QH = berlin_ms(2026, 6, 2, 18)
BLOCK = berlin_ms(2026, 6, 2, 16)  # FCR 16:00-20:00


def fill(product: Product, side: Side, kw: int, price: float, start: int, seq: int = 1) -> Fill:
    return Fill(seq, f"t{seq}", f"o{seq}", product, side, start, kw, price, 0)


FILLS = [
    fill(Product.DAY_AHEAD, Side.SELL, 5_000, 80.0, QH, 1),  # +5 MW x 80 x 0.25 h = +100
    fill(Product.INTRADAY, Side.BUY, 1_000, 90.0, QH, 2),  # -1 MW x 90 x 0.25 h = -22.5
    fill(Product.FCR, Side.SELL, 10_000, 12.0, BLOCK, 3),  # 10 MW x 12 x 4 h = +480
]


def test_revenue_imbalance_and_penalty_arithmetic() -> None:
    delivered = GatedDeliverySeries(
        energy_mwh={QH: 0.8},  # sold net 4 MW x 0.25 h = 1.0 MWh: 0.2 MWh short
        availability={
            (Product.FCR, BLOCK): (
                AvailabilityInterval(BLOCK, 3 * HOUR_MS, 10.0),
                AvailabilityInterval(BLOCK + 3 * HOUR_MS, HOUR_MS, 5.0),
            )
        },
    )
    s = settle(FILLS, delivered, {QH: 200.0})
    assert s.revenue_by_product() == {
        Product.DAY_AHEAD: pytest.approx(100.0),
        Product.INTRADAY: pytest.approx(-22.5),
        Product.FCR: pytest.approx(480.0),
    }
    energy, fcr = (next(r for r in s.delivery if r.product == k) for k in ("energy", "fcr"))
    assert (energy.sold_mwh, energy.delivered_mwh) == pytest.approx((1.0, 0.8))
    assert energy.imbalance_mwh == pytest.approx(-0.2)
    assert energy.imbalance_eur == pytest.approx(-40.0)  # short 0.2 MWh pays 200 EUR/MWh
    # FCR: 35 of 40 MW h held -> 12.5 % undelivered -> 12.5 % of 480 EUR = 60 EUR.
    assert (fcr.sold_mwh, fcr.delivered_mwh) == pytest.approx((40.0, 35.0))
    assert fcr.delivered_pct == pytest.approx(87.5)
    assert fcr.penalty_eur == pytest.approx(60.0)
    assert s.net_eur == pytest.approx(100 - 22.5 - 40 + 480 - 60)


def test_long_imbalance_is_paid() -> None:
    delivered = GatedDeliverySeries(energy_mwh={QH: 1.5})
    s = settle(FILLS[:1], delivered, {QH: 100.0})
    assert s.delivery[0].imbalance_eur == pytest.approx(+25.0)  # 0.25 MWh long x 100


def test_missing_delivery_counts_as_nothing_delivered() -> None:
    s = settle(FILLS, GatedDeliverySeries(), {QH: 100.0})
    energy, fcr = (next(r for r in s.delivery if r.product == k) for k in ("energy", "fcr"))
    assert energy.imbalance_mwh == pytest.approx(-1.0)
    assert fcr.penalty_eur == pytest.approx(480.0)  # no availability at all: the whole payment


def test_penalty_is_pro_rata_to_amount_and_time() -> None:
    # Half the volume for half the time missing -> a quarter of the payment.
    avail = {
        (Product.FCR, BLOCK): (
            AvailabilityInterval(BLOCK, 2 * HOUR_MS, 10.0),
            AvailabilityInterval(BLOCK + 2 * HOUR_MS, 2 * HOUR_MS, 5.0),
        )
    }
    [row] = capacity_rows(FILLS[2:], GatedDeliverySeries(availability=avail))
    assert row.penalty_eur == pytest.approx(480 * 0.25)
    [row] = capacity_rows(FILLS[2:], GatedDeliverySeries(availability=avail), penalty_factor=2.0)
    assert row.penalty_eur == pytest.approx(480 * 0.5)


def test_over_availability_earns_no_bonus() -> None:
    avail = {(Product.FCR, BLOCK): (AvailabilityInterval(BLOCK, 4 * HOUR_MS, 50.0),)}
    [row] = capacity_rows(FILLS[2:], GatedDeliverySeries(availability=avail))
    assert row.penalty_eur == 0.0 and row.delivered_pct == pytest.approx(100.0)


def test_dst_fcr_block_is_paid_for_its_real_length() -> None:
    first = berlin_ms(2026, 3, 29, 0)  # 00:00-04:00 local is 3 h on the spring DST day
    s = settle([fill(Product.FCR, Side.SELL, 2_000, 10.0, first)], GatedDeliverySeries(), {})
    assert s.revenue_eur == pytest.approx(2 * 10 * 3)


def test_delivery_series_is_validated() -> None:
    with pytest.raises(ValueError, match="overlap"):
        GatedDeliverySeries(
            availability={
                (Product.FCR, BLOCK): (
                    AvailabilityInterval(BLOCK, 2 * HOUR_MS, 1.0),
                    AvailabilityInterval(BLOCK + HOUR_MS, HOUR_MS, 1.0),
                )
            }
        )
    with pytest.raises(ValueError, match="outside"):
        GatedDeliverySeries(
            availability={(Product.FCR, BLOCK): (AvailabilityInterval(BLOCK, 5 * HOUR_MS, 1.0),)}
        )
    with pytest.raises(ValueError, match="capacity products"):
        GatedDeliverySeries(availability={(Product.DAY_AHEAD, QH): ()})
    with pytest.raises(ValueError):
        AvailabilityInterval(BLOCK, HOUR_MS, -1.0)


def test_missing_imbalance_price_is_an_error() -> None:
    with pytest.raises(ValueError, match="imbalance price"):
        settle(FILLS[:1], GatedDeliverySeries(), {})


def test_simulated_day_round_trip_settles_and_audits(tmp_path: Path) -> None:
    """`gridfort market simulate-day`: policy -> gateway -> auctions -> fills -> settlement."""
    from control_plane.cli.market import run_day
    from tests.markets.conftest import POLICIES

    audit_path = tmp_path / "audit.jsonl"
    r = run_day(
        date(2026, 10, 25),
        3,
        10.0,
        trust_domain="gridfort.test",
        policies=POLICIES,
        audit_path=audit_path,
    )
    assert {x.status.value for x in r.results} == {"accepted"}
    assert len(r.results) == 6 + 16  # six FCR blocks (the first 5 h long) and 16 quarter-hours
    assert r.fills and r.settlement.revenue_eur > 0
    assert r.settlement.penalty_eur > 0  # the synthetic fleet misses an hour of one FCR block
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    events = [rec["event"] for rec in records]
    assert events.count("market.policy_decision") == 22
    assert events.count("market.fill") == len(r.fills)
    assert verify_audit_log(audit_path).ok


def test_simulated_day_cli_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from control_plane.cli import market

    parser = argparse.ArgumentParser()
    market.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "market",
            "simulate-day",
            "--date",
            "2026-03-29",
            "--seed",
            "1",
            "--json",
            "--audit-log",
            str(tmp_path / "a.jsonl"),
        ]
    )
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["net_eur"] == pytest.approx(
        sum(out["revenue_eur"].values()) + out["imbalance_eur"] - out["penalty_eur"], abs=0.02
    )


def test_activated_afrr_energy_is_scheduled_not_imbalance() -> None:
    # 4 MW sold day-ahead (1 MWh); the TSO activated 2 MW downward for the quarter-hour:
    # the fleet should deliver 1 - 0.5 = 0.5 MWh and does. No imbalance; the activated
    # energy earns its price (received per MWh: here the provider pays 20 EUR/MWh).
    fills = [
        fill(Product.DAY_AHEAD, Side.SELL, 4_000, 80.0, QH, 1),
        fill(Product.AFRR_ENERGY_NEG, Side.SELL, 2_000, -20.0, QH, 2),
    ]
    s = settle(fills, GatedDeliverySeries(energy_mwh={QH: 0.5}), {QH: 100.0})
    [row] = s.delivery
    assert (row.sold_mwh, row.delivered_mwh, row.imbalance_mwh) == (0.5, 0.5, 0.0)
    assert s.revenue_by_product() == {Product.DAY_AHEAD: 80.0, Product.AFRR_ENERGY_NEG: -10.0}


def test_afrr_capacity_is_a_capacity_product_per_direction() -> None:
    fills = [
        fill(Product.AFRR_POS, Side.SELL, 3_000, 8.0, BLOCK, 1),
        fill(Product.AFRR_NEG, Side.SELL, 2_000, 6.0, BLOCK, 2),
    ]
    s = settle(fills, GatedDeliverySeries(), {})
    assert [(r.product, r.sold_mwh, r.penalty_eur) for r in s.delivery] == [
        ("afrr_neg", 8.0, 48.0),  # nothing shown available: the whole payment is cut
        ("afrr_pos", 12.0, 96.0),
    ]
