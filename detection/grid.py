"""Grid models for detection: pandapower networks by a stable name.

``load_grid(name)`` returns a fresh, deterministic ``pandapowerNet``:

* ``case14`` / ``case118``: the IEEE test cases (``pandapower.networks``), with
  rooftop PV added (see :data:`PV_SHARE_OF_LOAD`) so that DER telemetry exists
  on a transmission case too;
* ``cigre_mv``: the CIGRE medium-voltage benchmark with PV and wind DER
  (``create_cigre_network_mv(with_der="pv_wind")``), the demo's distribution grid.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from security.refusals import GridfortError

GRID_NAMES: tuple[str, ...] = ("case14", "case118", "cigre_mv")

#: Peak PV of the rooftop systems added to the IEEE cases, as a share of the bus's peak load.
PV_SHARE_OF_LOAD = 0.2
#: Every how-many-th load bus of an IEEE case (in ``net.load`` order) gets rooftop PV.
PV_EVERY_NTH_LOAD = 2


class _NoNumbaNotice(logging.Filter):
    """Drop pandapower's "numba cannot be imported" notice (DC init ignores ``numba=False``).

    Without numba pandapower runs its pure-Python/scipy path, which is what we measure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("numba cannot be imported")


logging.getLogger("pandapower.auxiliary").addFilter(_NoNumbaNotice())


class UnknownGridError(GridfortError, ValueError):
    """The grid name is not one of :data:`GRID_NAMES`."""


def _quiet_import() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandapower.networks as pn
    return pn


def _add_rooftop_pv(net: Any) -> None:
    import pandapower as pp

    loads = net.load.sort_index()
    for k, (_, row) in enumerate(loads.iterrows()):
        if k % PV_EVERY_NTH_LOAD or row.p_mw <= 0:
            continue
        pp.create_sgen(
            net,
            bus=int(row.bus),
            p_mw=float(row.p_mw) * PV_SHARE_OF_LOAD,
            q_mvar=0.0,
            type="PV",
            name=f"PV {int(row.bus)}",
        )


def _case14() -> Any:
    net = _quiet_import().case14()
    _add_rooftop_pv(net)
    return net


def _case118() -> Any:
    net = _quiet_import().case118()
    _add_rooftop_pv(net)
    return net


def _cigre_mv() -> Any:
    return _quiet_import().create_cigre_network_mv(with_der="pv_wind")


_BUILDERS: dict[str, Callable[[], Any]] = {
    "case14": _case14,
    "case118": _case118,
    "cigre_mv": _cigre_mv,
}


def load_grid(name: str) -> Any:
    """Build the named grid (a new ``pandapowerNet`` each call, identical every time).

    Raises
    ------
    UnknownGridError
        If ``name`` is not one of :data:`GRID_NAMES`.
    """
    if name not in _BUILDERS:
        raise UnknownGridError(f"unknown grid {name!r}; choose one of {', '.join(GRID_NAMES)}")
    return copy.deepcopy(_pristine(name))


@functools.cache
def _pristine(name: str) -> Any:
    """The built grid, kept per process (never handed out: callers get deep copies)."""
    return _BUILDERS[name]()


def der_buses(net: Any) -> np.ndarray:
    """Buses with distributed generation (``net.sgen`` in service), sorted, unique."""
    sgen = net.sgen[net.sgen.in_service]
    return np.unique(sgen.bus.to_numpy(dtype=np.int64))


#: Reuse pandapower's internal model between steps, updating only P/Q of loads, sgens, gens.
RECYCLE_PQ: dict[str, bool] = {"bus_pq": True, "gen": True, "trafo": False}


def run_power_flow(net: Any, *, warm: bool = False) -> None:
    """AC Newton-Raphson power flow (``pandapower.runpp``, voltage angles on).

    ``warm``: start from the last results and reuse the internal model
    (:data:`RECYCLE_PQ`); only element powers may have changed since the last run.
    pandapower's deprecation notices about the bundled test cases are silenced.
    Raises ``pandapower.powerflow.LoadflowNotConverged`` when it does not converge.
    """
    import pandapower as pp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if warm and not net.res_bus.empty and "_ppc" in net and net._ppc is not None:
            pp.runpp(net, init="results", numba=False, recycle=RECYCLE_PQ)
        else:
            pp.runpp(net, init="auto", numba=False, calculate_voltage_angles=True)
