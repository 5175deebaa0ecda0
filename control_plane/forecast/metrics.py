"""Error measures of a point forecast and of a quantile band, against the truth.

* ``mae``, ``rmse`` [target unit]; ``nmae`` = MAE / ``scale`` [-], where the scale is the PV
  plant's rated power, the mean load, or the mean absolute price;
* ``skill`` = 1 - MAE / MAE(persistence), ``skill_rmse`` = 1 - RMSE / RMSE(persistence)
  (0: no better than persistence, 1: perfect);
* ``coverage`` = share of truth within [P10, P90] (nominal 0.8) over the scored steps, and
  ``band`` the mean P90 - P10 width [target unit]; for PV only daylight steps are scored for
  coverage (at night the band and the truth are both 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Scores:
    """One forecast's scores on the test days (``None`` where not applicable)."""

    mae: float
    rmse: float
    nmae: float
    skill: float | None = None
    skill_rmse: float | None = None
    coverage: float | None = None
    band: float | None = None
    pinball: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (None if v is None else round(v, 4)) for k, v in asdict(self).items()}


def point_scores(
    pred: FloatArray, truth: FloatArray, scale: float, reference: Scores | None = None
) -> Scores:
    """MAE, RMSE, nMAE and (given the persistence ``reference``) the skill of ``pred``."""
    err = pred - truth
    mae = float(np.mean(np.abs(err)))
    rmse = float(math.sqrt(np.mean(err * err)))
    skill = skill_rmse = None
    if reference is not None:
        skill = 1.0 - mae / reference.mae if reference.mae > 0 else None
        skill_rmse = 1.0 - rmse / reference.rmse if reference.rmse > 0 else None
    return Scores(mae, rmse, mae / scale, skill, skill_rmse)


def band_scores(
    lower: FloatArray, upper: FloatArray, truth: FloatArray, scored: BoolArray
) -> tuple[float, float]:
    """(coverage, mean width) of the band ``[lower, upper]`` over ``scored`` steps."""
    inside = (truth >= lower - 1e-9) & (truth <= upper + 1e-9)
    return float(np.mean(inside[scored])), float(np.mean((upper - lower)[scored]))


def pinball(pred: FloatArray, truth: FloatArray, quantiles: tuple[float, ...]) -> float:
    """Mean pinball loss [target unit] of ``pred`` (n, Q, H) against ``truth`` (n, H)."""
    q = np.asarray(quantiles)[None, :, None]
    diff = truth[:, None, :] - pred
    return float(np.mean(np.maximum(q * diff, (q - 1.0) * diff)))
