"""The aFRR reservation read from a plan: the array path equals the row-by-row one."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.dispatch.activation import Participants
from control_plane.dispatch.afrr import BatteryIndex, activation_sections, reserved_participants
from control_plane.optimizer.assets import STEPS, Battery, FleetState
from control_plane.optimizer.plan import Plan


def fleet_and_plan(seed: int) -> tuple[FleetState, Plan]:
    rng = np.random.default_rng(seed)
    sites = [f"s{k}" for k in rng.permutation(12)]  # batteries not grouped by site
    bats = tuple(
        Battery(asset_id=f"b{i}", site_id=sites[int(rng.integers(12))], e_kwh=20.0,
                p_max_kw=5.0, soc_init_pct=50.0)
        for i in range(60)
    )  # fmt: skip
    fleet = FleetState(batteries=bats)
    up = np.where(rng.random((60, 6)) < 0.6, rng.uniform(0.5, 2.0, (60, 6)), 0.0)
    down = np.where(rng.random((60, 6)) < 0.6, rng.uniform(0.5, 2.0, (60, 6)), 0.0)
    plan = Plan(
        asset_ids=fleet.asset_ids,
        p_kw=rng.uniform(-3.0, 3.0, (60, STEPS)),
        reserve_kw=np.zeros((60, 6)),
        status="optimal",
        bids=False,
        afrr_up_kw=up,
        afrr_down_kw=down,
    )
    return fleet, plan


def reference(plan: Plan, fleet: FleetState, step: int, block: int, also: set[str]) -> Participants:
    rows = [
        (b.site_id, b.asset_id, float(plan.p_kw[i, step]), float(plan.afrr_up_kw[i, block]),
         float(plan.afrr_down_kw[i, block]))
        for i, b in enumerate(fleet.batteries)
        if plan.afrr_up_kw[i, block] > 1e-6 or plan.afrr_down_kw[i, block] > 1e-6
        or b.asset_id in also
    ]  # fmt: skip
    return Participants.from_rows(rows)


def test_the_array_path_equals_the_row_path() -> None:
    for seed in range(5):
        fleet, plan = fleet_and_plan(seed)
        index = BatteryIndex.of(fleet)
        for step, block, also in ((3, 0, set()), (40, 2, {"b1", "b7"}), (95, 5, set())):
            got = reserved_participants(plan, fleet, step, block, frozenset(also), index)
            want = reference(plan, fleet, step, block, also)
            assert got.site_ids == want.site_ids
            assert got.site_bounds.tolist() == want.site_bounds.tolist()
            assert got.asset_ids == want.asset_ids
            for a, b in ((got.base_kw, want.base_kw), (got.up_kw, want.up_kw),
                         (got.down_kw, want.down_kw)):  # fmt: skip
                assert np.array_equal(a, b)


def test_sections_carry_the_share_and_nothing_else() -> None:
    fleet, plan = fleet_and_plan(1)
    parts = reserved_participants(plan, fleet, 10, 1)
    total = float(parts.up_kw.sum())
    sections, shift, delivered = activation_sections(parts, total / 2)
    assert delivered == total / 2
    sent = {a: p for s in sections for a, p in zip(s.asset_ids, s.p_kw, strict=True)}
    assert set(sent) == set(parts.asset_ids)  # only the reserved batteries
    for asset, base, up in zip(parts.asset_ids, parts.base_kw, parts.up_kw, strict=True):
        assert sent[asset] == pytest.approx(base + up / 2, abs=1e-12)
        assert shift.get(asset, 0.0) == pytest.approx(up / 2, abs=1e-12)
