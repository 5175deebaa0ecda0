"""The price-signal check: is ``price_eur_per_mwh`` what this grid's load says it should be?

The price is not a grid measurement, so the grid detectors cannot see a manipulated
price by construction. This check models the clean price from the clean history:

* **level**: a linear model of the price on the grid's active-power picture in the same
  snapshot: the leading principal components (:data:`LOAD_FACTORS`) of the
  standardized bus active powers (``bus{i}.p_mw``). Day-ahead-like prices follow the
  system's net load (demand minus distributed generation), which those components
  carry; no per-grid knowledge of which bus holds what is needed;
* **persistence**: the residual ``e`` of that model is not white (a price keeps its
  deviation from the load-implied level for hours), so it is modelled as AR(1) with
  the coefficient ``phi`` of the clean residuals. The one-step prediction from the last
  *accepted* residual makes a jump at the start of a manipulation stand out even when
  the manipulated level alone would pass.

Score of a row (noise units, higher = more suspicious)::

    max(|e_t| / sd,  |e_t - phi^k e_a| / (sd sqrt(1 - phi^(2k))))

with ``e_a`` the residual of the last accepted row, ``k`` steps ago. A row whose score
exceeds the threshold is not accepted, so a manipulated stretch never becomes the
reference for the next prediction (the grid gate treats flagged measurements the
same way). The threshold is :func:`detection.thresholds.tail_threshold` of clean
validation scores, the rule of every detector.

What it cannot see: a manipulation smaller than the price's own unexplained variation
(a few EUR/MWh here) that starts gradually; a price moved together with falsified
load measurements that imply it (that attack is in the grid detectors' scope).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detection.layout import MeasurementLayout

#: Principal components of the bus active powers the level model uses (at most).
LOAD_FACTORS = 8
#: Fewest clean rows to fit on.
MIN_ROWS = 96
#: Weight of the level term in the score (1: the level counts in full; lower values
#: flag fewer rows of a long clean excursion, and leave gradual manipulations to the
#: prediction term alone)
LEVEL_WEIGHT = 1.0
#: The AR(1) coefficient is clipped to this range (a degenerate fit must not divide by 0).
PHI_RANGE = (0.0, 0.98)


@dataclass(frozen=True, slots=True)
class PriceModel:
    """A fitted model of the clean price (see the module docstring).

    ``columns`` layout positions of the bus active powers; ``mean``, ``scale`` their
    clean mean and standard deviation [MW]; ``components`` (k, len(columns));
    ``coef`` (k + 1,) intercept then slopes [EUR/MWh per unit component];
    ``phi`` AR(1) coefficient of the residual; ``sd`` its standard deviation [EUR/MWh].
    """

    columns: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    coef: np.ndarray
    phi: float
    sd: float

    def expected(self, x: np.ndarray) -> np.ndarray:
        """The load-implied price [EUR/MWh] of rows ``x`` (n, m) in layout units."""
        z = (np.asarray(x, dtype=np.float64)[:, self.columns] - self.mean) / self.scale
        f = z @ self.components.T
        return np.asarray(self.coef[0] + f @ self.coef[1:])

    def residuals(self, x: np.ndarray, price_eur_per_mwh: np.ndarray) -> np.ndarray:
        """Price minus the load-implied price [EUR/MWh], per row."""
        return np.asarray(np.asarray(price_eur_per_mwh, dtype=np.float64) - self.expected(x))


def load_columns(layout: MeasurementLayout) -> np.ndarray:
    """Layout positions of the bus active powers (the load picture the price follows)."""
    cols = [
        k
        for k, m in enumerate(layout.measurements)
        if m.element_type == "bus" and m.quantity == "p_mw"
    ]
    if not cols:
        raise ValueError("the layout has no bus active-power measurements to model the price on")
    return np.asarray(cols, dtype=np.int64)


def fit_price_model(
    x_clean: np.ndarray,
    price_eur_per_mwh: np.ndarray,
    layout: MeasurementLayout,
    factors: int = LOAD_FACTORS,
) -> PriceModel:
    """Fit the clean price on consecutive clean rows ``x_clean`` (n, m) and their prices (n,).

    Raises ``ValueError`` with fewer than :data:`MIN_ROWS` rows or non-finite values.
    """
    x = np.asarray(x_clean, dtype=np.float64)
    price = np.asarray(price_eur_per_mwh, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(layout) or price.shape != (len(x),):
        raise ValueError("x_clean must be (n, measurements) and the price (n,)")
    if len(x) < MIN_ROWS:
        raise ValueError(f"the price model needs at least {MIN_ROWS} clean rows, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(price))):
        raise ValueError("clean rows and prices must be finite")
    cols = load_columns(layout)
    p = x[:, cols]
    mean = p.mean(axis=0)
    scale = np.maximum(p.std(axis=0), 1e-9)
    z = (p - mean) / scale
    k = max(1, min(factors, len(cols), len(x) // 10))
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    components = vt[:k]
    design = np.column_stack([np.ones(len(x)), z @ components.T])
    coef, *_ = np.linalg.lstsq(design, price, rcond=None)
    e = price - design @ coef
    sd = max(float(e.std()), 1e-6)
    phi = float(
        np.clip(np.dot(e[1:], e[:-1]) / max(float(np.dot(e[:-1], e[:-1])), 1e-12), *PHI_RANGE)
    )
    return PriceModel(cols, mean, scale, components, coef, phi, sd)


@dataclass(slots=True)
class PriceCheck:
    """Judges prices one row at a time, keeping the last accepted residual (the state a
    market gate holds between snapshots). ``threshold`` = inf: every row is accepted
    (for calibration)."""

    model: PriceModel
    threshold: float = float("inf")
    level_weight: float = LEVEL_WEIGHT
    _last: float | None = field(default=None, repr=False)
    _age: int = field(default=0, repr=False)

    def score(self, residual_eur_per_mwh: float) -> float:
        """Score of the next row's residual; updates the state (see the module docstring)."""
        e, sd, phi = float(residual_eur_per_mwh), self.model.sd, self.model.phi
        s = self.level_weight * abs(e) / sd
        if self._last is not None:
            k = self._age + 1
            decay = phi**k
            s = max(s, abs(e - decay * self._last) / (sd * np.sqrt(max(1.0 - decay * decay, 1e-6))))
        if s > self.threshold:
            self._age += 1  # not accepted: the prediction keeps its reference
        else:
            self._last, self._age = e, 0
        return float(s)


def price_scores(
    model: PriceModel,
    x: np.ndarray,
    price_eur_per_mwh: np.ndarray,
    threshold: float = float("inf"),
    level_weight: float = LEVEL_WEIGHT,
) -> np.ndarray:
    """Scores of consecutive rows (n,), judged in order by one :class:`PriceCheck`."""
    check = PriceCheck(model, threshold, level_weight)
    return np.array([check.score(e) for e in model.residuals(x, price_eur_per_mwh)])
