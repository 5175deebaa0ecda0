"""Constraint tables: built in the model's units and validated before any solver."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.optimizer.assets import (
    Battery,
    EvSession,
    FleetState,
    FlexibleLoad,
    OptimizerInputError,
    SiteLimits,
)
from control_plane.optimizer.constraints import build_tables, device_frame, validate


def test_ev_table_in_grid_side_energy_with_deadline() -> None:
    ev = EvSession("ev1", "s1", 50.0, 11.0, 4, 40, 20.0, 80.0, 28, eta_charge=0.9)
    t = build_tables(FleetState(evs=(ev,)))
    assert t.demand.e_required_kwh[0] == pytest.approx(30.0 / 0.9)
    assert t.demand.p_import_max_kw[0, :4].sum() == 0 and t.demand.p_import_max_kw[0, 39] == 11
    frame = device_frame(t, "ev1")
    assert list(frame.columns) == ["p_min_kw", "p_max_kw", "e_min_kwh", "e_max_kwh"]
    assert frame.loc[27, "e_min_kwh"] == pytest.approx(30.0 / 0.9)
    assert validate(t) == []


def test_unreachable_targets_are_named_before_solving() -> None:
    ev = EvSession("ev1", "s1", 60.0, 3.7, 20, 32, 10.0, 80.0, 28)
    load = FlexibleLoad("l1", "s1", 30.0, 2.0, 0, 8)  # 2 kW x 2 h = 4 kWh < 30 kWh
    bat = Battery("b1", "s1", 10.0, 0.1, soc_init_pct=10.0, soc_final_min_pct=90.0)
    found = validate(build_tables(FleetState(batteries=(bat,), evs=(ev,), loads=(load,))))
    assert {(f.asset_id, f.constraint) for f in found} == {
        ("ev1", "ev.target_by_deadline"),
        ("l1", "load.energy_in_window"),
        ("b1", "battery.soc_final_min"),
    }
    assert "07:00" in next(f.message for f in found if f.asset_id == "ev1")


def test_invalid_inputs_name_the_field() -> None:
    with pytest.raises(OptimizerInputError, match="deadline_step"):
        EvSession("ev1", "s1", 60.0, 3.7, 20, 32, 10.0, 80.0, 40)
    with pytest.raises(OptimizerInputError, match="import_max_kw"):
        SiteLimits("s1", (1.0,) * 10, (1.0,) * 96)
    with pytest.raises(OptimizerInputError, match="appears twice"):
        b = Battery("b1", "s1", 10.0, 5.0, soc_init_pct=50.0)
        FleetState(batteries=(b, b))
    assert np.isfinite(Battery("b2", "s1", 10.0, 5.0, soc_init_pct=50.0).final_pct)
