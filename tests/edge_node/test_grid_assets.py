"""Registry entries of the demo grid's metering points, and the buses DER sites attach to.

(``control_plane/gate/grid_assets.py``; kept next to the grid simulator's tests because
the decisive check is that everything the simulated RTU reports fits these bounds.)
"""

from __future__ import annotations

import math

import pytest

from control_plane.assets.model import AssetKind, channel_bounds
from control_plane.gate.grid_assets import MAX_RATED_P_KW, bus_for_sites, grid_assets
from detection.grid import load_grid
from detection.points import grid_points
from edge_node.simulators.grid_sim import MONDAY_MS, STEP_MS, GridSimulator


def test_one_asset_per_grid_element_with_its_rating() -> None:
    assets = {a.asset_id: a for a in grid_assets("cigre_mv", "substation-1")}
    assert len(assets) == 15 + 15 + 2
    assert {a.site_id for a in assets.values()} == {"substation-1"}
    kinds = [a.kind for a in assets.values()]
    assert (kinds.count(AssetKind.GRID_BUS), kinds.count(AssetKind.GRID_LINE)) == (15, 15)
    assert kinds.count(AssetKind.GRID_TRAFO) == 2
    line_kw = math.sqrt(3) * 20.0 * 0.145 * 1000.0  # 20 kV, 145 A
    assert assets["cigre_mv.line0"].rated_p_kw == pytest.approx(line_kw)
    assert assets["cigre_mv.trafo0"].rated_p_kw == 25_000.0
    # a bus is bounded by the sum of its branches: the slack feeds both transformers
    assert assets["cigre_mv.bus0"].rated_p_kw == 50_000.0
    assert assets["cigre_mv.bus1"].rated_p_kw == pytest.approx(25_000.0 + line_kw)
    assert assets["cigre_mv.bus5"].rated_p_kw == pytest.approx(2 * line_kw)


def test_ratings_are_capped_to_the_registry_limit() -> None:
    assets = grid_assets("case118", "substation-2")
    assert len(assets) == len(load_grid("case118").bus) + len(load_grid("case118").line) + len(
        load_grid("case118").trafo
    )
    assert all(0 < a.rated_p_kw <= MAX_RATED_P_KW for a in assets)
    assert any(a.rated_p_kw == MAX_RATED_P_KW for a in assets)


def test_every_simulated_measurement_fits_its_assets_bounds() -> None:
    """Two days of snapshots (with DER sites) pass the validate stage's physical bounds."""
    assets = {a.asset_id: a for a in grid_assets("cigre_mv", "substation-1")}
    sim = GridSimulator(seed=4)
    for i, bus in enumerate(bus_for_sites("cigre_mv", 3)):
        sim.attach_site(f"site-{i}", bus, lambda: -16.0)
    points = grid_points("cigre_mv", sim.columns)
    bounds = [channel_bounds(assets[p.asset_id])[p.quantity] for p in points]
    for k in range(0, 2 * 96, 4):  # every hour of two days
        values = sim.step(MONDAY_MS + k * STEP_MS).values
        for p, (lo, hi), v in zip(points, bounds, values, strict=True):
            assert lo <= v * p.scale <= hi, (p.column, v * p.scale, (lo, hi))


def test_sites_attach_to_distinct_feeder_buses_spread_out() -> None:
    net = load_grid("cigre_mv")
    assert bus_for_sites("cigre_mv", 3) == [3, 8, 14]
    for n in range(12):  # 11 feeder buses serve a load
        buses = bus_for_sites("cigre_mv", n)
        assert len(buses) == len(set(buses)) == n
        for b in buses:
            assert net.bus.at[b, "vn_kv"] == 20.0  # the LV side of the 110/20 kV substation
            assert b not in set(net.ext_grid.bus) | set(net.trafo.lv_bus)
            assert b in set(net.load.bus)
    assert bus_for_sites("cigre_mv", 0) == []
    with pytest.raises(ValueError, match="12 requested"):
        bus_for_sites("cigre_mv", 12)
