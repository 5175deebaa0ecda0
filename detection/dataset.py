"""Detection datasets on disk: Parquet data with a Parquet labels file alongside.

``FILE.parquet`` holds ``t`` (int64, strictly increasing), one float64 column per
layout measurement (:mod:`detection.layout`) and ``price_eur_per_mwh``.
``FILE.labels.parquet`` holds the same ``t``, ``attack`` (string: an attack kind or
``"none"``) and one bool column per data column, true where that cell was falsified.
Both files carry JSON key-value metadata under ``gridfort`` (grid, seed, noise model).

Reading validates the schema and refuses, with one clear message, a file that is
truncated or not Parquet, misses or adds columns, has a wrong dtype, unsorted or
duplicate ``t``, or non-finite values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from security.refusals import GridfortError

META_KEY = b"gridfort"
FORMAT_VERSION = 1
T_COLUMN = "t"
ATTACK_COLUMN = "attack"
NO_ATTACK = "none"


class DatasetError(GridfortError, ValueError):
    """A dataset file is unreadable or does not match the expected schema."""


@dataclass(slots=True)
class Dataset:
    """A dataset in memory: ``data`` and (if present) ``labels``, row-aligned."""

    data: pd.DataFrame
    labels: pd.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def measurement_columns(self) -> list[str]:
        return [c for c in self.data.columns if c != T_COLUMN]


def labels_path(path: Path) -> Path:
    """``FILE.parquet`` -> ``FILE.labels.parquet``."""
    name = path.name.removesuffix(".parquet")
    return path.with_name(f"{name}.labels.parquet")


def _write(frame: pd.DataFrame, path: Path, metadata: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"format_version": FORMAT_VERSION, **metadata}).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def write_table(path: Path, frame: pd.DataFrame, metadata: dict[str, Any] | None = None) -> None:
    """Write any frame to ``path`` as Parquet (atomically), with gridfort metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(frame, path, dict(metadata or {}))


def write_dataset(
    path: Path,
    data: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``data`` to ``path`` and ``labels`` (if given) to :func:`labels_path`.

    Both are validated first, so an invalid frame never reaches disk.
    """
    meta = dict(metadata or {})
    _check_data(data, str(path), expected=None)
    if labels is not None:
        _check_labels(labels, data, str(labels_path(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(data, path, meta)
    if labels is not None:
        _write(labels, labels_path(path), meta)


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read any Parquet file (no schema check) and its gridfort metadata.

    Refuses a missing, truncated or non-Parquet file with one clear ``DatasetError``.
    """
    return _read(path)


def _read(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        parquet = pq.ParquetFile(path)
        names = list(parquet.schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: not a readable Parquet file (truncated?): {first}") from e
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DatasetError(f"{path}: duplicate column(s) {', '.join(map(repr, dups[:3]))}")
    try:
        table = parquet.read()
        frame = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: not a readable Parquet file (truncated?): {first}") from e
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            loaded = json.loads(raw)
        except ValueError as e:
            raise DatasetError(f"{path}: unreadable gridfort metadata") from e
        if isinstance(loaded, dict):
            meta = loaded
    return frame, meta


def _check_t(frame: pd.DataFrame, where: str) -> None:
    if T_COLUMN not in frame.columns:
        raise DatasetError(f"{where}: missing column {T_COLUMN!r}")
    if not pd.api.types.is_integer_dtype(frame[T_COLUMN].dtype):
        raise DatasetError(f"{where}: column 't' must be integer, got {frame[T_COLUMN].dtype}")
    t = frame[T_COLUMN].to_numpy()
    if len(t) > 1 and not np.all(np.diff(t) > 0):
        bad = int(np.argmax(np.diff(t) <= 0)) + 1
        raise DatasetError(f"{where}: column 't' is not strictly increasing (row {bad})")


def _check_columns(actual: list[str], expected: list[str], where: str) -> None:
    missing = [c for c in expected if c not in set(actual)]
    unknown = [c for c in actual if c not in set(expected)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(f"{where}: missing column(s) {', '.join(missing[:3])}{more}")
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise DatasetError(f"{where}: unknown column(s) {', '.join(unknown[:3])}{more}")
    if actual != expected:
        raise DatasetError(f"{where}: columns are not in layout order")


def _check_data(frame: pd.DataFrame, where: str, expected: list[str] | None) -> None:
    _check_t(frame, where)
    cols = [c for c in frame.columns if c != T_COLUMN]
    if list(frame.columns[:1]) != [T_COLUMN]:
        raise DatasetError(f"{where}: column 't' must come first")
    if expected is not None:
        _check_columns(cols, expected, where)
    for c in cols:
        if frame[c].dtype != np.float64:
            raise DatasetError(f"{where}: column {c!r} must be float64, got {frame[c].dtype}")
    values = frame[cols].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise DatasetError(f"{where}: non-finite value in column {cols[c]!r} at row {r}")


def _check_labels(labels: pd.DataFrame, data: pd.DataFrame, where: str) -> None:
    _check_t(labels, where)
    if ATTACK_COLUMN not in labels.columns:
        raise DatasetError(f"{where}: missing column {ATTACK_COLUMN!r}")
    if len(labels) != len(data) or not np.array_equal(
        labels[T_COLUMN].to_numpy(), data[T_COLUMN].to_numpy()
    ):
        raise DatasetError(f"{where}: rows do not match the data file (column 't' differs)")
    if labels[ATTACK_COLUMN].isna().any():
        raise DatasetError(f"{where}: column 'attack' has missing values")
    expected = [c for c in data.columns if c != T_COLUMN]
    _check_columns(
        [c for c in labels.columns if c not in (T_COLUMN, ATTACK_COLUMN)], expected, where
    )
    for c in expected:
        if labels[c].dtype != np.bool_:
            raise DatasetError(f"{where}: label column {c!r} must be bool, got {labels[c].dtype}")


def read_dataset(
    path: Path, *, expected_columns: list[str] | None = None, with_labels: bool = True
) -> Dataset:
    """Read and validate a dataset (and its labels file when ``with_labels``).

    ``expected_columns``: the data columns after ``t`` (layout columns, then the price);
    when given, missing, unknown or reordered columns are refused.
    """
    data, meta = _read(path)
    _check_data(data, str(path), expected_columns)
    labels = None
    if with_labels:
        lpath = labels_path(path)
        labels, _ = _read(lpath)
        _check_labels(labels, data, str(lpath))
        labels[ATTACK_COLUMN] = labels[ATTACK_COLUMN].astype("string")
    return Dataset(data=data, labels=labels, metadata=meta)
