"""The sequential (ramp) stage of the deep detector: slow trends the row test misses.

A ramp grows a bias by a fraction of the noise per step; one snapshot carries too little
of it to pass the row threshold for many steps. This stage accumulates the evidence
over time, per measurement, on the conditional residuals ``r`` of the model of normal
operation (standard normal on clean data, :mod:`detection.models.normal`): for each
length ``L`` in :data:`RAMP_LENGTHS`, the matched filter of a linear ramp over the last
``L`` residuals,

    T_L = sum_{j=1..L} j r_{t-L+j} / sqrt(sum_j j^2),

standard normal for white clean residuals, divided by its clean standard deviation per
measurement and length (``scale``: clean residuals are autocorrelated where the model
of normal operation fits a meter less well, which inflates ``T_L``). A measurement's
ramp score is its largest ``|T_L| / scale``; the row's is the largest over the row.

Memory: only the residuals since the last row judged attacked (by either stage) count;
a judged-attacked row empties it. Without that, the rows of an attack the row test
already caught would keep the score high after the attack ended, and every clean row
after it would be a false positive. This is state across snapshots, held by the caller
(:class:`RampMonitor`): the live gate keeps one per grid next to its context window.

The threshold is calibrated on clean out-of-sample history like the row threshold, on
its share :data:`RAMP_FPR_SHARE` of the target false-positive rate; the row threshold
takes the rest, so the union of both stages keeps the target (union bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Ramp lengths [steps] whose matched filters are computed.
RAMP_LENGTHS: tuple[int, ...] = (8, 16, 32)
#: Share of the target false-positive rate given to the ramp stage.
RAMP_FPR_SHARE = 0.5
#: Smallest per-measurement scale of a matched filter (a degenerate clean history).
MIN_SCALE = 0.5

_WEIGHTS = [
    np.arange(1.0, L + 1.0) / np.sqrt(np.sum(np.arange(1.0, L + 1.0) ** 2)) for L in RAMP_LENGTHS
]


@dataclass(slots=True)
class RampMonitor:
    """The ramp stage's state for one stream of snapshots: residuals since the last
    attacked row (at most ``max(RAMP_LENGTHS)``). ``scale`` (len(RAMP_LENGTHS), m)."""

    scale: np.ndarray
    _buf: np.ndarray = field(init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float64)
        if self.scale.ndim != 2 or self.scale.shape[0] != len(RAMP_LENGTHS):
            raise ValueError(f"scale must be ({len(RAMP_LENGTHS)}, m), got {self.scale.shape}")
        self._buf = np.zeros((max(RAMP_LENGTHS), self.scale.shape[1]))

    def push(self, r: np.ndarray) -> np.ndarray:
        """Add one snapshot's conditional residuals (m,); returns its ramp scores (m,)."""
        self._buf[:-1] = self._buf[1:]
        self._buf[-1] = r
        self._count = min(self._count + 1, len(self._buf))
        out = np.zeros(self.scale.shape[1])
        for L, w, sc in zip(RAMP_LENGTHS, _WEIGHTS, self.scale, strict=True):
            n = min(self._count, L)
            t = np.abs(w[L - n :] @ self._buf[len(self._buf) - n :]) / sc
            np.maximum(out, t, out=out)
        return out

    def reset(self) -> None:
        """Forget the memory (after a row judged attacked)."""
        self._count = 0
        self._buf[:] = 0.0


def ramp_scores(
    scale: np.ndarray,
    r: np.ndarray,
    attacked: np.ndarray,
    threshold: float = float("inf"),
) -> np.ndarray:
    """Ramp scores (n, m) of consecutive rows' residuals ``r`` (n, m), in order.

    The memory empties after every row with ``attacked`` true (the row test's verdict)
    or whose ramp score exceeds ``threshold``.
    """
    mon = RampMonitor(scale)
    out = np.empty(r.shape, dtype=np.float64)
    for t in range(len(r)):
        out[t] = mon.push(r[t])
        if attacked[t] or out[t].max() > threshold:
            mon.reset()
    return out


def fit_ramp_scale(r_streams: list[np.ndarray]) -> np.ndarray:
    """Clean standard deviation of each matched filter per measurement,
    (len(RAMP_LENGTHS), m), from streams of consecutive clean residuals (n_i, m)."""
    m = r_streams[0].shape[1]
    out = np.empty((len(RAMP_LENGTHS), m))
    for k, (L, w) in enumerate(zip(RAMP_LENGTHS, _WEIGHTS, strict=True)):
        vals = [_filtered(s, w) for s in r_streams if len(s) >= L]
        if not vals:
            out[k] = 1.0
            continue
        t = np.concatenate(vals)
        out[k] = np.sqrt(np.mean(t * t, axis=0))
    return np.maximum(out, MIN_SCALE)


def _filtered(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Full-length matched filter values of ``r`` (n, m): rows L-1.. (n - L + 1, m)."""
    L = len(w)
    out = np.zeros((len(r) - L + 1, r.shape[1]))
    for j in range(L):
        out += w[j] * r[j : len(r) - L + 1 + j]
    return out
