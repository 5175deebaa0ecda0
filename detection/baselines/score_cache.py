"""A one-entry cache of (row scores, cell scores) keyed on the scored array's content.

The evaluator (and the gate) call ``score_rows`` and then ``score_cells`` on the same
rows; detectors that compute both in one pass (WLS, ECOD, COPOD) keep the last result
so the second call is free.
"""

from __future__ import annotations

import hashlib

import numpy as np

Scores = tuple[np.ndarray, np.ndarray | None]


def fingerprint(x: np.ndarray) -> bytes:
    """Content hash of a float array, including its shape."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.digest()


class ScoreCache:
    """Remembers the scores of the last array scored."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._value: Scores | None = None

    def get(self, key: bytes) -> Scores | None:
        return self._value if key == self._key else None

    def put(self, key: bytes, value: Scores) -> None:
        self._key, self._value = key, value

    def clear(self) -> None:
        self._key, self._value = None, None
