"""The deep detector on case14 with a tiny model: detects, localizes, adapts, keeps its FPR."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detection.attacks import AttackMagnitudes, inject_attacks
from detection.detector import Detector
from detection.generate import GeneratedSeries, NoiseModel, generate_series
from detection.models.artifacts import TrainedModel
from detection.models.detector import (
    MIN_HISTORY_ROWS,
    DeepDetector,
    DetectorNotFittedError,
    adapt,
    cell_f1,
    score,
    score_latest,
    verdicts,
)
from detection.models.network import NetworkConfig
from detection.models.registry import available_detectors
from detection.models.train import (
    TrainConfig,
    TrainingData,
    fit_network,
    prepare_data,
    quality,
    slice_series,
)

H = MIN_HISTORY_ROWS
TINY = TrainConfig(
    grid="case14",
    seed=3,
    network=NetworkConfig(window=97, temporal=4, hidden=16, layers=2, factors=16, replay_days=1),
    scenarios=1,
    history_steps=200,
    train_steps=250,
    val_steps=150,
    attack_copies=4,
    val_copies=2,
    batch=32,
    lr=3e-3,
    max_iters=1000,
    eval_every=200,
    target_fpr=0.05,
    threads=1,
    workers=1,
)


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return prepare_data(TINY, log=lambda _msg: None)


@pytest.fixture(scope="module")
def model(data: TrainingData) -> TrainedModel:
    return fit_network(TINY, data, log=lambda _msg: None)


@pytest.fixture(scope="module")
def other_grid():
    """Another operator's data (other seed, noisier meters): a week of clean history, then
    250 rows to attack."""
    noise = NoiseModel(vm_rel=0.003, power_rel=0.013)
    return generate_series("case14", H + 250, seed=101, noise=noise, workers=2)


def test_deep_detector_implements_the_protocol() -> None:
    assert isinstance(DeepDetector(), Detector)
    assert [d.name for d in available_detectors()] == ["gnn"]
    with pytest.raises(DetectorNotFittedError):
        DeepDetector().score_rows(np.zeros((2, 3)))


def test_adapted_model_detects_obvious_injections_on_another_grid(model, other_grid) -> None:
    history = other_grid.measured[:H]
    adapted = adapt(model, history)
    obvious = AttackMagnitudes(random_sigma=(8.0, 15.0))
    part = slice_series(other_grid, H, H + 250)
    att = inject_attacks(part, rate=0.3, seed=7, kinds=("random",), magnitudes=obvious)
    q = quality(adapted, att, context=history)
    assert q["auc"] > 0.9, q
    assert q["recall"] > 0.7, q


def test_scaling_attack_is_localized_on_the_right_cells(model, other_grid) -> None:
    history = other_grid.measured[:H]
    att = inject_attacks(slice_series(other_grid, H, H + 250), rate=0.3, seed=8, kinds=("scaling",))
    cols = model.layout.columns
    x = np.concatenate([history, att.data[cols].to_numpy()])
    truth = att.labels[cols].to_numpy(dtype=bool)
    det = DeepDetector(model)
    det.fit(history, model.layout)
    attacked, flagged = det.verdicts(x)
    attacked, flagged = attacked[H:], flagged[H:]
    rows = truth.any(axis=1) & attacked
    assert rows.sum() > 20
    f1 = cell_f1(flagged[rows], truth[rows])
    chance = truth[rows].mean()  # F1 of flagging cells at random at the true rate
    assert f1 > 5 * chance, (f1, chance)


def test_adaptation_keeps_the_fpr_near_target_and_never_touches_the_callers_model(
    model, other_grid
) -> None:
    before = model.net.state_dict()["mean"].clone()
    thr = model.row_threshold
    det = DeepDetector(model, target_fpr=0.05)
    det.fit(other_grid.measured[:H], model.layout)
    assert det.model is not model and model.row_threshold == thr
    assert bool((model.net.state_dict()["mean"] == before).all())
    clean = other_grid.measured[H:]
    rows = det.score_rows(clean)
    fpr = float(np.mean(rows > det.model.row_threshold))  # type: ignore[union-attr]
    assert fpr <= 0.15, fpr
    cells = det.score_cells(clean)
    assert cells is not None and cells.shape == (len(clean), len(model.layout))


def test_score_latest_equals_the_last_row_of_score(model, other_grid) -> None:
    x = other_grid.measured[:150]
    rows, cells = score(model, x)
    for end in (1, 3, 60, 150):
        row, cell = score_latest(model, x[:end])
        assert row == pytest.approx(rows[end - 1], abs=1e-4)
        np.testing.assert_allclose(cell, cells[end - 1], atol=1e-4)
    # a longer window than the model's context is cut to the context
    row, _ = score_latest(model, np.concatenate([x, x[:10]])[-(model.config.window + 5) :])
    assert np.isfinite(row)


def test_replayed_day_is_flagged_cell_by_cell(model, other_grid) -> None:
    x = other_grid.measured[:300].copy()
    region = [c for c in range(len(model.layout)) if c % 9 == 0]
    x[250:260, region] = x[250 - 96 : 260 - 96, region]  # yesterday's values, bit for bit
    flags = model.net.replay_flags(x).numpy()[..., 0]
    assert flags[250:260][:, region].all()
    assert not np.delete(flags, np.s_[250:260], axis=0).any()


def test_a_held_value_is_not_a_replay(model, other_grid) -> None:
    x = other_grid.measured[:300].copy()
    x[100:300, 5] = x[99, 5]  # a stuck meter (or a gap filled with its last value) for two days
    assert not model.net.replay_flags(x).numpy().any()


def test_scores_do_not_depend_on_the_batch(model, other_grid) -> None:
    x = np.tile(other_grid.measured[:100], (3, 1))
    rows, cells = score(model, x)
    part_rows, _ = score(model, x[:40])
    np.testing.assert_allclose(rows[:40], part_rows, atol=1e-5)
    attacked, flagged = verdicts(model, rows, cells)
    assert attacked.shape == (300,) and flagged.shape == cells.shape
    assert not flagged[~attacked].any()


def test_training_is_deterministic_given_the_seed(data) -> None:
    short = dataclasses.replace(TINY, max_iters=40, eval_every=20)
    model = fit_network(short, data, log=lambda _msg: None)
    again = fit_network(short, data, log=lambda _msg: None)
    assert again.row_threshold == model.row_threshold
    np.testing.assert_array_equal(again.cell_thresholds, model.cell_thresholds)
    for (k, a), (_, b) in zip(
        again.net.state_dict().items(), model.net.state_dict().items(), strict=True
    ):
        assert bool((a == b).all()), k


def test_detect_train_cli_registers_its_flags(tmp_path) -> None:
    import argparse

    from control_plane.cli.detect_train import detect_train, register_train

    parser = argparse.ArgumentParser()
    register_train(parser.add_subparsers(dest="detect_command"))
    args = parser.parse_args(
        ["train", "--grid", "case14", "--scenarios", "2", "--seed", "4", "--out", str(tmp_path)]
    )
    assert args.handler is detect_train
    assert (args.grid, args.scenarios, args.seed, args.signing_key) == ("case14", 2, 4, None)


def test_long_inputs_are_scored_in_blocks_with_their_context(
    model, other_grid, monkeypatch
) -> None:
    import detection.models.detector as det

    x = other_grid.measured
    rows, cells = score(model, x)
    monkeypatch.setattr(det, "SCORE_BLOCK", 64)
    small_rows, small_cells = score(model, x)
    np.testing.assert_allclose(small_rows, rows, atol=1e-4)
    np.testing.assert_allclose(small_cells, cells, atol=1e-4)


def test_the_scorecard_reports_the_detectors_own_calibration(model, other_grid) -> None:
    from detection.evaluate import EvaluationData, Split, evaluate_detector

    att = inject_attacks(slice_series(other_grid, H + 100, H + 250), rate=0.3, seed=9)
    cols = model.layout.columns
    x = np.concatenate([other_grid.measured[: H + 100], att.data[cols].to_numpy()])
    kinds = np.array(["none"] * (H + 100) + list(att.labels["attack"].astype(str)), dtype=object)
    cells = np.zeros(x.shape, dtype=bool)
    cells[H + 100 :] = att.labels[cols].to_numpy(dtype=bool)
    data = EvaluationData("case14", model.layout, x, kinds, cells)
    split = Split(slice(0, H), slice(H, H + 100), slice(H + 100, H + 250))
    card = evaluate_detector(DeepDetector(model), data, split, target_fpr=0.05)
    assert card.own_threshold is not None and card.own_recall is not None
    assert card.own_false_positive_rate is not None and card.own_localization_f1 is not None
    assert card.own_recall_per_kind and set(card.own_recall_per_kind) <= set(card.recall_per_kind)


def test_adapting_with_the_ramp_stage_and_judge_latest_equals_judge(
    model: TrainedModel, other_grid: GeneratedSeries
) -> None:
    from detection.models.detector import judge, judge_latest, localization_memory, ramp_monitor

    assert model.ramp_scale is None  # the trained model ships the row test only
    plain_adapted = adapt(model, other_grid.measured[:H])
    assert plain_adapted.ramp_scale is None
    model = adapt(model, other_grid.measured[:H], ramp_stage=True)
    assert model.ramp_scale is not None and np.isfinite(model.ramp_threshold)
    # the target is shared: the row test alone is stricter than without the stage
    assert model.row_threshold >= plain_adapted.row_threshold
    x = other_grid.measured[H : H + 60].copy()
    x[30:, 3] += np.linspace(0.0, 8.0, 30) * np.abs(x[:30, 3]).std()  # a ramp
    batch = judge(model, x)
    monitor = ramp_monitor(model)
    memory = localization_memory(model)  # judge pools a run of attacked rows: so does this
    for end in range(1, len(x) + 1):
        one = judge_latest(model, x[:end], monitor, memory)
        assert one.attacked == batch.attacked[end - 1]
        np.testing.assert_allclose(one.ramp_cells, batch.ramp_cells[end - 1], atol=1e-4)
        np.testing.assert_array_equal(one.flagged, batch.flagged[end - 1])
    # without a monitor, judge_latest is the row test alone
    plain = judge_latest(model, x, None)
    assert plain.ramp_score == 0.0
