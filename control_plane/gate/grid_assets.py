"""Registry entries for a grid's metering points, and where DER sites sit on that grid.

A substation RTU reports every measurement-layout column of its grid
(``detection.points``); the asset registry must know each grid element as an
asset of the RTU's site so that ingest authorizes and bounds-checks them:

* ``GRID_LINE``: rating ``sqrt(3) * vn_kv * max_i_ka * df * parallel`` [MVA]
  (``vn_kv`` of its from-bus, ``df`` derating factor, ``parallel`` systems);
* ``GRID_TRAFO``: ``sn_mva * parallel``;
* ``GRID_BUS``: the SUM of the ratings of the branches touching it. A bus's
  injection is the sum of its branch flows (Kirchhoff), so only the sum bounds
  it: the slack bus of a two-transformer substation carries both transformers.

Ratings are in kW (1 MVA -> 1000 kW, the registry's unit for either power
sign), capped to the registry's limit :data:`MAX_RATED_P_KW`. Pure apart from
building the pandapower model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from control_plane.assets.model import Asset, AssetKind
from detection.grid import load_grid
from detection.layout import build_layout
from detection.points import grid_point

#: The registry's largest rating [kW] (``control_plane.assets.model.Asset``).
MAX_RATED_P_KW = 100_000.0
_KIND = {"bus": AssetKind.GRID_BUS, "line": AssetKind.GRID_LINE, "trafo": AssetKind.GRID_TRAFO}


def branch_ratings_kw(net: Any) -> dict[tuple[str, int], tuple[float, int, int]]:
    """``(element_type, index) -> (rating [kW], bus a, bus b)`` of every line and trafo.

    Out-of-service branches are included (switching may bring them in).
    """
    out: dict[tuple[str, int], tuple[float, int, int]] = {}
    for j, row in net.line.iterrows():
        vn_kv = float(net.bus.at[int(row.from_bus), "vn_kv"])
        mva = math.sqrt(3.0) * vn_kv * float(row.max_i_ka) * float(row.df) * float(row.parallel)
        out[("line", int(j))] = (mva * 1000.0, int(row.from_bus), int(row.to_bus))
    for k, row in net.trafo.iterrows():
        mva = float(row.sn_mva) * float(row.parallel)
        out[("trafo", int(k))] = (mva * 1000.0, int(row.hv_bus), int(row.lv_bus))
    return out


def grid_assets(grid: str, site_id: str) -> list[Asset]:
    """One registry asset per bus, line and transformer of ``grid``, owned by ``site_id``.

    Asset ids are ``detection.points``' (``{grid}.bus3``); ``rated_p_kw`` as in the
    module docstring [kW]. Raises ``ValueError`` for an element without a positive
    rating and ``detection.grid.UnknownGridError`` for an unknown grid.
    """
    net = load_grid(grid)
    layout = build_layout(net)
    branches = branch_ratings_kw(net)
    bus_kw: dict[int, float] = {b: 0.0 for b in layout.bus_index}
    for rating, a, b in branches.values():
        bus_kw[a] += rating
        bus_kw[b] += rating
    assets: list[Asset] = []
    seen: set[str] = set()
    for m in layout.measurements:
        asset_id = grid_point(grid, m.column).asset_id
        if asset_id in seen:
            continue
        seen.add(asset_id)
        rating = (
            bus_kw[m.element]
            if m.element_type == "bus"
            else branches[(m.element_type, m.element)][0]
        )
        if not rating > 0.0:
            raise ValueError(f"{asset_id}: no positive rating in the {grid} model")
        capped = min(rating, MAX_RATED_P_KW)
        assets.append(Asset(asset_id, site_id, _KIND[m.element_type], rated_p_kw=capped))
    return assets


def bus_for_sites(grid: str, n_sites: int) -> list[int]:
    """``n_sites`` distinct buses where the demo's DER sites attach, spread over the feeders.

    Candidates: buses at the grid's lowest voltage level (the LV side of its
    transformers; on ``cigre_mv`` the 20 kV feeders) that serve a load, excluding
    the slack and the transformer busbars (substation buses). They are taken at
    evenly spaced positions of the candidates in bus order, so consecutive sites
    land on different parts of the feeders. Raises ``ValueError`` if the grid has
    fewer candidates than ``n_sites``.
    """
    if n_sites < 0:
        raise ValueError(f"n_sites must be >= 0, got {n_sites}")
    net = load_grid(grid)
    lowest = float(net.bus.vn_kv.min())
    excluded = {int(b) for b in net.ext_grid.bus}
    excluded |= {int(b) for b in net.trafo.hv_bus} | {int(b) for b in net.trafo.lv_bus}
    loaded = {int(b) for b in net.load.bus}
    candidates = sorted(
        int(b)
        for b in net.bus.index
        if math.isclose(float(net.bus.at[b, "vn_kv"]), lowest)
        and int(b) not in excluded
        and int(b) in loaded
    )
    if n_sites > len(candidates):
        raise ValueError(
            f"{grid} has {len(candidates)} buses for DER sites ({candidates}); {n_sites} requested"
        )
    if n_sites == 0:
        return []
    picks = np.round(np.linspace(0, len(candidates) - 1, n_sites)).astype(int)
    return [candidates[int(k)] for k in picks]
