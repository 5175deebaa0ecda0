"""The physics ramp stage: slow ramps on one element, found in the grid's own physics.

A ramp attack adds a bias growing by a fraction of the noise per step to the two power
measurements of one bus, line or transformer. The stage tracks the grid state with a
fixed-gain WLS estimator (:mod:`detection.models.physics_ramp.estimator`) whose
whitened residual is white on clean data, whitens each element's (p, q) residual pair
with its 2x2 clean covariance, and runs a sequential matched-filter test for linear
ramps on it (:mod:`detection.models.physics_ramp.sequential_test`).

Fitted on clean history only (:func:`fit_physics_ramp`), without the noise model:

1. the noise std per column is estimated from the history
   (:func:`detection.models.physics_ramp.estimator.estimate_noise_std`);
2. a simulated null: the history's estimated states, measured with Gaussian noise of
   the estimated std, :data:`NULL_ROWS` rows in repetitions of the history, run
   through the same estimator; each element's pair covariance comes from it (columns
   with redundancy below :data:`MIN_REDUNDANCY` are left out: their residual is
   almost zero and not white);
3. the threshold is bisected until the whole procedure (follow-up included) flags the
   target share of the null rows.

Per stream the state (:class:`PhysicsRampMonitor`) is the last estimated voltages and
the test's memory; the caller reports rows another test judged attacked, which empty
the memory like the stage's own flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from detection.layout import MeasurementLayout
from detection.models.physics_ramp import sequential_test
from detection.models.physics_ramp.estimator import (
    TrackingEstimator,
    estimate_noise_std,
    grid_physics,
    measure,
    track,
)

#: Share of a false-positive target the stage takes next to the deep row test (the row
#: test gets the rest, so the union keeps the target): the evaluator's ``gnn+physics``
#: and ``detect score --history``.
PHYSICS_FPR_SHARE = 0.5
#: Seed of the simulated null the threshold is calibrated on (reproducible fits).
PHYSICS_SEED = 2024
#: Fewest clean history rows to fit on [rows] (one week of 15-min snapshots).
MIN_HISTORY_ROWS = 672
#: Columns whose redundancy ``P_ii`` is below this are left out of the test.
MIN_REDUNDANCY = 0.02
#: One-sided z of the follow-up on a flagged element (1 % per row on clean data).
FOLLOW_UP_Z = 2.33
#: Rows of the simulated null the threshold is calibrated on (repetitions of the history).
NULL_ROWS = 100_000
#: Repetitions of the history simulated at once (memory: rows x chunk x columns).
_NULL_CHUNK = 16
_BISECTIONS = 6

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RampVerdict:
    """One snapshot's verdict: ``flagged``, ``score`` = the ramp statistic T
    [chi-square, 2 dof per filter], and the flagged element and its columns (empty
    when not flagged)."""

    flagged: bool
    score: float
    element: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PhysicsRampStage:
    """A fitted physics ramp stage for one grid (picklable).

    ``std`` (m,) the estimated noise std [layout units]; ``pairs`` (e, 2) the column
    positions of each tested element's (p, q) pair, ``whiten`` (e, 2, 2) their inverse
    square-root covariance (a zero row for a left-out column); ``threshold`` on T at
    ``target_fpr`` (achieved on the null: ``null_fpr`` over ``null_rows`` rows).
    """

    grid: str
    columns: tuple[str, ...]
    estimator: TrackingEstimator
    std: np.ndarray
    pairs: np.ndarray
    elements: tuple[str, ...]
    whiten: np.ndarray
    threshold: float
    follow_up_z: float
    target_fpr: float
    null_fpr: float
    null_rows: int

    def whitened(self, r: np.ndarray) -> np.ndarray:
        """Element pairs (..., e, 2) of whitened residuals ``r`` (..., m)."""
        return whiten_pairs(self.whiten, r[..., self.pairs])

    def monitor(self) -> PhysicsRampMonitor:
        """A fresh per-stream state."""
        return PhysicsRampMonitor(self)

    def verdict(self, flagged: bool, score: float, element: int) -> RampVerdict:
        """The verdict of one row from the test's flag, score and element index."""
        if not flagged or element < 0:
            return RampVerdict(bool(flagged), float(score), "", ())
        cols = tuple(self.columns[int(c)] for c in self.pairs[element])
        return RampVerdict(True, float(score), self.elements[element], cols)


@dataclass(slots=True)
class PhysicsRampMonitor:
    """The stage's state for one stream of snapshots: the last estimated voltages and
    the sequential test's memory."""

    stage: PhysicsRampStage
    _v: np.ndarray | None = field(default=None, init=False, repr=False)
    _test: sequential_test.RampTestState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reset()

    def push(self, z: np.ndarray, *, flagged_elsewhere: bool = False) -> RampVerdict:
        """Judge one snapshot ``z`` (m,) [layout units]. ``flagged_elsewhere``: another
        test judged this row attacked (the memory empties after it; that starts no
        follow-up, and one already running goes on)."""
        z = _checked_rows(np.asarray(z, dtype=np.float64)[None, :], len(self.stage.columns))
        r, self._v, _ = track(self.stage.estimator, z[:, None, :], self._v)
        res = sequential_test.step(
            self._test,
            self.stage.whitened(r[0]),
            self.stage.threshold,
            self.stage.follow_up_z,
            np.array([flagged_elsewhere]),
        )
        return self.stage.verdict(bool(res.flags[0]), float(res.score[0]), int(res.element[0]))

    def reset(self) -> None:
        """Forget everything (a new stream, or a gap): the next snapshot cold-starts."""
        self._v = None
        self._test = sequential_test.RampTestState(1, len(self.stage.pairs))


def physics_ramp_verdicts(
    stage: PhysicsRampStage, x: np.ndarray, flagged_elsewhere: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stage over consecutive rows ``x`` (n, m) of a fresh stream, as if each row
    were pushed into a new monitor in order; ``flagged_elsewhere`` (n,) bool the other
    test's verdicts. Returns flags (n,), scores T (n,) and flagged element indices
    (n,; -1 = none; names in ``stage.elements``)."""
    x = _checked_rows(np.asarray(x, dtype=np.float64), len(stage.columns))
    other = None if flagged_elsewhere is None else np.asarray(flagged_elsewhere, dtype=bool)
    if other is not None and other.shape != (len(x),):
        raise ValueError(f"flagged_elsewhere must be ({len(x)},), got {other.shape}")
    r, _, _ = track(stage.estimator, x[:, None, :], None)
    flags, score, element = sequential_test.run(
        stage.whitened(r),
        stage.threshold,
        stage.follow_up_z,
        None if other is None else other[:, None],
    )
    return flags[:, 0], score[:, 0], element[:, 0]


def fit_physics_ramp(
    grid: str,
    layout: MeasurementLayout,
    history_x: np.ndarray,
    target_fpr: float,
    *,
    seed: int,
    progress: Progress | None = None,
) -> PhysicsRampStage:
    """Fit the stage on clean consecutive rows ``history_x`` (n, m) [layout units] of
    ``grid`` so that it flags ``target_fpr`` of clean rows (see the module docstring).

    ``ValueError`` for a history shorter than :data:`MIN_HISTORY_ROWS`, with NaN/inf
    or the wrong column count, a target outside (0, 1), or a grid without a Jacobian.
    """
    say = progress or (lambda _msg: None)
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    x = _checked_rows(np.asarray(history_x, dtype=np.float64), len(layout))
    if len(x) < MIN_HISTORY_ROWS:
        raise ValueError(
            f"the physics ramp stage needs at least {MIN_HISTORY_ROWS} clean history rows, "
            f"got {len(x)}"
        )
    physics = grid_physics(grid, layout)
    say("estimating the measurement noise from the history")
    std, est, states = estimate_noise_std(physics, x)
    pairs, names = _element_pairs(layout, est.redundancy)
    if not len(pairs):
        raise ValueError(f"grid {grid!r} has no redundant power measurement to test")
    say(f"simulating {NULL_ROWS:,} clean rows")
    null_pairs = _null_pair_residuals(est, std, states, pairs, np.random.default_rng(seed))
    whiten = _whitening(null_pairs, est.redundancy[pairs] >= MIN_REDUNDANCY)
    y_null = whiten_pairs(whiten, null_pairs).astype(np.float32)
    del null_pairs
    say("calibrating the threshold on the simulated null")
    threshold, null_fpr = _calibrate(y_null, target_fpr, FOLLOW_UP_Z)
    return PhysicsRampStage(
        grid=grid,
        columns=tuple(layout.columns),
        estimator=est,
        std=std,
        pairs=pairs,
        elements=names,
        whiten=whiten,
        threshold=threshold,
        follow_up_z=FOLLOW_UP_Z,
        target_fpr=target_fpr,
        null_fpr=null_fpr,
        null_rows=int(y_null.shape[0] * y_null.shape[1]),
    )


def whiten_pairs(whiten: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``whiten`` (e, 2, 2) applied to residual pairs (..., e, 2) -> (..., e, 2)."""
    out = whiten[..., 0] * pairs[..., 0:1] + whiten[..., 1] * pairs[..., 1:2]
    return np.asarray(out)


def _checked_rows(x: np.ndarray, m: int) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != m:
        raise ValueError(f"expected rows of {m} measurements, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the rows contain NaN or infinite values")
    return x


def _element_pairs(
    layout: MeasurementLayout, redundancy: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The (p, q) column pair (e, 2) and name of every element with at least one
    column of redundancy >= :data:`MIN_REDUNDANCY`."""
    groups: dict[tuple[str, int], list[int]] = {}
    for k, m in enumerate(layout.measurements):
        if not m.is_voltage:
            groups.setdefault((m.element_type, m.element), []).append(k)
    keep = [
        (f"{kind}{el}", cols)
        for (kind, el), cols in groups.items()
        if len(cols) == 2 and np.any(redundancy[cols] >= MIN_REDUNDANCY)
    ]
    pairs = np.array([c for _, c in keep], dtype=np.int64).reshape(-1, 2)
    return pairs, tuple(n for n, _ in keep)


def _null_pair_residuals(
    est: TrackingEstimator,
    std: np.ndarray,
    states: np.ndarray,
    pairs: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Whitened residual pairs (t, reps, e, 2) of simulated clean repetitions of the
    history: true state = the estimated ``states`` (t, n_internal), noise ``std``."""
    h = measure(est.physics, states)
    reps = max(2, math.ceil(NULL_ROWS / len(h)))
    out = np.empty((len(h), reps, len(pairs), 2), dtype=np.float32)
    for start in range(0, reps, _NULL_CHUNK):
        b = min(_NULL_CHUNK, reps - start)
        z = h[:, None, :] + rng.standard_normal((len(h), b, len(std))) * std
        r, _, _ = track(est, z, np.tile(states[0], (b, 1)))
        out[:, start : start + b] = r[..., pairs]
    return out


def _whitening(null_pairs: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Inverse square roots (e, 2, 2) of each pair's null covariance; a column not
    ``kept`` (e, 2) gets a zero row and column (the other is scaled by its std)."""
    r = null_pairs.reshape(-1, *null_pairs.shape[2:]).astype(np.float64)
    r = r - r.mean(axis=0)
    cov = np.asarray(np.einsum("nei,nej->eij", r, r), dtype=np.float64) / (len(r) - 1)
    out = np.zeros_like(cov)
    for e in range(len(cov)):
        if kept[e].all():
            w, v = np.linalg.eigh(cov[e])
            out[e] = (v / np.sqrt(w)) @ v.T
        else:
            i = int(np.flatnonzero(kept[e])[0])
            out[e, i, i] = 1.0 / np.sqrt(cov[e, i, i])
    return out


def _calibrate(y_null: np.ndarray, target_fpr: float, follow_up_z: float) -> tuple[float, float]:
    """The threshold on T at which the whole test flags ``target_fpr`` of the null rows
    ``y_null`` (t, reps, e, 2), and the share it flags there."""

    def rate(thr: float) -> float:
        flags, _, _ = sequential_test.run(y_null, thr, follow_up_z)
        return float(flags.mean())

    _, scores, _ = sequential_test.run(y_null, math.inf, follow_up_z)  # no resets
    guess = float(np.quantile(scores, 1.0 - target_fpr))
    lo, hi = 0.85 * guess, 1.2 * guess
    while rate(lo) <= target_fpr and lo > 1e-3:
        hi, lo = lo, 0.8 * lo
    hi_rate = rate(hi)
    while hi_rate > target_fpr:
        lo, hi = hi, 1.25 * hi
        hi_rate = rate(hi)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        mid_rate = rate(mid)
        if mid_rate > target_fpr:
            lo = mid
        else:
            hi, hi_rate = mid, mid_rate
    return hi, hi_rate
