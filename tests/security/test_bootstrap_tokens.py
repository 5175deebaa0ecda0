"""One-time bootstrap tokens: format, storage, expiry, site binding and single use under races."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from security.bootstrap_tokens import BootstrapTokens, PendingToken, is_well_formed, token_id
from security.clock import ManualClock
from security.refusals import Reason, RefusedError

T0_MS = 1_900_000_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def tokens(tmp_path: Path, clock: ManualClock) -> BootstrapTokens:
    return BootstrapTokens(tmp_path / "tokens.db", clock)


def _reason(call: object, *args: str) -> Reason:
    assert callable(call)
    with pytest.raises(RefusedError) as info:
        call(*args)
    return info.value.refusal.reason


def test_token_format(tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    assert token.startswith("gft1_")
    assert len(token) == 5 + 43
    assert is_well_formed(token)
    assert tokens.issue("site-1") != token


def test_only_the_hash_is_stored(tmp_path: Path, tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    with sqlite3.connect(tmp_path / "tokens.db") as conn:
        rows = conn.execute("SELECT * FROM bootstrap_tokens").fetchall()
    assert len(rows) == 1
    assert bytes(rows[0][0]) == hashlib.sha256(token.encode()).digest()
    assert token not in repr(rows)
    for path in tmp_path.iterdir():
        assert token.encode() not in path.read_bytes()
        assert token.encode()[5:] not in path.read_bytes()


def test_database_is_owner_only(tmp_path: Path, tokens: BootstrapTokens) -> None:
    assert stat.S_IMODE((tmp_path / "tokens.db").stat().st_mode) == 0o600


def test_token_redeems_once(tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    tokens.redeem(token, "site-1")


def test_reused_token_is_refused(tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    tokens.redeem(token, "site-1")
    assert _reason(tokens.redeem, token, "site-1") is Reason.TOKEN_ALREADY_USED
    assert _reason(tokens.check, token, "site-1") is Reason.TOKEN_ALREADY_USED


def test_expired_token_is_refused(tokens: BootstrapTokens, clock: ManualClock) -> None:
    token = tokens.issue("site-1", ttl_s=60)
    clock.advance(60_000)  # expiry is exclusive: at expires_ms the token is dead
    assert _reason(tokens.redeem, token, "site-1") is Reason.TOKEN_EXPIRED
    assert _reason(tokens.check, token, "site-1") is Reason.TOKEN_EXPIRED


def test_token_valid_until_just_before_expiry(tokens: BootstrapTokens, clock: ManualClock) -> None:
    token = tokens.issue("site-1", ttl_s=60)
    clock.advance(59_999)
    tokens.redeem(token, "site-1")


def test_token_for_wrong_site_is_refused_and_not_burned(tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    with pytest.raises(RefusedError) as info:
        tokens.redeem(token, "site-2")
    refusal = info.value.refusal
    assert refusal.reason is Reason.TOKEN_WRONG_SITE
    assert refusal.details == {"token_id": token_id(token), "site_id": "site-2"}
    assert token not in str(info.value) and token not in repr(refusal)
    tokens.redeem(token, "site-1")  # still good for its own site


@pytest.mark.parametrize(
    "presented",
    ["", "gft1_", "gft1_" + "A" * 42, "gft1_" + "A" * 44, "gft2_" + "A" * 43, "x" * 100_000],
)
def test_malformed_token_is_unknown(tokens: BootstrapTokens, presented: str) -> None:
    tokens.issue("site-1")
    assert _reason(tokens.redeem, presented, "site-1") is Reason.TOKEN_UNKNOWN
    assert _reason(tokens.check, presented, "site-1") is Reason.TOKEN_UNKNOWN


def test_forged_token_is_unknown(tokens: BootstrapTokens) -> None:
    real = tokens.issue("site-1")
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    assert _reason(tokens.redeem, forged, "site-1") is Reason.TOKEN_UNKNOWN
    tokens.redeem(real, "site-1")


def test_check_does_not_burn(tokens: BootstrapTokens) -> None:
    token = tokens.issue("site-1")
    tokens.check(token, "site-1")
    tokens.check(token, "site-1")
    tokens.redeem(token, "site-1")


def test_tokens_survive_reopening(tmp_path: Path, clock: ManualClock) -> None:
    token = BootstrapTokens(tmp_path / "tokens.db", clock).issue("site-1")
    BootstrapTokens(tmp_path / "tokens.db", clock).redeem(token, "site-1")
    reopened = BootstrapTokens(tmp_path / "tokens.db", clock)
    assert _reason(reopened.redeem, token, "site-1") is Reason.TOKEN_ALREADY_USED


def test_list_pending(tokens: BootstrapTokens, clock: ManualClock) -> None:
    used = tokens.issue("site-1")
    tokens.issue("site-2", ttl_s=10)
    clock.advance(1)
    pending = tokens.issue("site-3")
    tokens.redeem(used, "site-1")
    clock.advance(10_000)
    assert tokens.list_pending() == [
        PendingToken(token_id(pending), "site-3", T0_MS + 1, T0_MS + 1 + 3_600_000)
    ]


@pytest.mark.parametrize("site_id", ["", "../x", "a/b", "a" * 65])
def test_issue_rejects_bad_site_ids(tokens: BootstrapTokens, site_id: str) -> None:
    with pytest.raises(ValueError):
        tokens.issue(site_id)


@pytest.mark.parametrize("ttl_s", [0, -1])
def test_issue_rejects_bad_ttl(tokens: BootstrapTokens, ttl_s: int) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        tokens.issue("site-1", ttl_s=ttl_s)


# -- races ---------------------------------------------------------------------------------------

ROUNDS = 10


def _redeem_all(db_path: str, token_list: list[str], barrier: object) -> list[tuple[str, str]]:
    """Try every token once, starting together with the other racers; return (token, outcome)."""
    racer = BootstrapTokens(Path(db_path), ManualClock(T0_MS))
    outcomes = []
    for token in token_list:
        barrier.wait()  # type: ignore[attr-defined]
        try:
            racer.redeem(token, "site-1")
        except RefusedError as e:
            outcomes.append((token, e.refusal.reason.value))
        else:
            outcomes.append((token, "won"))
    return outcomes


def _process_racer(db_path: str, token_list: list[str], barrier: object, out: object) -> None:
    out.put(_redeem_all(db_path, token_list, barrier))  # type: ignore[attr-defined]


def _race_in_threads(db_path: str, token_list: list[str]) -> list[list[tuple[str, str]]]:
    racers = 8
    barrier = threading.Barrier(racers)
    results: list[list[tuple[str, str]]] = []
    lock = threading.Lock()

    def run() -> None:
        outcomes = _redeem_all(db_path, token_list, barrier)
        with lock:
            results.append(outcomes)

    threads = [threading.Thread(target=run) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def _race_in_processes(db_path: str, token_list: list[str]) -> list[list[tuple[str, str]]]:
    ctx = multiprocessing.get_context("spawn")
    racers = 2
    barrier = ctx.Barrier(racers)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_racer, args=(db_path, token_list, barrier, out))
        for _ in range(racers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize(
    "race", [_race_in_threads, _race_in_processes], ids=["threads", "processes"]
)
def test_concurrent_redemption_has_one_winner(
    tmp_path: Path, tokens: BootstrapTokens, race: object
) -> None:
    token_list = [tokens.issue("site-1") for _ in range(ROUNDS)]
    assert callable(race)
    results = race(str(tmp_path / "tokens.db"), token_list)
    assert len(results) >= 2
    for token in token_list:
        outcomes = sorted(outcome for racer in results for t, outcome in racer if t == token)
        assert outcomes.count("won") == 1, outcomes
        assert set(outcomes) == {"won", "TOKEN_ALREADY_USED"}
