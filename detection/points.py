"""Grid metering points as telemetry: a layout column <-> (asset id, quantity, scale).

A substation RTU streams the grid model's measurements through the same signed
telemetry path as the DER edges. Each layout column (``detection.layout``) is one
metering point of one grid element, reported as a telemetry measurement:

=====================  =============================  ===================  ========
layout column          asset id                       quantity             scale
=====================  =============================  ===================  ========
``bus{i}.vm_pu``       ``{grid}.bus{i}``              VOLTAGE_PU [p.u.]    1
``bus{i}.p_mw``        ``{grid}.bus{i}``              ACTIVE_POWER [kW]    1000
``bus{i}.q_mvar``      ``{grid}.bus{i}``              REACTIVE_POWER [kvar] 1000
``line{j}.p_from_mw``  ``{grid}.line{j}``             ACTIVE_POWER [kW]    1000
``line{j}.q_from_mvar`` ``{grid}.line{j}``            REACTIVE_POWER [kvar] 1000
``trafo{k}.p_hv_mw``   ``{grid}.trafo{k}``            ACTIVE_POWER [kW]    1000
``trafo{k}.q_hv_mvar`` ``{grid}.trafo{k}``            REACTIVE_POWER [kvar] 1000
=====================  =============================  ===================  ========

Signs are the grid model's (see ``detection.layout``). This module is pure (no
pandapower, no torch): the edge, the control plane and the simulators share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gridfort.v1 import telemetry_pb2 as tpb

_COLUMN = re.compile(
    r"^(bus|line|trafo)(\d{1,6})\.(vm_pu|p_mw|q_mvar|p_from_mw|q_from_mvar|p_hv_mw|q_hv_mvar)$"
)

_QUANTITY: dict[str, tuple[int, int, float]] = {
    "vm_pu": (tpb.QUANTITY_VOLTAGE_PU, tpb.UNIT_PU, 1.0),
    "p_mw": (tpb.QUANTITY_ACTIVE_POWER, tpb.UNIT_KW, 1000.0),
    "q_mvar": (tpb.QUANTITY_REACTIVE_POWER, tpb.UNIT_KVAR, 1000.0),
    "p_from_mw": (tpb.QUANTITY_ACTIVE_POWER, tpb.UNIT_KW, 1000.0),
    "q_from_mvar": (tpb.QUANTITY_REACTIVE_POWER, tpb.UNIT_KVAR, 1000.0),
    "p_hv_mw": (tpb.QUANTITY_ACTIVE_POWER, tpb.UNIT_KW, 1000.0),
    "q_hv_mvar": (tpb.QUANTITY_REACTIVE_POWER, tpb.UNIT_KVAR, 1000.0),
}
_VALID_PAIRS = {
    "bus": ("vm_pu", "p_mw", "q_mvar"),
    "line": ("p_from_mw", "q_from_mvar"),
    "trafo": ("p_hv_mw", "q_hv_mvar"),
}


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One layout column as telemetry. ``scale``: telemetry value = layout value * scale."""

    column: str
    asset_id: str
    element_type: str  # "bus" | "line" | "trafo"
    quantity: int  # telemetry_pb2.Quantity
    unit: int  # telemetry_pb2.Unit
    scale: float


def grid_point(grid: str, column: str) -> GridPoint:
    """The telemetry point of layout ``column`` on ``grid`` (``ValueError`` if none)."""
    m = _COLUMN.match(column)
    if m is None or m.group(3) not in _VALID_PAIRS[m.group(1)]:
        raise ValueError(f"{column!r} is not a measurement-layout column")
    element_type, index, q = m.group(1), m.group(2), m.group(3)
    quantity, unit, scale = _QUANTITY[q]
    return GridPoint(column, f"{grid}.{element_type}{index}", element_type, quantity, unit, scale)


def grid_points(grid: str, columns: list[str]) -> list[GridPoint]:
    """The telemetry points of every layout column, in layout order."""
    return [grid_point(grid, c) for c in columns]
