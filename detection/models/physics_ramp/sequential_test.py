"""The sequential ramp test of the physics ramp stage, on a batch of independent streams.

Input per snapshot: ``y`` (b, e, 2), each element's (p, q) residual pair whitened to
unit covariance (:mod:`detection.models.physics_ramp.stage`). For each ramp length
``L`` in :data:`RAMP_LENGTHS_STEPS` and ``k = min(rows since the last reset, L)``, the
matched filter of a linear ramp over the last ``k`` rows,

    s_{e,L} = sum_{j=1..k} w_j y_{t-k+j, e},   w_j proportional to L - k + j, |w| = 1,

is a standard normal pair on clean data; the row's statistic is
``T = max_{e,L} |s_{e,L}|^2``. A row is flagged when ``T`` exceeds the threshold; the
element ``e*`` and direction ``u = s / |s|`` are remembered and the following rows are
flagged while ``u . y_{t,e*}`` exceeds the follow-up z (the first miss ends it). Any
flagged row, and any row the caller reports as flagged by another test, empties the
memory; only a ramp flag starts a follow-up.

The window sums are updated in O(1) per row (``S0 = sum y``, ``S1 = sum j y`` over each
window), so a row costs the same for every ``L``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Ramp lengths [steps] whose matched filters are computed.
RAMP_LENGTHS_STEPS: tuple[int, ...] = (8, 16, 32, 64)
_L = np.array(RAMP_LENGTHS_STEPS, dtype=np.int64)
_LMAX = int(_L.max())


def _norms() -> np.ndarray:
    """``|w|`` before normalization, (len(L), Lmax + 1), indexed by L and k (k = 0 -> 1)."""
    out = np.ones((len(_L), _LMAX + 1))
    for i, length in enumerate(_L):
        for k in range(1, int(length) + 1):
            w = np.arange(length - k + 1, length + 1, dtype=np.float64)
            out[i, k] = np.sqrt(np.sum(w * w))
    return out


_NORMS = _norms()


@dataclass(slots=True)
class RampTestState:
    """Memory of ``streams`` streams of ``elements`` residual pairs: the last
    :data:`RAMP_LENGTHS_STEPS` max rows, rows since the last reset, the window sums and
    the follow-up element (-1 = none) with its direction."""

    streams: int
    elements: int
    buf: np.ndarray = field(init=False, repr=False)
    pos: int = field(default=0, init=False)
    count: np.ndarray = field(init=False, repr=False)
    s0: np.ndarray = field(init=False, repr=False)
    s1: np.ndarray = field(init=False, repr=False)
    suspect: np.ndarray = field(init=False, repr=False)
    direction: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b, e = self.streams, self.elements
        self.buf = np.zeros((b, _LMAX, e, 2))
        self.count = np.zeros(b, dtype=np.int64)
        self.s0 = np.zeros((b, len(_L), e, 2))
        self.s1 = np.zeros((b, len(_L), e, 2))
        self.suspect = np.full(b, -1, dtype=np.int64)
        self.direction = np.zeros((b, 2))

    def empty(self, which: np.ndarray) -> None:
        """Forget the rows of the streams ``which`` (b,) bool (the follow-up stays)."""
        self.count[which] = 0
        self.s0[which] = 0.0
        self.s1[which] = 0.0


@dataclass(frozen=True, slots=True)
class StepResult:
    """One row per stream: ``flags`` (b,), ``score`` (b,) = T, ``element`` (b,) the
    flagged element (the ramp's argmax or the followed element; -1 when not flagged)."""

    flags: np.ndarray
    score: np.ndarray
    element: np.ndarray


def step(
    state: RampTestState,
    y: np.ndarray,
    threshold: float,
    follow_up_z: float,
    flagged_elsewhere: np.ndarray | None = None,
) -> StepResult:
    """Push one row ``y`` (b, e, 2) into every stream; ``flagged_elsewhere`` (b,) bool:
    the row was judged attacked by another test (empties the memory after this row)."""
    b = state.streams
    c = state.count
    full = c[:, None] >= _L[None, :]  # (b, nL) window already full: it slides
    k = np.minimum(c[:, None] + 1, _L[None, :])  # rows in each window after this one
    old = state.buf[:, (state.pos - _L) % _LMAX]  # the row leaving each full window
    slide = full.astype(np.float64)[..., None, None]
    y4 = y[:, None]
    # growing: S1 += k y; sliding: S1 += L y - S0 (every row's index drops by one)
    state.s1 += np.where(full, _L[None, :], k).astype(np.float64)[..., None, None] * y4
    state.s1 -= slide * state.s0
    state.s0 += y4
    state.s0 -= slide * old
    state.buf[:, state.pos] = y
    state.pos = (state.pos + 1) % _LMAX
    state.count = np.minimum(c + 1, _LMAX)
    lead = (_L[None, :] - k).astype(np.float64)[..., None, None]
    s = lead * state.s0
    s += state.s1
    s /= _NORMS[np.arange(len(_L))[None, :], k][..., None, None]
    t = np.einsum("blei,blei->ble", s, s).reshape(b, -1)  # (b, nL * e)
    best = np.argmax(t, axis=1)
    score = t[np.arange(b), best]
    ramp = score > threshold
    element = np.full(b, -1, dtype=np.int64)
    follow = np.zeros(b, dtype=bool)
    active = ~ramp & (state.suspect >= 0)
    if active.any():
        idx = np.flatnonzero(active)
        proj = np.sum(state.direction[idx] * y[idx, state.suspect[idx]], axis=-1)
        hit = proj > follow_up_z
        follow[idx[hit]] = True
        element[idx[hit]] = state.suspect[idx[hit]]
        state.suspect[idx[~hit]] = -1
    if ramp.any():
        idx = np.flatnonzero(ramp)
        li, e = np.divmod(best[idx], state.elements)
        state.suspect[idx] = e
        state.direction[idx] = s[idx, li, e] / np.sqrt(score[idx])[:, None]
        element[idx] = e
    flags = ramp | follow
    state.empty(flags if flagged_elsewhere is None else flags | flagged_elsewhere)
    return StepResult(flags, score, element)


def run(
    y: np.ndarray,
    threshold: float,
    follow_up_z: float,
    flagged_elsewhere: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test over consecutive rows ``y`` (t, b, e, 2) of ``b`` fresh streams;
    ``flagged_elsewhere`` (t, b). Returns flags, scores and elements, each (t, b)."""
    t_rows, b, e, _ = y.shape
    state = RampTestState(b, e)
    flags = np.zeros((t_rows, b), dtype=bool)
    score = np.zeros((t_rows, b))
    element = np.full((t_rows, b), -1, dtype=np.int64)
    for t in range(t_rows):
        other = None if flagged_elsewhere is None else flagged_elsewhere[t]
        res = step(state, y[t], threshold, follow_up_z, other)
        flags[t], score[t], element[t] = res.flags, res.score, res.element
    return flags, score, element
