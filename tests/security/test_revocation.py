"""Revocation: time-based semantics, snapshots and change detection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from security.clock import ManualClock
from security.identity import Role, SpiffeId
from security.revocation import Revocation, RevocationList, RevocationSnapshot

T0_MS = 1_900_000_000_000
SITE_1 = SpiffeId("grid.example", Role.EDGE, "site-1")
SITE_2 = SpiffeId("grid.example", Role.EDGE, "site-2")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def revocations(tmp_path: Path, clock: ManualClock) -> RevocationList:
    return RevocationList(tmp_path / "revocations.db", clock)


def test_nothing_is_revoked_at_first(revocations: RevocationList) -> None:
    assert not revocations.is_revoked(SITE_1, T0_MS)
    assert revocations.current_version() == 0
    assert revocations.snapshot() == RevocationSnapshot(version=0)
    assert revocations.latest_revocation_ms(SITE_1) is None


@pytest.mark.parametrize(
    ("cert_not_before_offset_ms", "revoked"),
    [(-3_600_000, True), (-1, True), (0, True), (1, False), (3_600_000, False)],
)
def test_revocation_kills_certificates_issued_up_to_the_revocation(
    revocations: RevocationList,
    clock: ManualClock,
    cert_not_before_offset_ms: int,
    revoked: bool,
) -> None:
    clock.advance(10_000)
    revoked_at_ms = revocations.revoke(SITE_1, "stolen gateway")
    assert revoked_at_ms == T0_MS + 10_000
    not_before_ms = revoked_at_ms + cert_not_before_offset_ms
    assert revocations.is_revoked(SITE_1, not_before_ms) is revoked
    assert revocations.snapshot().is_revoked(SITE_1, not_before_ms) is revoked
    assert not revocations.is_revoked(SITE_2, not_before_ms)


def test_latest_revocation_wins(revocations: RevocationList, clock: ManualClock) -> None:
    revocations.revoke(SITE_1, "first")
    clock.advance(60_000)
    second = revocations.revoke(SITE_1, "again")
    assert revocations.latest_revocation_ms(SITE_1) == second
    assert revocations.is_revoked(SITE_1, T0_MS + 30_000)
    assert revocations.snapshot().latest_revocation_ms[SITE_1] == second


def test_version_changes_exactly_when_the_list_changes(
    revocations: RevocationList, clock: ManualClock
) -> None:
    v0 = revocations.current_version()
    assert revocations.current_version() == v0
    revocations.revoke(SITE_1, "x")
    v1 = revocations.current_version()
    assert v1 != v0
    assert revocations.current_version() == v1 == revocations.snapshot().version
    revocations.revoke(SITE_1, "y")  # same identity again still changes the version
    assert revocations.current_version() not in (v0, v1)


def test_snapshot_is_immutable_and_detached(revocations: RevocationList) -> None:
    revocations.revoke(SITE_1, "x")
    snap = revocations.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.version = 99  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.latest_revocation_ms[SITE_2] = 1  # type: ignore[index]
    revocations.revoke(SITE_2, "y")
    assert not snap.is_revoked(SITE_2, 0)
    assert revocations.snapshot().is_revoked(SITE_2, 0)


def test_other_instances_see_revocations(tmp_path: Path, clock: ManualClock) -> None:
    writer = RevocationList(tmp_path / "r.db", clock)
    reader = RevocationList(tmp_path / "r.db", clock)
    before = reader.current_version()
    writer.revoke(SITE_1, "x")
    assert reader.current_version() != before
    assert reader.is_revoked(SITE_1, T0_MS)


def test_entries(revocations: RevocationList, clock: ManualClock) -> None:
    revocations.revoke(SITE_1, "a")
    clock.advance(5)
    revocations.revoke(SITE_2, "b")
    assert revocations.entries() == [
        Revocation(SITE_1, T0_MS, "a"),
        Revocation(SITE_2, T0_MS + 5, "b"),
    ]


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1025])
def test_reason_is_required_and_bounded(revocations: RevocationList, reason: str) -> None:
    with pytest.raises(ValueError):
        revocations.revoke(SITE_1, reason)
