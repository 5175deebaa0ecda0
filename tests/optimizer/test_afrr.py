"""aFRR capacity in the day-ahead model: offered when its price pays, held with headroom and
energy per direction, in whole MW per block and direction, counted as revenue."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.optimizer.assets import STEPS, Battery, FleetState, OptimizerInputError
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.constraints import build_tables
from control_plane.optimizer.market import MarketPrices, MarketRules, synthetic_prices
from control_plane.optimizer.model import build
from control_plane.optimizer.plan import Plan
from control_plane.optimizer.revenue import evaluate
from control_plane.optimizer.schedule import schedule

pytestmark = pytest.mark.timeout(60)

RULES = MarketRules()
FLAT = (50.0,) * STEPS  # no arbitrage: reserves are the only income
ZERO = (0.0,) * 6


def big_battery(asset_id: str = "b1", **kw: object) -> Battery:
    """4 MWh, 2 MW: room for whole-MW reserve lots."""
    base: dict[str, object] = dict(
        asset_id=asset_id, site_id="s1", e_kwh=4000.0, p_max_kw=2000.0, soc_init_pct=50.0,
        soc_min_pct=10.0, soc_max_pct=90.0, eta_charge=0.95, eta_discharge=0.95,
        degradation_eur_per_kwh=0.01,
    )  # fmt: skip
    base.update(kw)
    return Battery(**base)  # type: ignore[arg-type]


def afrr_prices(
    up: tuple[float, ...], down: tuple[float, ...], fcr: tuple[float, ...] = ZERO
) -> MarketPrices:
    return MarketPrices(FLAT, fcr, up, down)


def test_afrr_is_offered_where_its_price_pays_and_nowhere_else() -> None:
    fleet = FleetState(batteries=(big_battery(),))
    up = (0.0, 12.0, 0.0, 0.0, 9.0, 0.0)
    down = (0.0, 0.0, 7.0, 0.0, 0.0, 0.0)
    prices = afrr_prices(up, down)
    plan = schedule(fleet, prices, RULES, time_limit_s=20)
    assert plan.status == "optimal"
    assert check_plan(fleet, plan, RULES) == []
    got_up, got_down = plan.afrr_up_kw.sum(0), plan.afrr_down_kw.sum(0)
    # Idle at 50 %: 2 MW of headroom each way and 1600 kWh above the floor / below the
    # ceiling, more than 2 MW x 0.5 h needs; so 2 MW where priced, nothing elsewhere.
    assert got_up == pytest.approx([0.0, 2000.0, 0.0, 0.0, 2000.0, 0.0], abs=1e-6)
    assert got_down == pytest.approx([0.0, 0.0, 2000.0, 0.0, 0.0, 0.0], abs=1e-6)
    rev = evaluate(fleet, plan, prices, RULES)
    assert rev.afrr_eur == pytest.approx((2 * 12.0 + 2 * 9.0 + 2 * 7.0) * 4)  # MW x EUR/MW/h x 4 h
    assert rev.total_eur >= rev.afrr_eur - rev.degradation_eur - 1e-6


def test_without_afrr_prices_nothing_is_offered_and_the_model_is_unchanged() -> None:
    fleet = FleetState(batteries=(big_battery(),))
    for prices in (MarketPrices(FLAT, ZERO), afrr_prices(ZERO, ZERO)):
        assert not prices.offers_afrr
        b = build(build_tables(fleet), prices, RULES)
        assert b.afrr_up is None and b.afrr_down is None  # no aFRR variable at all
        plan = schedule(fleet, prices, RULES, time_limit_s=20)
        assert not plan.afrr_up_kw.any() and not plan.afrr_down_kw.any()
        assert plan.afrr_up_kw.shape == plan.reserve_kw.shape == (1, 6)


def test_afrr_competes_with_fcr_for_the_same_headroom() -> None:
    """FCR at 10 EUR/MW/h against aFRR up 8 + down 8: the symmetric pair pays more, so the
    battery's 2 MW go to aFRR; at aFRR 4 + 4 they go to FCR. Either way the headroom per
    direction (FCR + aFRR <= 2 MW) holds."""
    fleet = FleetState(batteries=(big_battery(),))
    fcr = (10.0,) * 6
    rich = schedule(fleet, afrr_prices((8.0,) * 6, (8.0,) * 6, fcr), RULES, time_limit_s=20)
    poor = schedule(fleet, afrr_prices((4.0,) * 6, (4.0,) * 6, fcr), RULES, time_limit_s=20)
    for plan in (rich, poor):
        assert check_plan(fleet, plan, RULES) == []
        assert (plan.reserve_kw + plan.afrr_up_kw).max() <= 2000.0 + 1e-6
    assert rich.afrr_up_kw.sum() == pytest.approx(6 * 2000.0) and not rich.reserve_kw.any()
    assert poor.reserve_kw.sum() == pytest.approx(6 * 2000.0) and not poor.afrr_up_kw.any()


def test_energy_holding_limits_afrr_near_the_soc_floor() -> None:
    """At 20 % of 4 MWh only 400 kWh lie above the 10 % floor when the first block starts:
    0.5 h of positive aFRR at the discharge efficiency allows 760 kW there, no whole MW;
    negative aFRR has room for its full 2 MW."""
    fleet = FleetState(batteries=(big_battery(soc_init_pct=20.0),))
    prices = afrr_prices((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (9.0,) + (0.0,) * 5)
    prices_up = afrr_prices((9.0,) + (0.0,) * 5, (0.0,) * 6)
    down = schedule(fleet, prices, RULES, time_limit_s=20)
    up = schedule(fleet, prices_up, RULES, time_limit_s=20)
    assert down.afrr_down_kw[0, 0] == pytest.approx(2000.0)
    assert up.afrr_up_kw[0, 0] == pytest.approx(0.0, abs=1e-6)  # 760 kW is not a whole MW
    for plan in (down, up):
        assert check_plan(fleet, plan, RULES) == []


def test_milp_lots_are_whole_mw_per_block_and_direction() -> None:
    """Three batteries of 0.7 MW each: 2.1 MW of headroom per direction, offered as 2 MW."""
    fleet = FleetState(
        batteries=tuple(big_battery(f"b{i}", e_kwh=2000.0, p_max_kw=700.0) for i in range(3))
    )
    prices = afrr_prices((6.0,) * 6, (5.0,) * 6)
    plan = schedule(fleet, prices, RULES, time_limit_s=20)
    assert plan.status == "optimal"
    for x in (plan.afrr_up_kw.sum(0), plan.afrr_down_kw.sum(0)):
        assert x == pytest.approx(np.full(6, 2000.0), abs=1e-6)
    assert check_plan(fleet, plan, RULES) == []


def test_prices_validate_afrr() -> None:
    with pytest.raises(OptimizerInputError, match="afrr_up_eur_per_mw_h"):
        MarketPrices(FLAT, ZERO, (-1.0,) * 6)
    short = MarketPrices(FLAT, ZERO, (1.0,) * 4, (1.0,) * 4)
    with pytest.raises(OptimizerInputError, match="needs 6 values"):
        short.afrr(RULES)
    with pytest.raises(OptimizerInputError, match="afrr_energy_h"):
        MarketRules(afrr_energy_h=-1.0)


def test_synthetic_afrr_prices_leave_energy_and_fcr_prices_unchanged() -> None:
    plain, both = synthetic_prices(9), synthetic_prices(9, afrr=True)
    assert plain.afrr_up_eur_per_mw_h == () and plain.afrr_down_eur_per_mw_h == ()
    assert both.energy_eur_per_mwh == plain.energy_eur_per_mwh
    assert both.fcr_eur_per_mw_h == plain.fcr_eur_per_mw_h
    assert both.offers_afrr and len(both.afrr_up_eur_per_mw_h) == 6


def test_old_plan_constructors_get_zero_afrr() -> None:
    plan = Plan(("b",), np.zeros((1, STEPS)), np.ones((1, 6)), "optimal", True)
    assert plan.afrr_up_kw.shape == plan.afrr_down_kw.shape == (1, 6)
    assert not plan.afrr_up_kw.any() and not plan.afrr_down_kw.any()
