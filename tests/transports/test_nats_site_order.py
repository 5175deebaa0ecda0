"""Per-site ordering of NATS deliveries before the replay guard (pure)."""

from __future__ import annotations

from control_plane.transports.nats_site_order import SiteOrder


def order(max_held: int = 8, gap_timeout_s: float = 10.0) -> SiteOrder[str]:
    o: SiteOrder[str] = SiteOrder(max_held=max_held, gap_timeout_s=gap_timeout_s)
    o.expected = 1
    return o


def release_all(o: SiteOrder[str], now_s: float = 0.0) -> list[str]:
    out = []
    while (ready := o.pop_ready(now_s)) is not None:
        seq, item = ready
        out.append(item)
        if seq is not None:
            o.done(seq)
    return out


def test_in_order_messages_flow_through() -> None:
    o = order()
    for s in (1, 2, 3):
        assert o.add(s, f"m{s}") is None
    assert release_all(o) == ["m1", "m2", "m3"]
    assert o.expected == 4


def test_a_gap_holds_later_batches_until_the_missing_one_arrives() -> None:
    """The JetStream publish of 2 failed (fail-over); 3 and 4 were stored before its re-send."""
    o = order()
    o.add(1, "m1")
    o.add(3, "m3")
    o.add(4, "m4")
    assert release_all(o, 0.0) == ["m1"]
    assert o.pop_ready(5.0) is None and o.gap_age(5.0) == 5.0
    o.add(2, "m2")  # the edge's re-send
    assert release_all(o, 6.0) == ["m2", "m3", "m4"]
    assert o.gap_age(6.0) == 0.0 and o.gaps_skipped == 0


def test_a_gap_that_never_fills_is_skipped_after_the_timeout() -> None:
    """The edge dead-lettered seq 2 long ago; a restarted worker must not wait forever."""
    o = order(gap_timeout_s=10.0)
    o.add(3, "m3")
    assert o.pop_ready(0.0) is None
    assert o.pop_ready(9.9) is None
    assert o.pop_ready(10.0) == (3, "m3")
    assert o.gaps_skipped == 1


def test_the_store_can_close_a_gap() -> None:
    """Another worker committed 2 (it owned the partition a moment ago)."""
    o = order()
    o.add(3, "m3")
    assert o.pop_ready(0.0) is None
    o.raise_expected(3)
    assert o.pop_ready(0.1) == (3, "m3")


def test_resends_and_duplicates_go_straight_through() -> None:
    o = order()
    o.expected = 10
    o.add(4, "old copy")  # the guard answers it (duplicate or replay)
    o.add(10, "m10")
    o.add(10, "m10 re-signed")
    assert release_all(o) == ["old copy", "m10", "m10 re-signed"]


def test_unordered_messages_first_in_arrival_order() -> None:
    o = order()
    o.add(5, "gap")
    o.add(None, "result-a")
    o.add(None, "result-b")
    assert release_all(o) == ["result-a", "result-b"]
    assert len(o) == 1


def test_over_capacity_the_newest_is_handed_back_but_a_gap_filler_always_gets_in() -> None:
    o = order(max_held=3)
    for s in (2, 3, 4):
        assert o.add(s, f"m{s}") is None
    assert o.add(9, "m9") == "m9"  # a flood's newest message: handed back (nak)
    assert o.add(None, "r") == "r"
    assert o.add(1, "m1") == "m4"  # the missing one gets in, the newest held one goes
    assert release_all(o) == ["m1", "m2", "m3"]


def test_drain_hands_back_everything() -> None:
    o = order()
    o.add(3, "m3")
    o.add(None, "r")
    assert sorted(o.drain()) == ["m3", "r"]
    assert len(o) == 0
