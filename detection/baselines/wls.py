"""Weighted-least-squares state estimation with the classic bad-data tests.

Uses ``pandapower.estimation`` (algorithm ``"wls"``) on the layout's measurements:

* chi-square test on the WLS objective ``J = r' R^-1 r`` against the
  ``1 - chi2_prob_false`` quantile with ``m - n`` degrees of freedom (the formula of
  ``StateEstimation.perform_chi2_test``, computed here so that a diverging estimate
  counts as bad data instead of crashing);
* largest normalized residual (LNR) identification and removal
  (``StateEstimation.perform_rn_max_test``): the measurements it removes are the
  ones it localizes as bad.

Measurement standard deviations are the generator's noise model, so on clean data
the chi-square test raises false alarms at about ``chi2_prob_false``. Bus power
measurements are converted to what the estimator expects: pandapower's estimator
models shunts inside the admittance matrix, so their consumption (at the measured
voltage) is taken out of the bus measurements first.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from detection.grid import load_grid, run_power_flow
from detection.layout import MeasurementLayout, build_layout

_MEAS_TYPE = {
    "vm_pu": ("v", None),
    "p_mw": ("p", None),
    "q_mvar": ("q", None),
    "p_from_mw": ("p", "from"),
    "q_from_mvar": ("q", "from"),
    "p_hv_mw": ("p", "hv"),
    "q_hv_mvar": ("q", "hv"),
}


@dataclass(frozen=True, slots=True)
class WlsVerdict:
    """Result of WLS estimation and bad-data tests on one snapshot.

    ``objective`` is ``J`` (dimensionless), ``threshold`` the chi-square limit;
    ``flagged`` the layout positions the LNR test removed as bad data.
    """

    converged: bool
    objective: float
    threshold: float
    chi2_bad_data: bool
    lnr_max: float
    flagged: tuple[int, ...]


class WlsBadDataDetector:
    """WLS state estimation of one grid, reused across snapshots."""

    def __init__(
        self,
        grid: str,
        std: np.ndarray,
        *,
        chi2_prob_false: float = 0.05,
        lnr_threshold: float = 3.0,
    ) -> None:
        import pandapower as pp

        self.net: Any = load_grid(grid)
        run_power_flow(self.net)
        self.layout: MeasurementLayout = build_layout(self.net)
        if len(std) != len(self.layout):
            raise ValueError(f"std has {len(std)} entries, the layout {len(self.layout)}")
        self.std = np.asarray(std, dtype=np.float64)
        self.chi2_prob_false = chi2_prob_false
        self.lnr_threshold = lnr_threshold
        for k, m in enumerate(self.layout.measurements):
            meas_type, side = _MEAS_TYPE[m.quantity]
            pp.create_measurement(
                self.net,
                meas_type,
                m.element_type,
                0.0,
                float(self.std[k]),
                element=m.element,
                side=side,
                name=m.column,
            )
        self.template = self.net.measurement.copy()
        self._shunt = self._shunt_per_bus_position()

    def _shunt_per_bus_position(self) -> np.ndarray:
        """(n_bus, 2) shunt p [MW] and q [Mvar] at 1 p.u., per layout bus position."""
        out = np.zeros((len(self.layout.bus_index), 2))
        pos = {b: k for k, b in enumerate(self.layout.bus_index)}
        for _, row in self.net.shunt[self.net.shunt.in_service].iterrows():
            k = pos[int(row.bus)]
            out[k, 0] += float(row.p_mw) * float(row.step)
            out[k, 1] += float(row.q_mvar) * float(row.step)
        return out

    def estimator_values(self, z: np.ndarray) -> np.ndarray:
        """Layout values as the estimator expects them (shunt consumption removed)."""
        v = np.array(z, dtype=np.float64)
        nb = len(self.layout.bus_index)
        bus = v[: 3 * nb].reshape(nb, 3)
        vm2 = bus[:, 0] ** 2
        bus[:, 1] -= self._shunt[:, 0] * vm2
        bus[:, 2] -= self._shunt[:, 1] * vm2
        v[: 3 * nb] = bus.ravel()
        return v

    def check(self, z: np.ndarray, *, localize: bool = True) -> WlsVerdict:
        """Estimate the state from the snapshot ``z`` and run the chi-square and LNR tests."""
        from pandapower.estimation.state_estimation import StateEstimation
        from scipy.stats import chi2

        values = self.estimator_values(z)
        self.net.measurement = self.template.copy()
        self.net.measurement["value"] = values
        quiet = logging.getLogger("pandapower.estimation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)
            try:
                se = StateEstimation(self.net, algorithm="wls", maximum_iterations=30)
                se.estimate("flat", "flat", zero_injection="aux_bus")
                solver = se.solver
                # measurements actually used, including pandapower's zero-injection
                # pseudo-measurements of auxiliary buses (perform_chi2_test counts only
                # net.measurement, which overstates the threshold on grids with open switches)
                m = len(solver.r) if solver.r is not None else len(self.net.measurement)
                n = len(solver.eppci.v) + len(solver.eppci.delta) - 1
                threshold = float(chi2.ppf(1.0 - self.chi2_prob_false, m - n))
                if not solver.successful:
                    # a snapshot the estimator cannot fit at all is bad data
                    return WlsVerdict(False, float("inf"), threshold, True, float("inf"), ())
                r = solver.r.ravel()
                objective = float(r @ (solver.R_inv @ r))  # as in perform_chi2_test
                lnr_max = _lnr_max(solver)
                flagged: tuple[int, ...] = ()
                if localize and lnr_max > self.lnr_threshold:
                    flagged = self._lnr_flagged()
            finally:
                quiet.setLevel(level)
        return WlsVerdict(True, objective, threshold, objective > threshold, lnr_max, flagged)

    def _lnr_flagged(self) -> tuple[int, ...]:
        from pandapower.estimation.state_estimation import StateEstimation

        before = set(self.net.measurement.index)
        se = StateEstimation(self.net, algorithm="wls", maximum_iterations=30)
        # if the estimate diverges (or pandapower loses its index map) after some removals,
        # report what it removed so far
        with contextlib.suppress(AttributeError, TypeError, IndexError, np.linalg.LinAlgError):
            se.perform_rn_max_test("flat", "flat", rn_max_threshold=self.lnr_threshold)
        removed = before - set(self.net.measurement.index)
        names = self.template.loc[sorted(removed), "name"]
        return tuple(sorted(self.layout.position(str(c)) for c in names))


def _lnr_max(solver: Any) -> float:
    """Largest normalized residual ``max |r_i| / sqrt(Omega_ii)``, Omega = R - H G^-1 H'."""
    r_cov = np.linalg.inv(solver.R_inv)
    omega = r_cov - solver.H @ np.linalg.solve(solver.Gm, solver.H.T)
    diag = np.sqrt(np.abs(np.diag(omega)))
    diag[diag < 1e-12] = np.inf
    return float(np.max(np.abs(solver.r.ravel()) / diag))
