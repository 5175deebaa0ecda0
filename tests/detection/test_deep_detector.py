"""The deep detector on case14 with a tiny model: detects, localizes, keeps its FPR."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from detection.attacks import inject_attacks
from detection.detector import Detector
from detection.generate import generate_series
from detection.models.artifacts import TrainedModel
from detection.models.detector import DeepDetector, DetectorNotFittedError, cell_f1
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

TINY = TrainConfig(
    grid="case14",
    steps=400,
    seed=3,
    network=NetworkConfig(window=3, hidden=16, layers=2, bottleneck=16),
    attack_copies=6,
    val_copies=2,
    batch=64,
    lr=3e-3,
    max_iters=500,
    eval_every=100,
    target_fpr=0.05,
    threads=1,
    workers=1,
)


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return prepare_data(TINY, log=lambda _msg: None)


@pytest.fixture(scope="module")
def model(data) -> TrainedModel:
    return fit_network(TINY, data, log=lambda _msg: None)


@pytest.fixture(scope="module")
def other_days():
    """Clean held-out days (another seed than training): 250 rows to attack, 250 clean."""
    return generate_series("case14", 500, seed=101, workers=1)


@pytest.fixture(scope="module")
def held_out(other_days):
    return slice_series(other_days, 0, 250)


def test_deep_detector_implements_the_protocol() -> None:
    assert isinstance(DeepDetector(), Detector)
    assert [d.name for d in available_detectors()] == ["gnn"]
    with pytest.raises(DetectorNotFittedError):
        DeepDetector().score_rows(np.zeros((2, 3)))


def test_obvious_injections_are_detected(model, held_out) -> None:
    att = inject_attacks(held_out, rate=0.3, seed=7, kinds=("random", "scaling"))
    q = quality(model, att)
    assert q["auc"] > 0.9, q
    assert q["recall"] > 0.8, q


def test_scaling_attack_is_localized_on_the_right_cells(model, held_out) -> None:
    att = inject_attacks(held_out, rate=0.3, seed=8, kinds=("scaling",))
    cols = model.layout.columns
    x = att.data[cols].to_numpy()
    truth = att.labels[cols].to_numpy(dtype=bool)
    det = DeepDetector(model, recalibrate=False)
    attacked, flagged = det.verdicts(x)
    rows = truth.any(axis=1) & attacked
    assert rows.sum() > 20
    f1 = cell_f1(flagged[rows], truth[rows])
    chance = truth[rows].mean()  # F1 of flagging cells at random at the true rate
    assert f1 > 5 * chance, (f1, chance)


def test_calibrated_fpr_is_near_target_on_clean_data(model, other_days) -> None:
    history = other_days.measured[250:]
    det = DeepDetector(model, target_fpr=0.05)
    det.fit(history[:150], model.layout)
    scores = det.score_rows(history[150:])
    assert det.model is not model  # the caller's model keeps its own thresholds
    fpr = float(np.mean(scores > det.model.row_threshold))  # type: ignore[union-attr]
    assert fpr <= 0.15, fpr
    cells = det.score_cells(history[150:])
    assert cells is not None and cells.shape == (100, len(model.layout))


def test_inference_is_batched_and_fast(model, other_days) -> None:
    x = np.tile(other_days.measured, (4, 1))
    det = DeepDetector(model, recalibrate=False)
    t0 = time.perf_counter()
    det.score_rows(x)
    rows_per_s = len(x) / (time.perf_counter() - t0)
    assert rows_per_s > 2000, rows_per_s


def test_training_is_deterministic_given_the_seed(data) -> None:
    short = dataclasses.replace(TINY, max_iters=60, eval_every=30)
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
        ["train", "--grid", "case14", "--steps", "300", "--seed", "4", "--out", str(tmp_path / "m")]
    )
    assert args.handler is detect_train
    assert (args.grid, args.steps, args.seed, args.signing_key) == ("case14", 300, 4, None)
