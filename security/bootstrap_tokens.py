"""One-time bootstrap tokens that let a new edge site enrol.

A token is ``gft1_`` + 32 random bytes in unpadded URL-safe base64 (48
characters in all). Only its SHA-256 is stored, with the site it is for, when
it was created, when it expires and when it was used. Redemption is a single
``UPDATE ... WHERE token_hash=? AND used_ms IS NULL ...`` whose row count
decides the winner, so exactly one of any number of concurrent redeemers (in
threads or processes) succeeds. Lookups go by hash, so timing reveals at most
something about a hash, never about a token. All times are epoch ms [ms].
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from security import sqlite_db
from security.clock import Clock
from security.identity import validate_name
from security.refusals import Reason, Refusal, RefusedError

TOKEN_PREFIX = "gft1_"  # noqa: S105 - a format prefix, not a secret
TOKEN_RANDOM_BYTES = 32
_TOKEN_RE = re.compile(r"gft1_[A-Za-z0-9_-]{43}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bootstrap_tokens (
    token_hash BLOB PRIMARY KEY,
    site_id    TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms    INTEGER
) WITHOUT ROWID;
"""


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def is_well_formed(token: str) -> bool:
    """True if ``token`` has the shape of a Gridfort bootstrap token."""
    return isinstance(token, str) and _TOKEN_RE.fullmatch(token) is not None


def token_id(token: str) -> str:
    """A short, non-secret handle for a token (first 8 bytes of its SHA-256, hex), for logs.

    Returns ``"malformed"`` for anything that is not shaped like a token.
    """
    if not is_well_formed(token):
        return "malformed"
    return _token_hash(token)[:8].hex()


@dataclass(frozen=True, slots=True)
class PendingToken:
    """A token issued but neither used nor expired (the token itself is never stored)."""

    token_id: str
    site_id: str
    created_ms: int
    expires_ms: int


class BootstrapTokens:
    """Issues and redeems one-time enrollment tokens, stored (as hashes) in SQLite."""

    def __init__(self, db_path: Path, clock: Clock) -> None:
        self._db_path = Path(db_path)
        self._clock = clock
        sqlite_db.initialize(self._db_path, _SCHEMA)

    def issue(self, site_id: str, ttl_s: int = 3600) -> str:
        """A new token for ``site_id``, valid ``ttl_s`` [s]. Shown once; only its hash is kept."""
        validate_name(site_id)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError(f"ttl_s must be an integer >= 1, got {ttl_s!r}")
        token = TOKEN_PREFIX + base64.urlsafe_b64encode(
            secrets.token_bytes(TOKEN_RANDOM_BYTES)
        ).decode("ascii").rstrip("=")
        now_ms = self._clock.now_ms()
        with sqlite_db.connect(self._db_path) as conn:
            conn.execute(
                "INSERT INTO bootstrap_tokens (token_hash, site_id, created_ms, expires_ms)"
                " VALUES (?, ?, ?, ?)",
                (_token_hash(token), site_id, now_ms, now_ms + ttl_s * 1000),
            )
        return token

    def check(self, token: str, site_id: str) -> None:
        """Raise the RefusedError :meth:`redeem` would raise now, without using the token.

        Lets a caller validate the rest of a request before it spends the token.
        A successful check does not reserve the token: only :meth:`redeem` decides.
        """
        now_ms = self._clock.now_ms()
        with sqlite_db.connect(self._db_path) as conn:
            row = self._lookup(conn, token)
        refusal = _refusal_for(row, token, site_id, now_ms)
        if refusal is not None:
            raise RefusedError(refusal)

    def redeem(self, token: str, site_id: str) -> None:
        """Use ``token`` for ``site_id``, once. Raises RefusedError with a TOKEN_* reason.

        A token presented for the wrong site is refused and stays usable.
        """
        now_ms = self._clock.now_ms()
        if not is_well_formed(token):
            raise RefusedError(_refusal(Reason.TOKEN_UNKNOWN, "unknown token", token, site_id))
        with sqlite_db.connect(self._db_path) as conn:
            cur = conn.execute(
                "UPDATE bootstrap_tokens SET used_ms = ?"
                " WHERE token_hash = ? AND used_ms IS NULL AND site_id = ? AND expires_ms > ?",
                (now_ms, _token_hash(token), site_id, now_ms),
            )
            if cur.rowcount == 1:
                return
            row = self._lookup(conn, token)
        # Lost: say why. If the row looks redeemable now, someone else won between our
        # UPDATE and this SELECT, so it is used.
        refusal = _refusal_for(row, token, site_id, now_ms) or _refusal(
            Reason.TOKEN_ALREADY_USED, "token was already used", token, site_id
        )
        raise RefusedError(refusal)

    def list_pending(self) -> list[PendingToken]:
        """Tokens that can still be redeemed, oldest first."""
        now_ms = self._clock.now_ms()
        with sqlite_db.connect(self._db_path) as conn:
            rows = conn.execute(
                "SELECT token_hash, site_id, created_ms, expires_ms FROM bootstrap_tokens"
                " WHERE used_ms IS NULL AND expires_ms > ? ORDER BY created_ms, site_id",
                (now_ms,),
            ).fetchall()
        return [PendingToken(bytes(h)[:8].hex(), s, c, e) for h, s, c, e in rows]

    @staticmethod
    def _lookup(conn: sqlite3.Connection, token: str) -> tuple[str, int, int | None] | None:
        if not is_well_formed(token):
            return None
        row = conn.execute(
            "SELECT site_id, expires_ms, used_ms FROM bootstrap_tokens WHERE token_hash = ?",
            (_token_hash(token),),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])


def _refusal(reason: Reason, message: str, token: str, site_id: str) -> Refusal:
    return Refusal(
        reason, message, details={"token_id": token_id(token), "site_id": str(site_id)[:64]}
    )


def _refusal_for(
    row: tuple[str, int, int | None] | None, token: str, site_id: str, now_ms: int
) -> Refusal | None:
    if row is None:
        return _refusal(Reason.TOKEN_UNKNOWN, "unknown token", token, site_id)
    stored_site_id, expires_ms, used_ms = row
    if used_ms is not None:
        return _refusal(Reason.TOKEN_ALREADY_USED, "token was already used", token, site_id)
    if now_ms >= expires_ms:
        return _refusal(Reason.TOKEN_EXPIRED, "token has expired", token, site_id)
    if stored_site_id != site_id:
        message = "token was issued for another site"
        return _refusal(Reason.TOKEN_WRONG_SITE, message, token, site_id)
    return None
