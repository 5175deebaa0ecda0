"""Attack injection: each kind changes exactly the cells it labels, with its own footprint."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import (
    ATTACK_KINDS,
    AcMeasurementModel,
    AttackedSeries,
    inject_attacks,
    measurement_model,
    stealthy_delta,
)
from detection.generate import PRICE_COLUMN, GeneratedSeries, generate_series
from detection.grid import der_buses, load_grid

STEPS = 160


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", STEPS, seed=21, workers=1)


@pytest.fixture(scope="module")
def model(series: GeneratedSeries) -> AcMeasurementModel:
    return measurement_model("case14", series.layout)


@pytest.fixture(scope="module")
def attacked(series: GeneratedSeries, model: AcMeasurementModel) -> dict[str, AttackedSeries]:
    return {
        kind: inject_attacks(series, rate=0.35, seed=3, kinds=(kind,), model=model)
        for kind in ATTACK_KINDS
    }


def _changed(series: GeneratedSeries, a: AttackedSeries) -> np.ndarray:
    cols = [*series.layout.columns, PRICE_COLUMN]
    clean = np.column_stack([series.measured, series.price_eur_per_mwh])
    return np.asarray(a.data[cols].to_numpy() != clean)


def test_ac_model_reproduces_the_power_flow(
    series: GeneratedSeries, model: AcMeasurementModel
) -> None:
    for k in (0, 50, 100):
        assert np.allclose(model.measure(series.voltages[k]), series.true[k], atol=1e-5)


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_each_kind_changes_exactly_the_labelled_cells(
    kind: str, series: GeneratedSeries, attacked: dict[str, AttackedSeries]
) -> None:
    a = attacked[kind]
    cols = [*series.layout.columns, PRICE_COLUMN]
    mask = a.labels[cols].to_numpy()
    assert np.array_equal(_changed(series, a), mask)
    rows = (a.labels["attack"] == kind).to_numpy()
    assert rows.any() and set(a.labels["attack"]) == {kind, "none"}
    assert np.array_equal(mask.any(axis=1), rows)
    assert [e.kind for e in a.episodes] == [kind] * len(a.episodes)


def test_price_attack_touches_only_the_price(
    series: GeneratedSeries, attacked: dict[str, AttackedSeries]
) -> None:
    labels = attacked["price"].labels
    assert not labels[series.layout.columns].to_numpy().any()
    assert labels[PRICE_COLUMN].any()


def test_der_attack_falsifies_many_der_streams_together(
    series: GeneratedSeries, attacked: dict[str, AttackedSeries]
) -> None:
    ders = set(int(b) for b in der_buses(load_grid("case14")))
    labels = attacked["der"].labels
    hit = [c for c in series.layout.columns if labels[c].any()]
    assert hit and all(c.endswith(".p_mw") and c.startswith("bus") for c in hit)
    assert {int(c.split(".")[0][3:]) for c in hit} <= ders
    for ep in attacked["der"].episodes:
        # coordinated: at least half of the DER streams, every row of the episode
        rows = labels.iloc[ep.start : ep.stop]
        streams = [c for c in hit if rows[c].any()]
        assert len(streams) >= len(ders) / 2
        assert rows[streams].to_numpy().all()


def test_stealthy_attack_stays_in_its_region(
    series: GeneratedSeries, attacked: dict[str, AttackedSeries]
) -> None:
    a = attacked["stealthy"]
    ep = a.episodes[0]
    region = set(ep.buses)
    cols = series.layout.columns
    touched = series.layout.mask_touching(region)
    # bus injections of neighbours change too, so widen by one hop for bus p/q columns
    hit = a.labels.loc[ep.start, cols].to_numpy(dtype=bool)
    assert hit.any()
    for k in np.flatnonzero(hit):
        m = series.layout.measurements[k]
        if not touched[k]:
            assert m.element_type == "bus" and m.quantity in ("p_mw", "q_mvar")


def test_replay_copies_an_earlier_period(
    series: GeneratedSeries, attacked: dict[str, AttackedSeries]
) -> None:
    a = attacked["replay"]
    ep = a.episodes[0]
    lag = ep.lag_steps
    assert lag >= ep.stop - ep.start
    cols = series.layout.columns
    hit = a.labels.loc[ep.start, cols].to_numpy(dtype=bool)
    got = a.data.loc[ep.start, cols].to_numpy()[hit]
    assert np.array_equal(got, series.measured[ep.start - lag][hit])


def test_ramp_grows_slowly(series: GeneratedSeries, attacked: dict[str, AttackedSeries]) -> None:
    a = attacked["ramp"]
    ep = a.episodes[0]
    col = next(c for c in series.layout.columns if a.labels.loc[ep.start, c])
    k = series.layout.position(col)
    bias = np.abs(
        a.data[col].to_numpy()[ep.start : ep.stop] - series.measured[ep.start : ep.stop, k]
    )
    assert np.all(np.diff(bias) > 0)
    assert bias[0] < 2 * series.std[k] and bias[-1] >= 4 * series.std[k] * 0.99


def test_stealthy_delta_is_zero_away_from_the_shifted_buses(
    series: GeneratedSeries, model: AcMeasurementModel
) -> None:
    layout = series.layout
    delta = stealthy_delta(model, series.voltages[10], np.array([11]), 2.0, 1.0)
    touching = layout.mask_touching({11})
    neighbours = {b for m in layout.measurements if 11 in m.buses for b in m.buses} - {11}
    assert neighbours  # bus 11 of case14 is connected
    injections = np.array(
        [m.element_type == "bus" and m.bus in neighbours for m in layout.measurements]
    )
    assert np.all(delta[~(touching | injections)] == 0.0)
    branch = [k for k, m in enumerate(layout.measurements) if m.to_bus >= 0 and 11 in m.buses]
    assert np.all(np.abs(delta[branch]) > 0.01)  # every flow into bus 11 was rewritten
    assert delta[layout.position("bus11.vm_pu")] == 0.0  # angle-only shift


def test_attack_rate_and_arguments_are_checked(series: GeneratedSeries) -> None:
    none = inject_attacks(series, rate=0.0, seed=1)
    assert set(none.labels["attack"]) == {"none"} and not none.episodes
    with pytest.raises(ValueError, match="attack rate"):
        inject_attacks(series, rate=1.5, seed=1)
    with pytest.raises(ValueError, match="unknown attack kinds"):
        inject_attacks(series, rate=0.1, seed=1, kinds=("teleport",))


def test_stealthy_attack_on_a_grid_with_open_switches_never_crashes() -> None:
    """Regression: hidden auxiliary buses behind open switches (CIGRE MV) move with their
    bus, each with that bus's own magnitude factor."""
    series = generate_series("cigre_mv", 200, seed=5)
    for seed in range(4):
        attacked = inject_attacks(series, rate=0.4, seed=seed, kinds=("stealthy",))
        assert (attacked.labels["attack"] == "stealthy").any()
