"""Signed forecast models: a round trip, and every kind of bad file refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.forecast.artifacts import (
    ForecastArtifactError,
    ForecastArtifactFault,
    load_forecaster,
    save_forecaster,
)
from control_plane.forecast.evaluate import Scorecard
from control_plane.forecast.features import Series, Target, forecast_starts
from security.envelope import generate_signing_key


@pytest.fixture
def saved(tmp_path: Path, small_scorecard: Scorecard) -> tuple[Path, Ed25519PrivateKey]:
    key = generate_signing_key()
    path = tmp_path / "pv.gfcast"
    save_forecaster(path, small_scorecard.result(Target.PV).forecaster, key)
    return path, key


def test_signed_model_loads_and_forecasts_identically(
    saved: tuple[Path, Ed25519PrivateKey], small_series: Series, small_scorecard: Scorecard
) -> None:
    path, key = saved
    loaded = load_forecaster(path, key.public_key())
    starts = forecast_starts(small_series)[-5:]
    original = small_scorecard.result(Target.PV).forecaster
    np.testing.assert_array_equal(
        loaded.predict(small_series, starts), original.predict(small_series, starts)
    )
    assert loaded.target is Target.PV and loaded.site == original.site


def _refused(path: Path, key: Ed25519PrivateKey) -> ForecastArtifactFault:
    with pytest.raises(ForecastArtifactError) as e:
        load_forecaster(path, key.public_key())
    assert "\n" not in str(e.value)
    return e.value.fault


def test_tampered_model_is_refused(saved: tuple[Path, Ed25519PrivateKey]) -> None:
    path, key = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the weights
    path.write_bytes(bytes(data))
    assert _refused(path, key) is ForecastArtifactFault.BAD_SIGNATURE


def test_unsigned_model_is_refused(
    tmp_path: Path, small_scorecard: Scorecard, saved: tuple[Path, Ed25519PrivateKey]
) -> None:
    _, key = saved
    path = tmp_path / "unsigned.gfcast"
    save_forecaster(path, small_scorecard.result(Target.PV).forecaster, None)
    assert _refused(path, key) is ForecastArtifactFault.UNSIGNED


def test_model_signed_by_another_key_is_refused(saved: tuple[Path, Ed25519PrivateKey]) -> None:
    path, _ = saved
    assert _refused(path, generate_signing_key()) is ForecastArtifactFault.UNTRUSTED_KEY


def test_other_files_are_refused(tmp_path: Path, saved: tuple[Path, Ed25519PrivateKey]) -> None:
    _, key = saved
    junk = tmp_path / "junk.gfcast"
    junk.write_bytes(b"GFMODEL\n" + b"\0" * 64)  # a detector model's magic
    assert _refused(junk, key) is ForecastArtifactFault.NOT_AN_ARTIFACT
    assert _refused(tmp_path / "missing.gfcast", key) is ForecastArtifactFault.UNREADABLE
    data = saved[0].read_bytes()
    cut = tmp_path / "cut.gfcast"
    cut.write_bytes(data[:200])
    assert _refused(cut, key) is ForecastArtifactFault.TRUNCATED
