"""The registry of enrolled Ed25519 envelope-signing public keys, in SQLite.

A key is bound to one SPIFFE ID for ever: enrolling the same key for another
identity is refused. Enrolling a new key for an identity *retires* the
identity's older keys (see :meth:`SigningKeyRegistry.retire_other_keys`): after
a site is re-enrolled, a stolen old key must stop verifying. Retired keys are
kept for the record but are invisible to :meth:`~SigningKeyRegistry.lookup`.

Besides loading with ``cryptography`` (which accepts any 32 bytes), a key must
be a canonical encoding of a curve point outside the small-order subgroup:
signatures under a small-order key can verify for many messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security import sqlite_db
from security.envelope import key_id_for
from security.identity import SpiffeId

ED25519_PUBLIC_KEY_LEN = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signing_keys (
    key_id           TEXT    PRIMARY KEY,
    spiffe_id        TEXT    NOT NULL,
    public_key       BLOB    NOT NULL,
    enrolled_ms      INTEGER NOT NULL,
    last_enrolled_ms INTEGER NOT NULL,
    retired_ms       INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS signing_keys_by_identity ON signing_keys (spiffe_id);
CREATE TABLE IF NOT EXISTS signing_keys_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO signing_keys_version (id, version) VALUES (1, 0);
"""
_BUMP_VERSION = "UPDATE signing_keys_version SET version = version + 1 WHERE id = 1"


@dataclass(frozen=True, slots=True)
class EnrolledKey:
    """An active signing key and the identity it belongs to."""

    key_id: str
    spiffe_id: SpiffeId
    public_key: Ed25519PublicKey
    enrolled_ms: int


def load_signing_public_key(public_key_raw: bytes) -> Ed25519PublicKey:
    """Validate and load a raw Ed25519 public key; ValueError says what is wrong."""
    if not isinstance(public_key_raw, bytes):
        raise ValueError("signing public key must be bytes")
    if len(public_key_raw) != ED25519_PUBLIC_KEY_LEN:
        raise ValueError(
            f"signing public key must be {ED25519_PUBLIC_KEY_LEN} raw Ed25519 bytes, "
            f"got {len(public_key_raw)}"
        )
    if _has_small_order_or_is_invalid(public_key_raw):
        raise ValueError("signing public key is not a valid Ed25519 point of large order")
    return Ed25519PublicKey.from_public_bytes(public_key_raw)


class SigningKeyRegistry:
    """Which Ed25519 key belongs to which identity."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = Path(db_path)
        sqlite_db.initialize(self._db_path, _SCHEMA)

    def enroll(self, spiffe_id: SpiffeId, public_key_raw: bytes, now_ms: int) -> str:
        """Bind ``public_key_raw`` to ``spiffe_id``; returns its key id.

        Idempotent for the same identity (and re-activates the key if it was
        retired). ValueError if the key is malformed or bound to another identity.
        """
        if not isinstance(spiffe_id, SpiffeId):
            raise ValueError("spiffe_id must be a SpiffeId")
        load_signing_public_key(public_key_raw)
        key_id = key_id_for(public_key_raw)
        with sqlite_db.write_transaction(self._db_path) as conn:
            row = conn.execute(
                "SELECT spiffe_id FROM signing_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO signing_keys"
                    " (key_id, spiffe_id, public_key, enrolled_ms, last_enrolled_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key_id, spiffe_id.uri, public_key_raw, now_ms, now_ms),
                )
                conn.execute(_BUMP_VERSION)
            elif row[0] != spiffe_id.uri:
                raise ValueError(f"signing key {key_id} is already enrolled for another identity")
            else:
                conn.execute(
                    "UPDATE signing_keys SET last_enrolled_ms = ?, retired_ms = NULL"
                    " WHERE key_id = ?",
                    (now_ms, key_id),
                )
                conn.execute(_BUMP_VERSION)
        return key_id

    def bound_identity(self, public_key_raw: bytes) -> SpiffeId | None:
        """The identity this key is (or was) bound to, retired or not; None if never enrolled."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute(
                "SELECT spiffe_id FROM signing_keys WHERE key_id = ?",
                (key_id_for(public_key_raw),),
            ).fetchone()
        return None if row is None else SpiffeId.parse(row[0])

    def retire_other_keys(self, spiffe_id: SpiffeId, keep_key_id: str, now_ms: int) -> int:
        """Retire every active key of ``spiffe_id`` except ``keep_key_id``; returns how many."""
        with sqlite_db.write_transaction(self._db_path) as conn:
            retired = conn.execute(
                "UPDATE signing_keys SET retired_ms = ?"
                " WHERE spiffe_id = ? AND key_id != ? AND retired_ms IS NULL",
                (now_ms, spiffe_id.uri, keep_key_id),
            ).rowcount
            if retired:
                conn.execute(_BUMP_VERSION)
        return retired

    def current_version(self) -> int:
        """A number that changes whenever the set of active keys may have changed; cheap to poll."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute("SELECT version FROM signing_keys_version WHERE id = 1").fetchone()
        return int(row[0])

    def lookup(self, key_id: str) -> EnrolledKey | None:
        """The active key with this id, or None (unknown or retired)."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute(
                "SELECT key_id, spiffe_id, public_key, enrolled_ms FROM signing_keys"
                " WHERE key_id = ? AND retired_ms IS NULL",
                (key_id,),
            ).fetchone()
        return None if row is None else _enrolled_key(row)

    def all_keys(self) -> list[EnrolledKey]:
        """Every active key, ordered by key id (to build an in-memory cache)."""
        with sqlite_db.connect(self._db_path) as conn:
            rows = conn.execute(
                "SELECT key_id, spiffe_id, public_key, enrolled_ms FROM signing_keys"
                " WHERE retired_ms IS NULL ORDER BY key_id"
            ).fetchall()
        return [_enrolled_key(row) for row in rows]

    def last_enrolled_ms(self, spiffe_id: SpiffeId) -> int | None:
        """When ``spiffe_id`` last enrolled a key [ms], or None if it never did."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute(
                "SELECT MAX(last_enrolled_ms) FROM signing_keys WHERE spiffe_id = ?",
                (spiffe_id.uri,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def _enrolled_key(row: tuple[str, str, bytes, int]) -> EnrolledKey:
    key_id, spiffe_id, raw, enrolled_ms = row
    return EnrolledKey(
        key_id=key_id,
        spiffe_id=SpiffeId.parse(spiffe_id),
        public_key=Ed25519PublicKey.from_public_bytes(bytes(raw)),
        enrolled_ms=enrolled_ms,
    )


# -- Edwards25519 arithmetic for the small-order check (public data only; no secrets) -----------

_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3 point decoding; None if the encoding is not a canonical curve point."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(point: tuple[int, int]) -> tuple[int, int]:
    """Affine doubling on -x^2 + y^2 = 1 + d x^2 y^2 (complete: denominators never vanish)."""
    x, y = point
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, -1, _P) % _P, (y * y + x * x) * pow(1 - t, -1, _P) % _P)


def _has_small_order_or_is_invalid(raw: bytes) -> bool:
    point = _decode_point(raw)
    if point is None:
        return True
    for _ in range(3):  # [8]P is the identity (0, 1) iff P lies in the small-order subgroup
        point = _double(point)
    return point == (0, 1)
