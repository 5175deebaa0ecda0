"""Replay guard: sequence high-water marks, exact re-sends, freshness window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from security.refusals import Reason, Refusal
from security.replay_guard import DUPLICATE, FRESH, PENDING, ReplayGuard, ReplayPolicy

NOW = 1_800_000_000_000
D1, D2 = b"\x01" * 32, b"\x02" * 32


def guard(
    hwm: dict[str, int] | None = None, committed: dict[tuple[str, int], bytes] | None = None
) -> ReplayGuard:
    store = committed or {}
    return ReplayGuard(ReplayPolicy(), hwm or {}, lambda s, q: store.get((s, q)))


def test_fresh_batch_above_high_water_mark_is_accepted() -> None:
    assert guard({"s1": 5}).check("s1", 6, NOW, D1, NOW) is FRESH


def test_exact_resend_of_committed_batch_is_duplicate() -> None:
    g = guard({"s1": 5}, {("s1", 5): D1})
    assert g.check("s1", 5, NOW - 3_600_000, D1, NOW) is DUPLICATE  # even when old


def test_replayed_batch_with_other_content_is_refused() -> None:
    g = guard({"s1": 5}, {("s1", 5): D1})
    decision = g.check("s1", 5, NOW, D2, NOW)
    assert isinstance(decision, Refusal) and decision.reason is Reason.REPLAYED_SEQUENCE


def test_sequence_going_backwards_is_refused() -> None:
    decision = guard({"s1": 9}, {}).check("s1", 3, NOW, D1, NOW)
    assert isinstance(decision, Refusal) and decision.reason is Reason.REPLAYED_SEQUENCE


def test_stale_and_future_timestamps_are_refused() -> None:
    g = guard()
    stale = g.check("s1", 1, NOW - 36_000, D1, NOW)
    future = g.check("s1", 1, NOW + 6_000, D1, NOW)
    assert isinstance(stale, Refusal) and stale.reason is Reason.STALE_TIMESTAMP
    assert isinstance(future, Refusal) and future.reason is Reason.FUTURE_TIMESTAMP
    assert g.check("s1", 1, NOW - 34_000, D1, NOW) is FRESH  # within window + skew
    assert g.check("s1", 1, NOW + 4_000, D1, NOW) is FRESH


def test_reserved_sequence_resend_is_pending_then_duplicate() -> None:
    committed: dict[tuple[str, int], bytes] = {}
    g = ReplayGuard(ReplayPolicy(), {}, lambda s, q: committed.get((s, q)))
    g.reserve("s1", 1, D1)
    assert g.check("s1", 1, NOW, D1, NOW) is PENDING
    assert isinstance(g.check("s1", 1, NOW, D2, NOW), Refusal)
    committed[("s1", 1)] = D1
    g.commit("s1", 1)
    assert g.check("s1", 1, NOW, D1, NOW) is DUPLICATE
    assert g.high_water_mark("s1") == 1


def test_released_sequence_can_be_used_again() -> None:
    g = guard()
    g.reserve("s1", 1, D1)
    g.release("s1", 1)
    assert g.check("s1", 1, NOW, D2, NOW) is FRESH


def test_failed_commit_below_a_later_committed_batch_can_be_sent_again() -> None:
    """Batch 1's commit fails while batch 2 (another commit group) succeeds: the edge's
    resend of batch 1 must commit, not be refused as a replay and dead-lettered."""
    committed: dict[tuple[str, int], bytes] = {}
    g = ReplayGuard(ReplayPolicy(), {}, lambda s, q: committed.get((s, q)))
    g.reserve("s1", 1, D1)
    g.reserve("s1", 2, D2)
    g.release("s1", 1)  # the store failed batch 1
    committed[("s1", 2)] = D2
    g.commit("s1", 2)
    assert g.check("s1", 1, NOW, D1, NOW) is FRESH
    g.reserve("s1", 1, D1)
    assert g.check("s1", 1, NOW, D1, NOW) is PENDING
    committed[("s1", 1)] = D1
    g.commit("s1", 1)
    assert g.check("s1", 1, NOW, D1, NOW) is DUPLICATE  # and now it is closed
    assert isinstance(g.check("s1", 1, NOW, D2, NOW), Refusal)
    assert g.high_water_mark("s1") == 2


def test_sites_are_independent() -> None:
    g = guard({"s1": 100})
    assert g.check("s2", 1, NOW, D1, NOW) is FRESH


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        ReplayPolicy(window_ms=0)
    with pytest.raises(ValueError):
        ReplayPolicy(window_ms=1000, skew_ms=2000)


@given(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_any_sequence_and_time_gives_a_decision(seq: int, signed_ms: int) -> None:
    decision = guard({"s1": 10}).check("s1", seq, signed_ms, D1, NOW)
    assert decision in (FRESH, DUPLICATE, PENDING) or isinstance(decision, Refusal)
