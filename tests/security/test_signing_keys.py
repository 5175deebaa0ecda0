"""The registry of enrolled Ed25519 envelope-signing keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.identity import Role, SpiffeId
from security.signing_keys import (
    EnrolledKey,
    SigningKeyRegistry,
    key_id_for,
    load_signing_public_key,
)

T0_MS = 1_900_000_000_000
SITE_1 = SpiffeId("grid.example", Role.EDGE, "site-1")
SITE_2 = SpiffeId("grid.example", Role.EDGE, "site-2")

# Small-order points of Edwards25519 (the ones libsodium refuses) and a non-canonical encoding.
WEAK_KEYS = {
    "identity": bytes([1]) + bytes(31),
    "order-4 (all zero)": bytes(32),
    "order-2": bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    "order-8 a": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "order-8 b": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "non-canonical y >= p": bytes.fromhex(
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
    ),
}


def _raw() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes_raw()


@pytest.fixture
def registry(tmp_path: Path) -> SigningKeyRegistry:
    return SigningKeyRegistry(tmp_path / "keys.db")


def test_key_id_is_truncated_sha256() -> None:
    raw = bytes(range(32))
    assert key_id_for(raw) == hashlib.sha256(raw).digest()[:16].hex()
    assert len(key_id_for(raw)) == 32


def test_enroll_and_lookup(registry: SigningKeyRegistry) -> None:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes_raw()
    key_id = registry.enroll(SITE_1, raw, T0_MS)
    assert key_id == key_id_for(raw)
    found = registry.lookup(key_id)
    assert isinstance(found, EnrolledKey)
    assert (found.key_id, found.spiffe_id, found.enrolled_ms) == (key_id, SITE_1, T0_MS)
    found.public_key.verify(private.sign(b"m"), b"m")
    assert registry.lookup("00" * 16) is None
    assert [k.key_id for k in registry.all_keys()] == [key_id]


def test_enroll_is_idempotent_for_the_same_identity(registry: SigningKeyRegistry) -> None:
    raw = _raw()
    assert registry.enroll(SITE_1, raw, T0_MS) == registry.enroll(SITE_1, raw, T0_MS + 5)
    assert len(registry.all_keys()) == 1
    found = registry.lookup(key_id_for(raw))
    assert found is not None and found.enrolled_ms == T0_MS
    assert registry.last_enrolled_ms(SITE_1) == T0_MS + 5


def test_key_cannot_be_rebound_to_another_identity(registry: SigningKeyRegistry) -> None:
    raw = _raw()
    registry.enroll(SITE_1, raw, T0_MS)
    with pytest.raises(ValueError, match="already enrolled for another identity"):
        registry.enroll(SITE_2, raw, T0_MS + 1)
    found = registry.lookup(key_id_for(raw))
    assert found is not None and found.spiffe_id == SITE_1
    assert registry.bound_identity(raw) == SITE_1


def test_retired_key_cannot_be_rebound_either(registry: SigningKeyRegistry) -> None:
    old, new = _raw(), _raw()
    registry.enroll(SITE_1, old, T0_MS)
    registry.enroll(SITE_1, new, T0_MS + 1)
    assert registry.retire_other_keys(SITE_1, key_id_for(new), T0_MS + 1) == 1
    with pytest.raises(ValueError, match="another identity"):
        registry.enroll(SITE_2, old, T0_MS + 2)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_length_is_refused(registry: SigningKeyRegistry, length: int) -> None:
    with pytest.raises(ValueError, match="32 raw Ed25519 bytes"):
        registry.enroll(SITE_1, bytes([9]) * length, T0_MS)


@pytest.mark.parametrize("name", list(WEAK_KEYS))
def test_small_order_or_invalid_key_is_refused(registry: SigningKeyRegistry, name: str) -> None:
    with pytest.raises(ValueError, match="not a valid Ed25519 point"):
        registry.enroll(SITE_1, WEAK_KEYS[name], T0_MS)
    assert registry.all_keys() == []


def test_generated_keys_load() -> None:
    for _ in range(20):
        load_signing_public_key(_raw())


def test_non_bytes_key_is_refused(registry: SigningKeyRegistry) -> None:
    with pytest.raises(ValueError, match="must be bytes"):
        registry.enroll(SITE_1, "a" * 32, T0_MS)  # type: ignore[arg-type]


def test_retire_other_keys(registry: SigningKeyRegistry) -> None:
    old, new, other_site = _raw(), _raw(), _raw()
    registry.enroll(SITE_1, old, T0_MS)
    registry.enroll(SITE_2, other_site, T0_MS)
    new_id = registry.enroll(SITE_1, new, T0_MS + 1)
    assert registry.retire_other_keys(SITE_1, new_id, T0_MS + 1) == 1
    assert registry.lookup(key_id_for(old)) is None
    assert registry.lookup(new_id) is not None
    assert registry.lookup(key_id_for(other_site)) is not None
    assert {k.key_id for k in registry.all_keys()} == {new_id, key_id_for(other_site)}
    # enrolling a retired key again for its own identity re-activates it
    registry.enroll(SITE_1, old, T0_MS + 2)
    assert registry.lookup(key_id_for(old)) is not None


def test_registry_is_shared_through_the_database(tmp_path: Path) -> None:
    raw = _raw()
    SigningKeyRegistry(tmp_path / "keys.db").enroll(SITE_1, raw, T0_MS)
    other = SigningKeyRegistry(tmp_path / "keys.db")
    assert [k.key_id for k in other.all_keys()] == [key_id_for(raw)]
    assert other.last_enrolled_ms(SITE_1) == T0_MS
    assert other.last_enrolled_ms(SITE_2) is None


def test_version_changes_when_active_keys_change(registry: SigningKeyRegistry) -> None:
    v0 = registry.current_version()
    old = _raw()
    registry.enroll(SITE_1, old, T0_MS)
    v1 = registry.current_version()
    assert v1 != v0
    new_id = registry.enroll(SITE_1, _raw(), T0_MS + 1)
    v2 = registry.current_version()
    assert v2 not in (v0, v1)
    registry.retire_other_keys(SITE_1, new_id, T0_MS + 2)
    v3 = registry.current_version()
    assert v3 not in (v0, v1, v2)
    registry.retire_other_keys(SITE_1, new_id, T0_MS + 3)  # nothing left to retire
    assert registry.current_version() == v3
