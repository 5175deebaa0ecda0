"""Rotation timing and validity windows, as pure functions of the certificate and now."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from security.ca import CertificateAuthority
from security.clock import ManualClock
from security.identity import Role, SpiffeId
from security.rotation import (
    certificate_valid_at,
    not_after_ms,
    not_before_ms,
    rotation_due_ms,
    should_rotate,
)

T0_MS = 1_900_000_000_000
EDGE = SpiffeId("grid.example", Role.EDGE, "site-1")


@pytest.fixture
def cert(tmp_path: Path) -> x509.Certificate:
    ca = CertificateAuthority.init(tmp_path / "ca", "grid.example", ManualClock(T0_MS))
    return ca.issue_with_new_key(EDGE, ttl_s=3600)[1].certificate


def test_times_in_ms(cert: x509.Certificate) -> None:
    assert not_before_ms(cert) == T0_MS
    assert not_after_ms(cert) == T0_MS + 3_600_000


@pytest.mark.parametrize(
    ("fraction", "due_ms"),
    [(0.5, T0_MS + 1_800_000), (0.8, T0_MS + 2_880_000), (1.0, T0_MS + 3_600_000)],
)
def test_rotation_due_is_a_fraction_of_the_lifetime(
    cert: x509.Certificate, fraction: float, due_ms: int
) -> None:
    assert rotation_due_ms(cert, fraction) == due_ms


def test_should_rotate_from_the_due_time_on(cert: x509.Certificate) -> None:
    due = rotation_due_ms(cert)
    assert not should_rotate(cert, T0_MS)
    assert not should_rotate(cert, due - 1)
    assert should_rotate(cert, due)
    assert should_rotate(cert, T0_MS + 10 * 3_600_000)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, float("nan")])
def test_fraction_must_be_in_unit_interval(cert: x509.Certificate, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        rotation_due_ms(cert, fraction)


@pytest.mark.parametrize(
    ("offset_ms", "valid"),
    [(-1, False), (0, True), (1_800_000, True), (3_600_000, True), (3_600_001, False)],
)
def test_validity_window_is_inclusive(cert: x509.Certificate, offset_ms: int, valid: bool) -> None:
    assert certificate_valid_at(cert, T0_MS + offset_ms) is valid
