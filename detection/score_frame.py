"""Tables of snapshots in, verdict tables out: the data side of ``gridfort detect score``.

Input (:func:`measurement_matrix`): a frame with an integer column ``t`` (strictly
increasing: 15-minute snapshots in time order) and exactly the grid's layout columns
(:mod:`detection.layout`), in any order, each of a floating-point dtype [p.u., MW,
Mvar], every value finite. The price column ``price_eur_per_mwh`` that datasets carry
may be present too. Anything else (a missing or unknown column, a duplicate name, a
wrong dtype, NaN or infinity, unsorted ``t``, no rows) is refused with one
:class:`~detection.dataset.DatasetError` whose message names the first problem.

Output (:func:`verdict_frame`): the same rows in the same order, ``t``, a float
``score`` (higher = more suspicious), a bool ``attacked``, then one bool column per
input measurement column, with the same name and in the input's order, true where that
measurement is judged falsified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detection.dataset import T_COLUMN, DatasetError
from detection.generate import PRICE_COLUMN
from detection.layout import MeasurementLayout

SCORE_COLUMN = "score"
ATTACKED_COLUMN = "attacked"
#: Columns a scored table may carry besides ``t`` and the layout's measurements.
OPTIONAL_COLUMNS: tuple[str, ...] = (PRICE_COLUMN,)


@dataclass(frozen=True, slots=True)
class MeasurementTable:
    """A validated input table.

    ``x`` (n, m) holds the layout columns in layout order [layout units];
    ``columns`` the input's measurement columns in the input's order (``t`` excluded);
    ``extra`` the optional columns present (e.g. the price), in the input's order.
    """

    t: np.ndarray
    x: np.ndarray
    columns: list[str]
    extra: dict[str, np.ndarray]


def _first(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _check_names(frame: pd.DataFrame, layout: MeasurementLayout, where: str) -> list[str]:
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{where}: duplicate column(s) {_first(dup)}")
    if T_COLUMN not in names:
        raise DatasetError(f"{where}: missing column {T_COLUMN!r} (integer snapshot index)")
    expected = set(layout.columns)
    present = set(names)
    missing = [c for c in layout.columns if c not in present]
    if missing:
        raise DatasetError(f"{where}: missing measurement column(s) {_first(missing)}")
    unknown = [c for c in names if c not in expected and c not in (T_COLUMN, *OPTIONAL_COLUMNS)]
    if unknown:
        raise DatasetError(
            f"{where}: unknown column(s) {_first(unknown)} (not in the layout of this grid)"
        )
    return [c for c in names if c != T_COLUMN]


def _check_t(frame: pd.DataFrame, where: str) -> np.ndarray:
    col = frame[T_COLUMN]
    if not pd.api.types.is_integer_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DatasetError(f"{where}: column 't' must be integer, got {col.dtype}")
    if col.isna().any():
        raise DatasetError(f"{where}: column 't' has missing values")
    t: np.ndarray = np.asarray(col.to_numpy(dtype=np.int64))
    if len(t) > 1 and not np.all(np.diff(t) > 0):
        bad = int(np.argmax(np.diff(t) <= 0)) + 1
        raise DatasetError(f"{where}: column 't' is not strictly increasing (row {bad})")
    return t


def _check_values(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    for c in columns:
        dtype = frame[c].dtype
        if not pd.api.types.is_float_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
            raise DatasetError(f"{where}: column {c!r} must be floating point, got {dtype}")
        values = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            kind = "NaN (missing)" if np.isnan(values[row]) else "infinite"
            raise DatasetError(f"{where}: {kind} value in column {c!r} at row {row}")


def measurement_matrix(
    frame: pd.DataFrame, layout: MeasurementLayout, where: str = "input"
) -> MeasurementTable:
    """Validate ``frame`` (see the module docstring) and return its values in layout order."""
    columns = _check_names(frame, layout, where)
    if len(frame) == 0:
        raise DatasetError(f"{where}: the table has no rows")
    t = _check_t(frame, where)
    _check_values(frame, columns, where)
    x = frame[layout.columns].to_numpy(dtype=np.float64)
    extra = {c: frame[c].to_numpy(dtype=np.float64) for c in columns if c in OPTIONAL_COLUMNS}
    return MeasurementTable(t=t, x=x, columns=columns, extra=extra)


def verdict_frame(
    table: MeasurementTable,
    layout: MeasurementLayout,
    row_scores: np.ndarray,
    attacked: np.ndarray,
    flagged: np.ndarray,
    extra_flags: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The verdict table of ``table``: ``t``, ``score``, ``attacked``, one bool per column.

    ``flagged`` (n, m) is in layout order; ``extra_flags`` gives the verdicts of the
    optional columns (e.g. the price), false where not given.
    """
    n = len(table.t)
    if row_scores.shape != (n,) or attacked.shape != (n,) or flagged.shape != (n, len(layout)):
        raise ValueError("scores and verdicts must be row-aligned with the input table")
    pos = {c: k for k, c in enumerate(layout.columns)}
    out: dict[str, np.ndarray] = {
        T_COLUMN: table.t.astype(np.int64),
        SCORE_COLUMN: np.asarray(row_scores, dtype=np.float64),
        ATTACKED_COLUMN: np.asarray(attacked, dtype=bool),
    }
    extra_flags = extra_flags or {}
    for c in table.columns:
        if c in pos:
            out[c] = np.asarray(flagged[:, pos[c]], dtype=bool)
        else:
            out[c] = np.asarray(extra_flags.get(c, np.zeros(n, dtype=bool)), dtype=bool)
    return pd.DataFrame(out)
