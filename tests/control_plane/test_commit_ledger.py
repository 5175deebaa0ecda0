"""Commit ledger: which batches this process committed (the store follower skips them)."""

from __future__ import annotations

import pytest

from control_plane.store.commit_ledger import CommitLedger


def test_a_committed_batch_is_own_a_failed_or_duplicate_one_is_not() -> None:
    ledger = CommitLedger()
    ledger.begin("s1", 1)
    ledger.begin("s1", 2)
    assert ledger.is_pending("s1", 1) and not ledger.is_own("s1", 1)
    ledger.settle("s1", 1, committed=True)
    ledger.settle("s1", 2, committed=False)  # failed, or another process committed it
    assert ledger.is_own("s1", 1) and not ledger.is_pending("s1", 1)
    assert not ledger.is_own("s1", 2) and not ledger.is_pending("s1", 2)


def test_own_batches_are_forgotten_through_a_checkpoint() -> None:
    ledger = CommitLedger()
    for seq in (1, 2):
        ledger.begin("s1", seq)
        ledger.settle("s1", seq, committed=True)
    mark = ledger.checkpoint()
    ledger.begin("s1", 3)
    ledger.settle("s1", 3, committed=True)
    ledger.forget_through(mark)
    assert not ledger.is_own("s1", 1) and not ledger.is_own("s1", 2)
    assert ledger.is_own("s1", 3) and ledger.own_count == 1


def test_the_ledger_is_bounded_and_counts_what_it_evicts() -> None:
    ledger = CommitLedger(max_own=2)
    for seq in (1, 2, 3):
        ledger.begin("s1", seq)
        ledger.settle("s1", seq, committed=True)
    assert ledger.own_count == 2 and ledger.evicted == 1 and not ledger.is_own("s1", 1)
    with pytest.raises(ValueError):
        CommitLedger(max_own=0)
