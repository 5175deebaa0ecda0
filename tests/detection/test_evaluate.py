"""Evaluation end to end on a small generated case14 set, and the ``detect eval`` CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from control_plane.cli import detect_eval
from detection.baselines.pca import PcaResidualDetector
from detection.baselines.pyod_detectors import ecod, knn
from detection.baselines.wls_detector import WlsDetector
from detection.evaluate import (
    EvaluationData,
    Scorecard,
    Split,
    evaluate,
    generated_evaluation_data,
    optional_detectors,
    time_split,
)


@pytest.fixture(scope="module")
def generated() -> tuple[EvaluationData, Split, np.ndarray]:
    return generated_evaluation_data(
        "case14", 350, seed=2, attack_rate=0.35, train_share=0.4, validation_share=0.2, workers=1
    )


def test_time_split_keeps_order_and_refuses_too_few_rows() -> None:
    s = time_split(100)
    assert (s.train, s.validation, s.test) == (slice(0, 50), slice(50, 70), slice(70, 100))
    with pytest.raises(ValueError, match="too few"):
        time_split(2)


def test_generated_data_has_attacks_only_in_the_test_segment(
    generated: tuple[EvaluationData, Split, np.ndarray],
) -> None:
    data, split, std = generated
    assert set(data.kinds[: split.test.start]) == {"none"}
    assert not data.cell_labels[: split.test.start].any()
    assert (data.kinds[split.test] != "none").mean() > 0.2
    assert std.shape == (len(data.layout),)


def _no_nan(card: Scorecard) -> None:
    for key, value in card.to_dict().items():
        if isinstance(value, float):
            assert math.isfinite(value), key
        if isinstance(value, dict):
            assert all(math.isfinite(v) for v in value.values()), key


def test_scorecards_side_by_side_have_every_field_and_no_nan(
    generated: tuple[EvaluationData, Split, np.ndarray],
) -> None:
    data, split, std = generated
    ticks = iter(np.arange(0.0, 1000.0, 0.5))  # injected clock: every call 0.5 s later
    result = evaluate(
        data,
        [PcaResidualDetector(), knn(), ecod(), WlsDetector("case14", std, max_rows=12)],
        split=split,
        clock=lambda: float(next(ticks)),
    )
    cards = result.scorecards
    assert result.skipped == {}
    assert [c.detector for c in cards] == ["pca_q", "knn", "ecod", "wls_chi2"]
    for c in cards:
        _no_nan(c)
        assert c.auc is not None and c.recall is not None and c.false_positive_rate is not None
        assert c.recall_per_kind and c.fit_s == 0.5
        assert c.rows_per_s == pytest.approx(c.test_rows / 0.5)
    pca, _, ecod_card, wls = cards
    assert pca.localizes and pca.localization_f1 is not None and pca.localization_f1 > 0.1
    assert ecod_card.localizes and not cards[1].localizes
    assert pca.auc is not None and pca.auc > 0.7
    assert pca.test_rows == split.test.stop - split.test.start and not pca.subsampled
    assert wls.subsampled and wls.test_rows <= 12 and wls.notes


class _RefusesToFit:
    name = "refuses"

    def fit(self, x_clean: np.ndarray, layout: object) -> None:
        raise ValueError("no model for this grid")

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        raise AssertionError("not reached")

    def score_cells(self, x: np.ndarray) -> np.ndarray | None:
        raise AssertionError("not reached")


def test_a_detector_that_refuses_the_data_is_skipped_with_its_reason(
    generated: tuple[EvaluationData, Split, np.ndarray],
) -> None:
    data, split, _ = generated
    result = evaluate(data, [_RefusesToFit(), PcaResidualDetector()], split=split)  # type: ignore[list-item]
    assert [c.detector for c in result.scorecards] == ["pca_q"]
    assert result.skipped == {"refuses": "no model for this grid"}


def test_optional_detectors_come_from_the_models_registry_when_present() -> None:
    try:
        import detection.models.registry  # noqa: F401
    except ImportError:
        assert optional_detectors() == []
    else:
        assert isinstance(optional_detectors(), list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridfort")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect")
    detect_sub = detect.add_subparsers(dest="detect_command", required=True)
    detect_eval.register_eval(detect_sub)
    return parser


def test_cli_prints_a_scorecard_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "detect_case14.json"
    argv = ["detect", "eval", "--grid", "case14", "--steps", "120", "--workers", "1"]
    args = _parser().parse_args([*argv, "--detectors", "pca_q", "knn", "--json", str(out)])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "pca_q" in printed and "knn" in printed and "AUC" in printed
    report = json.loads(out.read_text())
    assert report["grid"] == "case14" and len(report["scorecards"]) == 2
    assert set(report["split"]) == {"train", "validation", "test"}


def test_cli_refuses_unknown_detector_names() -> None:
    args = _parser().parse_args(
        ["detect", "eval", "--grid", "case14", "--steps", "150", "--detectors", "nope"]
    )
    with pytest.raises(ValueError, match="unknown detector"):
        args.handler(args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--held-out", "--seed", "5"], "--held-out needs a seed of at least"),
        (["--held-out", "--steps", "500"], "--steps must be at least"),
        (["--held-out", "--data", "x.parquet"], "cannot be combined with --data"),
    ],
)
def test_cli_held_out_refuses_training_seeds_and_short_runs(extra: list[str], message: str) -> None:
    args = _parser().parse_args(["detect", "eval", "--grid", "case14", *extra])
    with pytest.raises(ValueError, match=message):
        args.handler(args)


def test_cli_json_has_the_price_check_and_the_stage_fields(tmp_path: Path) -> None:
    out = tmp_path / "detect_case14.json"
    argv = ["detect", "eval", "--grid", "case14", "--steps", "300", "--workers", "1"]
    args = _parser().parse_args([*argv, "--detectors", "pca_q", "--json", str(out)])
    assert args.handler(args) == 0
    report = json.loads(out.read_text())
    cards = {c["detector"]: c for c in report["scorecards"]}
    assert set(cards) == {"pca_q", "price"}
    price = cards["price"]
    assert price["false_positive_rate"] is not None and "stage_thresholds" in price
    assert price["threshold"] > 0 and price["notes"]
    # no deep model for case14: the gate and the physics stage say why they are missing
    assert "gate" in report["skipped"] and "gnn+physics" in report["skipped"]
    # generated data: the most any detector could recall at this FPR
    bound = report["recall_bound"]
    assert 0.0 < bound["recall"] <= 1.0 and bound["rows"] > 0 and bound["target_fpr"] == 0.001


def test_the_gate_flags_a_row_any_part_flags_and_counts_every_attack(
    generated: tuple[EvaluationData, Split, np.ndarray],
) -> None:
    from detection.evaluate_stages import evaluate_price, gate_scorecard

    data, split, _ = generated
    # a price manipulation on 10 clean test rows (the price doubled)
    kinds, price = data.kinds.copy(), np.asarray(data.price_eur_per_mwh).copy()
    clean = np.flatnonzero(kinds == "none")
    start = next(
        int(i) for i in clean if i >= split.test.start and (kinds[i : i + 10] == "none").all()
    )
    kinds[start : start + 10] = "price"
    price[start : start + 10] *= 2.0
    data = dataclasses.replace(data, kinds=kinds, price_eur_per_mwh=price)
    price_card, price_flags = evaluate_price(data, split, target_fpr=0.01)
    assert price_card.recall == 1.0
    kinds = data.kinds[split.test]
    grid_flags = (kinds != "none") & (kinds != "price")  # a perfect grid detector
    grid_card = dataclasses.replace(price_card, detector="grid")
    gate = gate_scorecard(
        data, split, [(grid_card, grid_flags), (price_card, price_flags)], target_fpr=0.01
    )
    assert gate.attacked_rows == int((kinds != "none").sum())
    assert gate.recall_per_kind["price"] == price_card.recall_per_kind["price"]
    assert all(gate.recall_per_kind[k] == 1.0 for k in ("scaling", "replay", "der"))
    assert gate.stage_thresholds == {"grid": price_card.threshold, "price": price_card.threshold}
    _no_nan(gate)


def test_each_part_of_the_gate_gets_half_of_the_target(
    generated: tuple[EvaluationData, Split, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detection import evaluate_stages
    from detection.evaluate_stages import GATE_PART_SHARE, evaluate_price, stage_scorecards

    data, split, _ = generated
    asked: list[float] = []
    kinds = data.kinds[split.test]
    grid_flags = (kinds != "none") & (kinds != "price")

    def fake_ramp_stage(det: object, d: EvaluationData, s: Split, **kw: float) -> object:
        asked.append(kw["target_fpr"])
        card, _ = evaluate_price(d, s, target_fpr=kw["target_fpr"])
        return dataclasses.replace(card, detector="gnn+ramp"), grid_flags

    class FittedDeep:
        name = "gnn"
        model = object()

        def verdicts(self, x: np.ndarray) -> None: ...

    monkeypatch.setattr(evaluate_stages, "evaluate_ramp_stage", fake_ramp_stage)
    cards, skipped = stage_scorecards(data, split, [FittedDeep()], target_fpr=0.01)  # type: ignore[list-item]
    # 140 training rows are too few for the physics stage: skipped with the reason
    assert set(skipped) == {"gnn+physics"} and "at least 672" in skipped["gnn+physics"]
    assert GATE_PART_SHARE == 0.5
    assert sorted(asked) == [0.005, 0.01]  # the shown row at the target, the gate's part at half
    by_name = {c.detector: c for c in cards}
    half_price, _ = evaluate_price(data, split, target_fpr=0.005)
    assert by_name["gate"].stage_thresholds == {
        "gnn+ramp": half_price.threshold,
        "price": half_price.threshold,
    }
    assert by_name["price"].target_fpr == 0.01 and by_name["gate"].target_fpr == 0.01
    assert "0.500%" in by_name["gate"].notes[0]


def test_the_physics_stage_unites_the_row_test_and_the_physics_ramp_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detection.evaluate_stages import evaluate_physics_stage
    from detection.models import detector as deep
    from detection.models.physics_ramp import PHYSICS_FPR_SHARE

    data, split, _ = generated_evaluation_data(
        "case14", 1400, seed=4, attack_rate=0.35, train_share=0.5, validation_share=0.2, workers=1
    )

    def row_scores(model: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.abs(x[:, 1]), np.zeros(x.shape)  # a stand-in row test

    class FittedDeep:
        name = "gnn"
        model = object()

    monkeypatch.setattr(deep, "score", row_scores)
    card, flags = evaluate_physics_stage(FittedDeep(), data, split, target_fpr=0.01)  # type: ignore[arg-type]
    kinds = data.kinds[split.test]
    assert card.detector == "gnn+physics" and flags.shape == kinds.shape
    assert set(card.stage_thresholds or {}) == {"row", "physics"}
    assert card.recall is not None and set(card.recall_per_kind) == set(kinds) - {"none"}
    assert card.fit_s > 0 and "50%" in card.notes[0] and PHYSICS_FPR_SHARE == 0.5
    row_only = np.abs(data.x[split.test][:, 1]) > card.threshold
    assert np.all(flags[row_only])  # the union keeps every row-test flag
    _no_nan(card)
