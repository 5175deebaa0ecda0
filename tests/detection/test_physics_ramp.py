"""The physics ramp stage on generated case14 data: white residual with the estimated
noise, ramps flagged, clean rate near the target, monitor semantics and refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from detection.evaluate import EvaluationData, Split, generated_evaluation_data
from detection.models.physics_ramp import (
    MIN_HISTORY_ROWS,
    PhysicsRampStage,
    fit_physics_ramp,
    physics_ramp_verdicts,
)
from detection.models.physics_ramp import sequential_test as seq
from detection.models.physics_ramp.estimator import measure, track

TARGET_FPR = 0.01
Generated = tuple[EvaluationData, Split, np.ndarray]


@pytest.fixture(scope="module")
def generated() -> Generated:
    return generated_evaluation_data(
        "case14", 1500, seed=5, attack_rate=0.3, train_share=0.5, validation_share=0.3, workers=1
    )


@pytest.fixture(scope="module")
def stage(generated: Generated) -> PhysicsRampStage:
    data, split, _ = generated
    return fit_physics_ramp("case14", data.layout, data.x[split.train], TARGET_FPR, seed=1)


def _clean(generated: Generated) -> np.ndarray:
    data, split, _ = generated
    return data.x[split.validation]


def test_batched_measure_equals_the_measurement_model(stage: PhysicsRampStage) -> None:
    ph = stage.estimator.physics
    rng = np.random.default_rng(0)
    v = ph.v_nominal * (1.0 + 0.01 * rng.standard_normal((3, len(ph.v_nominal))))
    assert np.allclose(measure(ph, v), [ph.model.measure(row) for row in v])


def test_clean_residual_is_white_and_standard_with_the_estimated_std(
    stage: PhysicsRampStage, generated: Generated
) -> None:
    x = _clean(generated)
    r, _, _ = track(stage.estimator, x[:, None, :], None)
    y = stage.whitened(r[:, 0]).reshape(len(x), -1)
    y = y[:, y.std(axis=0) > 0]
    yc = y - y.mean(axis=0)
    lag1 = (yc[1:] * yc[:-1]).mean(axis=0) / (yc * yc).mean(axis=0)
    sd = y.std(axis=0)
    # never over-dispersed (that would inflate the FPR); a few low-redundancy columns,
    # whose std the history pins down least, are under-dispersed (conservative)
    assert 0.9 < np.median(sd) < 1.1 and sd.max() < 1.25
    assert np.mean(np.abs(sd - 1.0) < 0.2) > 0.9
    assert abs(np.median(lag1)) < 0.05 and np.abs(lag1).max() < 0.25


def test_estimated_std_is_within_a_factor_of_the_true_one(
    stage: PhysicsRampStage, generated: Generated
) -> None:
    _, _, true_std = generated
    ratio = stage.std / true_std
    assert 0.95 < np.median(ratio) < 1.05
    assert np.mean(np.abs(ratio - 1.0) < 0.25) > 0.85
    # where the estimator's own tracking error is comparable to a small noise the std
    # comes out larger: it describes the residual, not the meter
    assert ratio.min() > 0.5 and ratio.max() < 8.0


def test_a_ramp_on_one_element_is_flagged_and_named(
    stage: PhysicsRampStage, generated: Generated
) -> None:
    _, _, true_std = generated
    x = _clean(generated).copy()
    e = len(stage.pairs) // 2
    cols = stage.pairs[e]
    start, length = 100, 32
    growth = np.linspace(0.0, 10.0, length)[:, None] * true_std[cols]
    x[start : start + length, cols] += growth
    flags, _, element = physics_ramp_verdicts(stage, x)
    hits = np.flatnonzero(flags[start : start + length])
    assert hits.size and hits[0] < length - 4
    assert element[start + hits[0]] == e
    assert flags[start : start + length].mean() > 0.3


def test_clean_flag_rate_is_near_the_target(stage: PhysicsRampStage, generated: Generated) -> None:
    flags, scores, element = physics_ramp_verdicts(stage, _clean(generated))
    assert flags.mean() < 4 * TARGET_FPR
    assert np.all(element[~flags] == -1) and np.all(scores >= 0)
    assert abs(stage.null_fpr - TARGET_FPR) < 0.5 * TARGET_FPR


def test_batch_helper_equals_pushing_row_by_row(
    stage: PhysicsRampStage, generated: Generated
) -> None:
    data, split, _ = generated
    x = data.x[split.test][:150]
    other = np.zeros(len(x), dtype=bool)
    other[[20, 21, 90]] = True
    flags, scores, element = physics_ramp_verdicts(stage, x, other)
    mon = stage.monitor()
    for t in range(len(x)):
        v = mon.push(x[t], flagged_elsewhere=bool(other[t]))
        assert v.flagged == flags[t] and v.score == pytest.approx(scores[t], rel=1e-9)
        assert v.element == (stage.elements[element[t]] if flags[t] else "")
        assert len(v.columns) == (2 if flags[t] else 0)


def test_reset_forgets_the_stream(stage: PhysicsRampStage, generated: Generated) -> None:
    x = _clean(generated)[:20]
    mon = stage.monitor()
    first = [mon.push(z).score for z in x]
    mon.reset()
    again = [mon.push(z).score for z in x]
    assert again == first


def _ramp_rows(rows: int, elements: int, element: int, slope: float) -> np.ndarray:
    y = np.zeros((rows, 1, elements, 2))
    y[:, 0, element, 0] = slope * np.arange(1, rows + 1)
    return y


def test_follow_up_continues_on_the_flagged_element_until_the_first_miss() -> None:
    y = np.zeros((12, 1, 3, 2))
    y[:6, 0, 1, 0] = 0.5 * np.arange(1, 7)  # a ramp: T crosses 20 on row 5 (22.2)
    y[6:10, 0, 1, 0] = 3.0  # one row each (the memory empties): T = 9, u . y = 3 > 2.33
    y[10:, 0, 1, 0] = -1.0  # the bias is gone: the first miss ends the follow-up
    flags, scores, element = seq.run(y, 20.0, 2.33)
    f = flags[:, 0]
    assert np.flatnonzero(f).tolist() == [5, 6, 7, 8, 9]
    assert scores[5, 0] > 20.0 and np.allclose(scores[6:10, 0], 9.0)
    assert np.all(element[5:10, 0] == 1) and np.all(element[~f, 0] == -1)


def test_a_row_flagged_elsewhere_empties_the_memory_without_a_follow_up() -> None:
    y = _ramp_rows(10, 3, 2, 1.0)
    other = np.zeros((10, 1), dtype=bool)
    other[5] = True
    _, alone, _ = seq.run(y, np.inf, 2.33)
    flags, scores, _ = seq.run(y, np.inf, 2.33, other)
    assert not flags.any()  # no follow-up after another test's flag
    assert np.allclose(scores[:6], alone[:6])
    assert scores[6, 0] == pytest.approx(float(np.sum(y[6, 0, 2] ** 2)))  # one row since


def test_window_sums_equal_the_direct_matched_filter() -> None:
    rng = np.random.default_rng(3)
    y = rng.standard_normal((150, 2, 4, 2))
    _, scores, _ = seq.run(y, np.inf, 2.33)
    t, b = 140, 1
    best = 0.0
    for length in seq.RAMP_LENGTHS_STEPS:
        w = np.arange(1.0, length + 1.0)
        w /= np.linalg.norm(w)
        s = np.tensordot(w, y[t - length + 1 : t + 1, b], axes=(0, 0))
        best = max(best, float(np.max(np.sum(s * s, axis=-1))))
    assert scores[t, b] == pytest.approx(best, rel=1e-9)


def test_the_stage_pickles(stage: PhysicsRampStage, generated: Generated) -> None:
    back = pickle.loads(pickle.dumps(stage))
    x = _clean(generated)[:30]
    assert np.array_equal(physics_ramp_verdicts(back, x)[1], physics_ramp_verdicts(stage, x)[1])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda x: x[: MIN_HISTORY_ROWS - 1], "at least 672"),
        (lambda x: np.where(np.arange(x.shape[1]) == 3, np.nan, x), "NaN"),
        (lambda x: np.where(np.arange(x.shape[1]) == 3, np.inf, x), "infinite"),
        (lambda x: x[:, :-1], "measurements"),
    ],
)
def test_bad_history_is_refused(generated: Generated, change: object, reason: str) -> None:
    data, split, _ = generated
    bad = change(data.x[split.train])  # type: ignore[operator]
    with pytest.raises(ValueError, match=reason):
        fit_physics_ramp("case14", data.layout, bad, TARGET_FPR, seed=0)


def test_a_grid_without_a_jacobian_is_refused(generated: Generated) -> None:
    data, split, _ = generated
    with pytest.raises(ValueError, match="no measurement Jacobian"):
        fit_physics_ramp("case9999", data.layout, data.x[split.train], TARGET_FPR, seed=0)
    with pytest.raises(ValueError, match="target_fpr"):
        fit_physics_ramp("case14", data.layout, data.x[split.train], 1.5, seed=0)


def test_pushing_a_wrong_snapshot_is_refused(stage: PhysicsRampStage) -> None:
    mon = stage.monitor()
    with pytest.raises(ValueError, match="measurements"):
        mon.push(np.zeros(len(stage.columns) + 1))
    with pytest.raises(ValueError, match="NaN"):
        mon.push(np.full(len(stage.columns), np.nan))
