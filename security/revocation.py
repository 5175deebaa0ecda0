"""Revocation of identities, in SQLite, with an immutable in-memory snapshot for the hot path.

Semantics: revoking an identity at ``revoked_at_ms`` kills every certificate of
that identity whose ``notBefore`` is at or before that instant::

    revoked(cert) <=> exists revocation r of cert's identity with r.revoked_at_ms >= notBefore

Certificates issued *after* the revocation (a re-enrollment with a new token)
are valid again. Because X.509 stores whole seconds and the CA rounds
``notBefore`` down, a certificate issued in the same second as a revocation
counts as revoked: the comparison errs on the side of refusing.

Revocations are append-only; :meth:`RevocationList.current_version` is the
highest revocation row id, which changes on every revocation and costs one
indexed read, so a poller can rebuild its snapshot only when it changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from security import sqlite_db
from security.clock import Clock
from security.identity import SpiffeId

MAX_REASON_LEN = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    spiffe_id     TEXT    NOT NULL,
    revoked_at_ms INTEGER NOT NULL,
    reason        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_identity ON revocations (spiffe_id, revoked_at_ms);
"""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation, as recorded."""

    spiffe_id: SpiffeId
    revoked_at_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """The revocation list at one version, in memory; safe to share between threads."""

    version: int
    latest_revocation_ms: Mapping[SpiffeId, int] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def is_revoked(self, spiffe_id: SpiffeId, cert_not_before_ms: int) -> bool:
        """True if a certificate of ``spiffe_id`` with this ``notBefore`` [ms] is revoked."""
        revoked_at_ms = self.latest_revocation_ms.get(spiffe_id)
        return revoked_at_ms is not None and revoked_at_ms >= cert_not_before_ms


class RevocationList:
    """The durable list of revoked identities."""

    def __init__(self, db_path: Path, clock: Clock) -> None:
        self._db_path = Path(db_path)
        self._clock = clock
        sqlite_db.initialize(self._db_path, _SCHEMA)

    def revoke(self, spiffe_id: SpiffeId, reason: str) -> int:
        """Revoke every current certificate of ``spiffe_id``; returns revoked_at_ms [ms]."""
        if not isinstance(spiffe_id, SpiffeId):
            raise ValueError("spiffe_id must be a SpiffeId")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a revocation needs a reason")
        if len(reason) > MAX_REASON_LEN:
            raise ValueError(f"revocation reason is longer than {MAX_REASON_LEN} characters")
        revoked_at_ms = self._clock.now_ms()
        with sqlite_db.connect(self._db_path) as conn:
            conn.execute(
                "INSERT INTO revocations (spiffe_id, revoked_at_ms, reason) VALUES (?, ?, ?)",
                (spiffe_id.uri, revoked_at_ms, reason),
            )
        return revoked_at_ms

    def is_revoked(self, spiffe_id: SpiffeId, cert_not_before_ms: int) -> bool:
        """True if a certificate of ``spiffe_id`` with this ``notBefore`` [ms] is revoked."""
        latest = self.latest_revocation_ms(spiffe_id)
        return latest is not None and latest >= cert_not_before_ms

    def latest_revocation_ms(self, spiffe_id: SpiffeId) -> int | None:
        """When ``spiffe_id`` was last revoked [ms], or None if never."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute(
                "SELECT MAX(revoked_at_ms) FROM revocations WHERE spiffe_id = ?",
                (spiffe_id.uri,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def current_version(self) -> int:
        """A number that changes whenever the list changes (0 while it is empty)."""
        with sqlite_db.connect(self._db_path) as conn:
            row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM revocations").fetchone()
        return int(row[0])

    def snapshot(self) -> RevocationSnapshot:
        """The whole list, consistent at one version, as an immutable in-memory object."""
        with sqlite_db.read_transaction(self._db_path) as conn:
            version = conn.execute("SELECT COALESCE(MAX(id), 0) FROM revocations").fetchone()[0]
            rows = conn.execute(
                "SELECT spiffe_id, MAX(revoked_at_ms) FROM revocations GROUP BY spiffe_id"
            ).fetchall()
        latest = {SpiffeId.parse(uri): int(ts) for uri, ts in rows}
        return RevocationSnapshot(
            version=int(version), latest_revocation_ms=MappingProxyType(latest)
        )

    def entries(self) -> list[Revocation]:
        """Every revocation, oldest first (for operators)."""
        with sqlite_db.connect(self._db_path) as conn:
            rows = conn.execute(
                "SELECT spiffe_id, revoked_at_ms, reason FROM revocations ORDER BY id"
            ).fetchall()
        return [Revocation(SpiffeId.parse(uri), ts, reason) for uri, ts, reason in rows]
