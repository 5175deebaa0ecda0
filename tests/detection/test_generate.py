"""The operating time-series generator: determinism, noise of the stated size, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from detection import generate
from detection.generate import (
    PRICE_COLUMN,
    STEPS_PER_DAY,
    NoiseModel,
    Profiles,
    daily_load_shape,
    generate_series,
)


@pytest.fixture(scope="module")
def series() -> generate.GeneratedSeries:
    return generate_series("case14", STEPS_PER_DAY, seed=11, workers=1)


def test_same_seed_same_series_other_seed_differs() -> None:
    one = generate_series("case14", 30, seed=11, workers=1)
    again = generate_series("case14", 30, seed=11, workers=1)
    assert np.array_equal(again.measured, one.measured)
    assert np.array_equal(again.price_eur_per_mwh, one.price_eur_per_mwh)
    other = generate_series("case14", 30, seed=12, workers=1)
    assert not np.allclose(other.measured, one.measured)


def test_result_does_not_depend_on_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "CHUNK_STEPS", 15)
    one = generate_series("case14", 30, seed=5, workers=1)
    two = generate_series("case14", 30, seed=5, workers=2)
    assert np.array_equal(one.measured, two.measured)


def test_noise_has_the_stated_size(series: generate.GeneratedSeries) -> None:
    z = (series.measured - series.true) / series.std[None, :]
    assert abs(float(z.mean())) < 0.05
    assert 0.95 < float(z.std()) < 1.05
    vm = series.layout.positions_of("bus", "vm_pu")
    rel = (series.measured[:, vm] - series.true[:, vm]) / series.true[:, vm]
    assert 0.0015 < float(rel.std()) < 0.0025  # 0.2 % of the voltage magnitude
    p_line = series.layout.positions_of("line", "p_from_mw")
    typical = np.abs(generate.nominal_snapshot("case14"))[p_line]
    floor = series.std[p_line] - 0.01 * typical
    assert np.allclose(floor, floor[0]) and floor[0] > 0  # 1 % of typical plus one floor


def test_noise_model_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="vm_rel"):
        NoiseModel(vm_rel=0.0)


def test_daily_shape_peaks_in_the_evening_and_dips_at_night() -> None:
    t = np.arange(STEPS_PER_DAY)
    shape = daily_load_shape(t)
    assert 17 <= int(np.argmax(shape)) * 15 / 60 <= 21
    assert shape[4 * 3] < 0.7 < shape[4 * 19]
    weekend = daily_load_shape(t + 5 * STEPS_PER_DAY)
    assert np.allclose(weekend, 0.9 * shape)


def test_series_is_time_ordered_with_price(series: generate.GeneratedSeries) -> None:
    frame = series.to_frame()
    assert list(frame.columns[:2]) == ["t", "bus0.vm_pu"]
    assert frame.columns[-1] == PRICE_COLUMN
    assert frame["t"].dtype == np.int64 and frame["t"].is_monotonic_increasing
    price = frame[PRICE_COLUMN].to_numpy()
    assert price.min() > 0 and price.max() < 300
    assert series.retried_steps == []


def test_pv_follows_the_sun_and_loads_drift_by_zone() -> None:
    from detection.grid import load_grid

    net = load_grid("cigre_mv")
    prof = generate.operating_profiles(net, 3 * STEPS_PER_DAY, np.random.default_rng(0))
    is_pv = (net.sgen.type == "PV").to_numpy()
    hour = (np.arange(3 * STEPS_PER_DAY) % STEPS_PER_DAY) / 4
    night = (hour < 5) | (hour > 21)
    assert np.all(prof.sgen[night][:, is_pv] == 0.0)
    assert np.all(prof.sgen[hour == 12][:, is_pv] > 0.0)
    assert np.all((prof.sgen[:, ~is_pv] >= 0) & (prof.sgen[:, ~is_pv] <= 1))  # wind
    corr = np.corrcoef(prof.load.T)
    assert corr[0, 4] > 0.5  # loads share the daily shape and the drift


def test_nonconverging_step_is_retried_milder_not_dropped() -> None:
    from detection.grid import load_grid

    net = load_grid("case14")
    n_load, n_sgen = len(net.load), len(net.sgen)
    load = np.ones((3, n_load))
    load[1] = 40.0  # no power flow solution at 40 x nominal load
    prof = Profiles(
        load=load, sgen=np.zeros((3, n_sgen)), gen=np.ones(3), price_eur_per_mwh=np.zeros(3)
    )
    true, volts, retried = generate._run_chunk("case14", prof, 0, 3)
    assert true.shape[0] == 3 and volts.shape[0] == 3
    assert [k for k, _ in retried] == [1]
    assert retried[0][1] >= 1
