"""Detection metrics on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from detection import metrics


def test_auc_is_one_for_perfect_separation_and_half_for_constant_scores() -> None:
    y = np.array([False, False, True, True])
    assert metrics.auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert metrics.auc(np.ones(4), y) == 0.5
    assert metrics.auc(np.ones(4), np.zeros(4, dtype=bool)) is None


def test_recall_and_false_positive_rate_at_threshold() -> None:
    scores = np.array([0.1, 0.5, 2.0, 0.2, 3.0, 0.4])
    y = np.array([False, False, True, True, True, False])
    assert metrics.recall(scores, y, 1.0) == pytest.approx(2 / 3)
    assert metrics.false_positive_rate(scores, y, 0.3) == pytest.approx(2 / 3)
    assert metrics.false_positive_rate(scores, y, 1.0) == 0.0
    assert metrics.recall(scores, np.zeros(6, dtype=bool), 1.0) is None


def test_recall_per_kind_skips_clean_rows() -> None:
    scores = np.array([0.0, 5.0, 0.0, 5.0, 5.0])
    kinds = np.array(["none", "ramp", "ramp", "random", "none"], dtype=object)
    assert metrics.recall_per_kind(scores, kinds, 1.0) == {"ramp": 0.5, "random": 1.0}


def test_cell_thresholds_are_per_column_quantiles() -> None:
    clean = np.column_stack([np.arange(100.0), 10 * np.arange(100.0)])
    thr = metrics.calibrate_cell_thresholds(clean, 0.05)
    assert thr == pytest.approx([95.0, 950.0])
    assert np.mean(clean[:, 0] > thr[0]) <= 0.05


def test_localization_f1_counts_cells_on_attacked_rows_only() -> None:
    labels = np.array([[True, False, False], [False, True, True], [False, False, False]])
    scores = np.array([[5.0, 5.0, 0.0], [0.0, 5.0, 0.0], [9.0, 9.0, 9.0]])
    loc = metrics.localization_f1(scores, labels, np.ones(3))
    assert loc is not None and loc.rows == 2  # the clean third row does not count
    # tp=2 (r0c0, r1c1), fp=1 (r0c1), fn=1 (r1c2)
    assert loc.precision == pytest.approx(2 / 3) and loc.recall == pytest.approx(2 / 3)
    assert loc.f1 == pytest.approx(2 / 3)
    perfect = metrics.localization_f1(labels.astype(float) * 5, labels, np.ones(3))
    assert perfect is not None and perfect.f1 == 1.0
    assert metrics.localization_f1(scores, np.zeros((3, 3), dtype=bool), np.ones(3)) is None


def test_ramp_delay_counts_steps_from_episode_start() -> None:
    kinds = np.array(["none", "ramp", "ramp", "ramp", "none", "ramp", "ramp", "none"], dtype=object)
    flags = np.array([True, False, False, True, False, False, False, True])
    assert metrics.episodes(kinds, "ramp") == [(1, 4), (5, 7)]
    assert metrics.detection_delays(flags, kinds) == [2, None]


def test_throughput_is_rows_and_measurements_per_second() -> None:
    assert metrics.throughput(1000, 54, 0.5) == (2000.0, 108000.0)
