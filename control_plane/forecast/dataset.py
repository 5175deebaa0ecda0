"""Forecast histories on disk: Parquet with the site and the seed in the file metadata.

Reading validates the schema and refuses, with one clear message, a file that is not
Parquet, misses a column, has non-finite values or unsorted timestamps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from control_plane.forecast.generate import COLUMNS
from control_plane.forecast.site import ForecastInputError, ForecastSite
from control_plane.forecast.timeline import STEP_MINUTES

META_KEY = b"gridfort"
FORMAT_VERSION = 1
STEP_NS = STEP_MINUTES * 60 * 1_000_000_000


def write_history(path: Path, frame: pd.DataFrame, site: ForecastSite, **meta: Any) -> None:
    """Write ``frame`` atomically with ``site`` and ``meta`` in the metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame[list(COLUMNS)], preserve_index=False)
    info = {"format_version": FORMAT_VERSION, "kind": "forecast-history", "site": site.to_json()}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), META_KEY: json.dumps({**info, **meta}).encode()}
    )
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_history(path: Path) -> tuple[pd.DataFrame, ForecastSite, dict[str, Any]]:
    """(frame, site, metadata) from a file written by :func:`write_history`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ForecastInputError(f"{path}: not a readable Parquet file") from e
    try:
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (KeyError, ValueError):
        raise ForecastInputError(f"{path}: no gridfort forecast-history metadata") from None
    if not isinstance(meta, dict) or meta.get("kind") != "forecast-history":
        raise ForecastInputError(f"{path}: not a forecast history")
    site = ForecastSite.from_json(meta.get("site"))
    frame = table.to_pandas()
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ForecastInputError(f"{path}: missing columns {missing}")
    values = frame[list(COLUMNS[1:])].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ForecastInputError(f"{path}: non-finite values")
    ts = pd.DatetimeIndex(frame["ts_utc"])
    if ts.tz is None or len(ts) < 2 or np.any(np.diff(ts.asi8) != STEP_NS):
        raise ForecastInputError(f"{path}: ts_utc must be tz-aware 15-minute steps, in order")
    return frame, site, meta
