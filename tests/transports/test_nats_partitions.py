"""Partition assignment among ingest workers (pure)."""

from __future__ import annotations

import pytest

from control_plane.transports.nats_partitions import (
    WorkerMembership,
    assign_partitions,
    my_partitions,
)


def test_every_partition_has_exactly_one_worker_and_loads_are_balanced() -> None:
    for n_workers in range(1, 6):
        workers = [f"w{i}" for i in range(n_workers)]
        assignment = assign_partitions(8, workers)
        owned = [p for ps in assignment.values() for p in ps]
        assert sorted(owned) == list(range(8))  # each once
        assert max(len(ps) for ps in assignment.values()) <= -(-8 // n_workers)


def test_every_worker_computes_the_same_assignment() -> None:
    assert assign_partitions(16, ["b", "a", "c"]) == assign_partitions(16, ["c", "b", "a", "a"])


def test_a_new_worker_takes_partitions_without_reshuffling_everything() -> None:
    before = assign_partitions(64, ["a", "b"])
    after = assign_partitions(64, ["a", "b", "c"])
    moved = sum(len(before[w] - after[w]) for w in ("a", "b"))
    assert len(after["c"]) >= 21
    assert moved <= len(after["c"]) + 2  # mostly just what the newcomer takes


def test_no_workers_no_assignment() -> None:
    assert assign_partitions(4, []) == {}
    with pytest.raises(ValueError):
        assign_partitions(0, ["a"])


def test_membership_expires_silent_workers_and_forgets_leavers_at_once() -> None:
    m = WorkerMembership("me", ttl_s=2.0)
    assert m.alive(0.0) == ("me",)
    m.heard("other", 1.0)
    m.heard("third", 1.0)
    assert m.alive(2.5) == ("me", "other", "third")
    m.heard("other", 2.5)
    assert m.alive(3.5) == ("me", "other")  # third silent for 2.5 s
    m.left("other")
    assert m.alive(3.6) == ("me",)
    assert my_partitions(4, m, 3.6) == frozenset({0, 1, 2, 3})


def test_a_late_heartbeat_does_not_move_the_clock_back() -> None:
    m = WorkerMembership("me", ttl_s=1.0)
    m.heard("w", 5.0)
    m.heard("w", 4.0)  # reordered delivery
    assert m.alive(5.9) == ("me", "w")
