"""The Neyman-Pearson recall bound: its formula, that a real detector attains it, its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from detection.bounds import recall_bound
from detection.evaluate import EvaluationData, Split, generated_evaluation_data

Z_999 = float(norm.ppf(0.999))


def _ramp_series(
    n_rows: int = 40, m: int = 6, start: int = 10, length: int = 20, final_sigma: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ramp on measurements 0 and 1 (in noise units times ``std``), clean elsewhere."""
    std = np.linspace(0.5, 2.0, m)
    injected = np.zeros((n_rows, m))
    kinds = np.full(n_rows, "none", dtype=object)
    for i in range(length):
        injected[start + i, :2] = final_sigma * std[:2] * (i + 1) / length
        kinds[start + i] = "ramp"
    return injected, std, kinds


def test_the_bound_is_the_matched_filter_power_over_the_episode_so_far() -> None:
    injected, std, kinds = _ramp_series()
    b = recall_bound(injected, std, kinds, 0.001)
    # row k of the ramp: ||injected_j / std||^2 = 2 (4 j / 20)^2, summed over j <= k
    k = np.arange(1, 21)
    snr = np.sqrt(np.cumsum(2.0 * (4.0 * k / 20.0) ** 2))
    expected = norm.cdf(snr - Z_999)
    np.testing.assert_allclose(b.per_row[10:30], expected, rtol=1e-12)
    assert np.isnan(b.per_row[:10]).all() and np.isnan(b.per_row[30:]).all()
    assert b.rows == 20 and b.recall == pytest.approx(expected.mean())
    assert b.per_kind == {"ramp": pytest.approx(expected.mean())}
    # the first rows of a slow ramp are out of any detector's reach, the last are not
    assert expected[0] < 0.01 and expected[-1] > 0.99


def test_a_detector_that_knows_the_attack_attains_the_bound() -> None:
    """Monte Carlo: the oracle matched filter, thresholded for 0.1 % false alarms on
    clean noise, detects each ramp row as often as the bound says (and no more)."""
    injected, std, kinds = _ramp_series(final_sigma=6.0)
    b = recall_bound(injected, std, kinds, 0.001)
    rng = np.random.default_rng(7)
    trials = 20_000
    rows = np.arange(10, 30)
    shape = injected[rows] / std  # the attack's change, whitened
    noise = rng.standard_normal((trials, len(rows), std.size))
    # the oracle statistic at row k: sum_{j<=k} shape_j . (whitened data_j - truth_j)
    clean_stat = np.cumsum(np.einsum("tjm,jm->tj", noise, shape), axis=1)
    attacked_stat = np.cumsum(np.einsum("tjm,jm->tj", noise + shape, shape), axis=1)
    scale = np.sqrt(np.cumsum(np.square(shape).sum(axis=1)))
    false_alarm = (clean_stat / scale > Z_999).mean(axis=0)
    detected = (attacked_stat / scale > Z_999).mean(axis=0)
    # binomial tolerance: 4 standard errors at 20,000 trials
    tol = 4.0 * np.sqrt(b.per_row[rows] * (1 - b.per_row[rows]) / trials) + 1e-3
    assert np.all(np.abs(detected - b.per_row[rows]) <= tol)
    assert np.all(np.abs(false_alarm - 0.001) <= 4.0 * np.sqrt(0.001 / trials) + 1e-4)


def test_rows_that_change_no_measurement_are_not_counted() -> None:
    injected, std, kinds = _ramp_series()
    kinds[32:36] = "price"  # the price changes no measurement
    b = recall_bound(injected, std, kinds, 0.001)
    assert np.isnan(b.per_row[32:36]).all() and set(b.per_kind) == {"ramp"}


def test_a_larger_false_positive_budget_raises_the_bound() -> None:
    injected, std, kinds = _ramp_series()
    low = recall_bound(injected, std, kinds, 0.001).recall
    high = recall_bound(injected, std, kinds, 0.01).recall
    assert 0.0 < low < high < 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_fpr": 0.0}, "target_fpr must be in"),
        ({"target_fpr": 1.0}, "target_fpr must be in"),
        ({"std": np.ones(5)}, "must be \\(n, m\\) and \\(m,\\)"),
        ({"std": np.zeros(6)}, "std must be positive"),
        ({"std": np.full(6, np.nan)}, "std must be positive"),
        ({"kinds": np.full(3, "none", dtype=object)}, "row-aligned"),
        ({"injected": np.full((40, 6), np.inf)}, "injected must be finite"),
        ({"kinds": np.full(40, "none", dtype=object)}, "nothing to bound"),
    ],
)
def test_bad_input_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    injected, std, kinds = _ramp_series()
    args: dict[str, object] = {
        "injected": injected,
        "std": std,
        "kinds": kinds,
        "target_fpr": 0.001,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        recall_bound(**args)  # type: ignore[arg-type]


def test_generated_data_carries_what_each_attack_changed() -> None:
    data: EvaluationData
    split: Split
    data, split, std = generated_evaluation_data(
        "case14", 400, seed=2, attack_rate=0.35, train_share=0.4, validation_share=0.2, workers=1
    )
    assert data.injected is not None
    changed = data.injected != 0
    # the labels mark exactly the measurements the attacks changed
    np.testing.assert_array_equal(changed, data.cell_labels)
    assert not changed[: split.test.start].any()
    assert {"ramp", "replay", "scaling", "der"} <= set(data.kinds)
    b = recall_bound(data.injected, std, data.kinds, 0.001)
    assert 0.0 < b.recall <= 1.0 and "price" not in b.per_kind
    assert b.per_kind["ramp"] < b.per_kind["scaling"]  # a slow ramp starts below the noise


def test_eval_says_why_a_dataset_file_has_no_bound() -> None:
    from control_plane.cli.detect_eval import _recall_bound

    injected, std, kinds = _ramp_series()
    x = np.zeros_like(injected)
    data = type("Data", (), {"injected": None, "kinds": kinds, "x": x})()
    bound, why = _recall_bound(data, std, 0.001)
    assert bound is None and why is not None and "generated data" in why
    data.injected = injected
    bound, why = _recall_bound(data, std, 0.001)
    assert why is None and bound is not None and bound.rows == 20
