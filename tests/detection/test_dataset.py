"""Parquet datasets: round trip with labels, and hostile files refused with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.attacks import AttackedSeries, inject_attacks
from detection.dataset import DatasetError, labels_path, read_dataset, write_dataset
from detection.generate import PRICE_COLUMN, GeneratedSeries, generate_series


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", 24, seed=8, workers=1)


@pytest.fixture(scope="module")
def attacked(series: GeneratedSeries) -> AttackedSeries:
    return inject_attacks(series, rate=0.4, seed=2, kinds=("random", "price"))


@pytest.fixture
def written(tmp_path: Path, attacked: AttackedSeries) -> Path:
    path = tmp_path / "d.parquet"
    write_dataset(path, attacked.data, attacked.labels, {"grid": "case14", "seed": 8})
    return path


def _expected(series: GeneratedSeries) -> list[str]:
    return [*series.layout.columns, PRICE_COLUMN]


def test_round_trip_keeps_data_labels_and_metadata(
    written: Path, attacked: AttackedSeries, series: GeneratedSeries
) -> None:
    assert labels_path(written).name == "d.labels.parquet"
    ds = read_dataset(written, expected_columns=_expected(series))
    pd.testing.assert_frame_equal(ds.data, attacked.data)
    assert ds.labels is not None
    pd.testing.assert_frame_equal(ds.labels, attacked.labels)
    assert ds.metadata["grid"] == "case14" and ds.metadata["format_version"] == 1
    assert ds.measurement_columns == _expected(series)


def test_truncated_file_is_refused(written: Path) -> None:
    raw = written.read_bytes()
    written.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_dataset(written)


def test_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"t,bus0.vm_pu\n0,1.0\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_dataset(path, with_labels=False)


def test_missing_file_and_missing_labels_are_refused(written: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope.parquet")
    labels_path(written).unlink()
    with pytest.raises(DatasetError, match=r"labels\.parquet: no such file"):
        read_dataset(written)
    assert read_dataset(written, with_labels=False).labels is None


def _rewrite(path: Path, frame: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def test_missing_column_is_named(written: Path, series: GeneratedSeries) -> None:
    frame = pq.read_table(written).to_pandas().drop(columns=["bus3.q_mvar"])
    _rewrite(written, frame)
    with pytest.raises(DatasetError, match=r"missing column\(s\) bus3\.q_mvar"):
        read_dataset(written, expected_columns=_expected(series), with_labels=False)


def test_unknown_column_is_named(written: Path, series: GeneratedSeries) -> None:
    frame = pq.read_table(written).to_pandas()
    frame["bus99.vm_pu"] = 1.0
    _rewrite(written, frame)
    with pytest.raises(DatasetError, match=r"unknown column\(s\) bus99\.vm_pu"):
        read_dataset(written, expected_columns=_expected(series), with_labels=False)


def test_wrong_dtype_is_refused(written: Path) -> None:
    frame = pq.read_table(written).to_pandas()
    frame["bus0.vm_pu"] = frame["bus0.vm_pu"].astype(str)
    _rewrite(written, frame)
    with pytest.raises(DatasetError, match=r"'bus0\.vm_pu' must be float64"):
        read_dataset(written, with_labels=False)


def test_float_time_column_is_refused(written: Path) -> None:
    frame = pq.read_table(written).to_pandas()
    frame["t"] = frame["t"].astype(float)
    _rewrite(written, frame)
    with pytest.raises(DatasetError, match="'t' must be integer"):
        read_dataset(written, with_labels=False)


def test_unsorted_time_is_refused(written: Path) -> None:
    frame = pq.read_table(written).to_pandas()
    frame = frame.iloc[[0, 2, 1, *range(3, len(frame))]]
    _rewrite(written, frame)
    with pytest.raises(DatasetError, match="not strictly increasing"):
        read_dataset(written, with_labels=False)


def test_nan_value_is_refused(written: Path) -> None:
    frame = pq.read_table(written).to_pandas()
    frame.loc[4, "line2.p_from_mw"] = np.nan
    _rewrite(written, frame)
    with pytest.raises(
        DatasetError, match=r"non-finite value in column 'line2\.p_from_mw' at row 4"
    ):
        read_dataset(written, with_labels=False)


def test_labels_of_another_file_are_refused(written: Path) -> None:
    lpath = labels_path(written)
    labels = pq.read_table(lpath).to_pandas()
    labels["t"] = labels["t"] + 1
    _rewrite(lpath, labels)
    with pytest.raises(DatasetError, match="rows do not match the data file"):
        read_dataset(written)


def test_non_bool_label_is_refused(written: Path) -> None:
    lpath = labels_path(written)
    labels = pq.read_table(lpath).to_pandas()
    labels["bus0.vm_pu"] = labels["bus0.vm_pu"].astype(np.int8)
    _rewrite(lpath, labels)
    with pytest.raises(DatasetError, match="must be bool"):
        read_dataset(written)


def test_invalid_frames_never_reach_disk(tmp_path: Path, attacked: AttackedSeries) -> None:
    bad = attacked.data.copy()
    bad.loc[0, "bus0.vm_pu"] = np.inf
    path = tmp_path / "bad.parquet"
    with pytest.raises(DatasetError, match="non-finite"):
        write_dataset(path, bad, attacked.labels)
    assert not path.exists() and not labels_path(path).exists()
