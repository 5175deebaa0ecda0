"""The fixed measurement layout shared by every dataset, detector and tool.

After a power flow, one column per measurement, in this order:

1. per bus (``net.bus`` order): ``bus{i}.vm_pu``, ``bus{i}.p_mw``, ``bus{i}.q_mvar``
   (``net.res_bus``; powers in pandapower's load convention: positive = consumed);
2. per line (``net.line`` order): ``line{j}.p_from_mw``, ``line{j}.q_from_mvar``
   (``net.res_line``; positive = flowing from ``from_bus`` into the line);
3. per two-winding transformer (``net.trafo`` order): ``trafo{k}.p_hv_mw``,
   ``trafo{k}.q_hv_mvar`` (``net.res_trafo``; positive = into the trafo at the HV side).

``i``, ``j`` and ``k`` are the pandapower indices of the elements. Each column also
carries metadata (quantity, element, the buses it touches) for localization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Quantities per element type, in column order, with the result-table column they read.
BUS_QUANTITIES: tuple[str, ...] = ("vm_pu", "p_mw", "q_mvar")
LINE_QUANTITIES: tuple[str, ...] = ("p_from_mw", "q_from_mvar")
TRAFO_QUANTITIES: tuple[str, ...] = ("p_hv_mw", "q_hv_mvar")


@dataclass(frozen=True, slots=True)
class Measurement:
    """Metadata of one measurement column.

    ``bus`` is the bus the meter sits at (the bus itself, a line's from-bus, a
    trafo's HV bus); ``to_bus`` is the far end of a branch, -1 for bus quantities.
    """

    column: str
    element_type: str  # "bus" | "line" | "trafo"
    element: int
    quantity: str  # e.g. "vm_pu", "p_from_mw"
    bus: int
    to_bus: int

    @property
    def is_voltage(self) -> bool:
        return self.quantity == "vm_pu"

    @property
    def is_active_power(self) -> bool:
        return self.quantity.startswith("p_")

    @property
    def buses(self) -> tuple[int, ...]:
        """Every bus this measurement touches."""
        return (self.bus,) if self.to_bus < 0 else (self.bus, self.to_bus)


@dataclass(frozen=True, slots=True)
class MeasurementLayout:
    """The ordered measurement columns of one grid, with their metadata."""

    measurements: tuple[Measurement, ...]
    bus_index: tuple[int, ...]
    line_index: tuple[int, ...]
    trafo_index: tuple[int, ...]

    @property
    def columns(self) -> list[str]:
        return [m.column for m in self.measurements]

    def __len__(self) -> int:
        return len(self.measurements)

    def position(self, column: str) -> int:
        """Index of ``column`` in the layout (``KeyError`` if unknown)."""
        for k, m in enumerate(self.measurements):
            if m.column == column:
                return k
        raise KeyError(column)

    def mask_touching(self, buses: set[int] | frozenset[int]) -> np.ndarray:
        """Boolean mask of the measurements that touch any of ``buses``."""
        return np.array([any(b in buses for b in m.buses) for m in self.measurements], dtype=bool)

    def positions_of(self, element_type: str, quantity: str) -> np.ndarray:
        """Positions of every column of one element type and quantity, in element order."""
        return np.array(
            [
                k
                for k, m in enumerate(self.measurements)
                if m.element_type == element_type and m.quantity == quantity
            ],
            dtype=np.int64,
        )


def build_layout(net: Any) -> MeasurementLayout:
    """The measurement layout of ``net`` (depends only on its elements, not on results)."""
    ms: list[Measurement] = []
    bus_index = tuple(int(i) for i in net.bus.index)
    for i in bus_index:
        for q in BUS_QUANTITIES:
            ms.append(Measurement(f"bus{i}.{q}", "bus", i, q, i, -1))
    line_index = tuple(int(j) for j in net.line.index)
    for j in line_index:
        fb, tb = int(net.line.at[j, "from_bus"]), int(net.line.at[j, "to_bus"])
        for q in LINE_QUANTITIES:
            ms.append(Measurement(f"line{j}.{q}", "line", j, q, fb, tb))
    trafo_index = tuple(int(k) for k in net.trafo.index)
    for k in trafo_index:
        hv, lv = int(net.trafo.at[k, "hv_bus"]), int(net.trafo.at[k, "lv_bus"])
        for q in TRAFO_QUANTITIES:
            ms.append(Measurement(f"trafo{k}.{q}", "trafo", k, q, hv, lv))
    return MeasurementLayout(tuple(ms), bus_index, line_index, trafo_index)


def measurement_columns(net: Any) -> list[str]:
    """The layout's column names for ``net``, in order."""
    return build_layout(net).columns


def _block(res: Any, index: tuple[int, ...], quantities: tuple[str, ...]) -> np.ndarray:
    if not index:
        return np.empty(0)
    table = res[list(quantities)]
    if tuple(int(i) for i in table.index) != index:
        table = table.loc[list(index)]
    return np.asarray(table.to_numpy(dtype=np.float64)).ravel()


def snapshot_vector(net: Any, layout: MeasurementLayout | None = None) -> np.ndarray:
    """The true (noise-free) measurement vector of ``net`` after ``runpp``, in layout order.

    Units: vm in p.u., p in MW, q in Mvar.
    """
    lay = layout if layout is not None else build_layout(net)
    return np.concatenate(
        [
            _block(net.res_bus, lay.bus_index, BUS_QUANTITIES),
            _block(net.res_line, lay.line_index, LINE_QUANTITIES),
            _block(net.res_trafo, lay.trafo_index, TRAFO_QUANTITIES),
        ]
    )
