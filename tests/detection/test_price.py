"""The price check on a small generated case14 series: catches manipulated prices, keeps
its false-positive rate on clean rows."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import inject_attacks
from detection.generate import PRICE_COLUMN, GeneratedSeries, generate_series
from detection.models.train import slice_series
from detection.price import PriceCheck, fit_price_model, price_scores
from detection.thresholds import tail_threshold

FIT, CAL, TEST = 300, 300, 250


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", FIT + CAL + TEST, seed=11, workers=1)


def test_the_load_model_explains_the_clean_price(series: GeneratedSeries) -> None:
    model = fit_price_model(series.measured[:FIT], series.price_eur_per_mwh[:FIT], series.layout)
    e = model.residuals(series.measured[FIT:], series.price_eur_per_mwh[FIT:])
    # the price follows the net load; what is left is close to its own AR(1) noise
    # (std 4 EUR/MWh in the generator), far below the price's own variation
    assert np.std(e) < 5.0
    assert np.std(e) < 0.5 * np.std(series.price_eur_per_mwh[FIT:])
    assert 0.5 < model.phi < 0.98


def test_manipulated_prices_are_caught_and_clean_rows_are_not_flagged(
    series: GeneratedSeries,
) -> None:
    x, price = series.measured, series.price_eur_per_mwh
    model = fit_price_model(x[:FIT], price[:FIT], series.layout)
    threshold = tail_threshold(
        price_scores(model, x[FIT : FIT + CAL], price[FIT : FIT + CAL]), 0.01
    )
    att = inject_attacks(
        slice_series(series, FIT + CAL, FIT + CAL + TEST), rate=0.35, seed=4, kinds=("price",)
    )
    kinds = att.labels["attack"].astype(str).to_numpy()
    assert (kinds == "price").sum() > 40
    flags = price_scores(model, x[FIT + CAL :], att.data[PRICE_COLUMN].to_numpy(), threshold)
    flags = flags > threshold
    assert flags[kinds == "price"].mean() >= 0.9
    assert flags[kinds == "none"].mean() <= 0.03
    # the same rows with the true price: nothing to flag beyond the calibrated rate
    clean = price_scores(model, x[FIT + CAL :], price[FIT + CAL :], threshold) > threshold
    assert clean.mean() <= 0.03


def test_a_flagged_price_never_becomes_the_reference() -> None:
    from detection.price import PriceModel

    model = PriceModel(
        columns=np.zeros(1, dtype=np.int64),
        mean=np.zeros(1),
        scale=np.ones(1),
        components=np.ones((1, 1)),
        coef=np.zeros(2),
        phi=0.9,
        sd=1.0,
    )
    check = PriceCheck(model, threshold=4.0, level_weight=0.0)
    assert check.score(0.0) <= 4.0
    # a sustained shift of 3 sd: its jump is flagged, and since the flagged rows are not
    # accepted, the prediction keeps the clean reference and keeps flagging
    assert all(check.score(3.0) > 4.0 for _ in range(3))
    # if it were accepted, the second row would look clean
    lenient = PriceCheck(model, threshold=float("inf"), level_weight=0.0)
    lenient.score(0.0)
    lenient.score(3.0)
    assert lenient.score(3.0) < 4.0


def test_too_little_history_is_refused(series: GeneratedSeries) -> None:
    with pytest.raises(ValueError, match="at least"):
        fit_price_model(series.measured[:20], series.price_eur_per_mwh[:20], series.layout)
