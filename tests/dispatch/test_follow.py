"""Does a site follow? The pure judgement: deviation, tolerance, grace, acknowledgement."""

from __future__ import annotations

import pytest

from control_plane.dispatch.follow import (
    FollowPolicy,
    Observation,
    Reading,
    SiteFollow,
    Verdict,
    asset_deviation_kw,
    judge,
    observe,
    tolerance_kw,
)
from control_plane.dispatch.plan_setpoints import Expected

POLICY = FollowPolicy(
    tolerance_kw=0.5, tolerance_pct=10.0, grace_ms=60_000, settle_ms=5_000, max_age_ms=30_000
)
BAT = Expected("b1", "s1", "setpoint", 4.0)
PV = Expected("p1", "s1", "cap", 2.0)
SENT = 1_000_000


def test_a_setpoint_counts_both_ways_a_cap_only_excess() -> None:
    assert asset_deviation_kw(BAT, 3.0) == 1.0
    assert asset_deviation_kw(BAT, 5.5) == 1.5
    assert asset_deviation_kw(PV, 1.0) == 0.0  # clouds are not disobedience
    assert asset_deviation_kw(PV, 2.75) == 0.75
    load = Expected("l1", "s1", "draw_limit", -2.0)  # import at most 2 kW
    assert asset_deviation_kw(load, -0.5) == 0.0  # a hot tank draws less: it follows
    assert asset_deviation_kw(load, -2.6) == pytest.approx(0.6)  # drawing more does not


def test_tolerance_is_the_larger_of_absolute_and_relative() -> None:
    assert tolerance_kw(POLICY, [BAT]) == 0.5
    assert tolerance_kw(POLICY, [Expected("b", "s", "setpoint", -20.0), PV]) == 2.0


def fresh(p_kw: float, suspect: bool = False) -> Reading:
    return Reading(p_kw, SENT + 10_000, suspect)


@pytest.mark.parametrize(
    ("readings", "why"),
    [
        ({"b1": None, "p1": fresh(1.0)}, "no gated active power for b1"),
        ({"b1": fresh(4.0, suspect=True), "p1": fresh(1.0)}, "b1 is suspect"),
        ({"b1": Reading(4.0, SENT + 1_000), "p1": fresh(1.0)}, "no settled, fresh value"),
        ({"b1": Reading(4.0, SENT + 6_000), "p1": fresh(1.0)}, None),
    ],
)
def test_a_site_is_judged_only_on_settled_fresh_unsuspected_values(
    readings: dict[str, Reading | None], why: str | None
) -> None:
    obs = observe(POLICY, [BAT, PV], readings, since_ms=SENT, now_ms=SENT + 20_000)
    if why is None:
        assert obs.unobservable == "" and obs.deviation_kw == 0.0
    else:
        assert why in obs.unobservable


def test_stale_values_make_a_site_unobservable() -> None:
    obs = observe(POLICY, [BAT], {"b1": fresh(4.0)}, since_ms=SENT, now_ms=SENT + 50_000)
    assert "fresh" in obs.unobservable


def test_a_site_is_flagged_only_after_the_grace_period() -> None:
    off = Observation(deviation_kw=2.0, tolerance_kw=0.5)
    ok = Observation(deviation_kw=0.2, tolerance_kw=0.5)
    t = SENT + 10_000
    state = judge(POLICY, SiteFollow(), off, acked=True, sent_ms=SENT, now_ms=t)
    assert state == SiteFollow(t, Verdict.DEVIATING)
    state = judge(POLICY, state, off, acked=True, sent_ms=SENT, now_ms=t + 60_000)
    assert state.verdict is Verdict.DEVIATING  # exactly the grace period: not yet
    state = judge(POLICY, state, off, acked=True, sent_ms=SENT, now_ms=t + 60_001)
    assert state == SiteFollow(t, Verdict.NOT_FOLLOWING)
    state = judge(POLICY, state, ok, acked=True, sent_ms=SENT, now_ms=t + 70_000)
    assert state == SiteFollow(None, Verdict.FOLLOWING)
    # a gap in observability does not reset the clock of an ongoing deviation
    state = judge(POLICY, SiteFollow(t, Verdict.DEVIATING), Observation(0, 0, "suspect"),
                  acked=True, sent_ms=SENT, now_ms=t + 1)  # fmt: skip
    assert state == SiteFollow(t, Verdict.UNOBSERVABLE)


def test_a_site_that_does_not_answer_is_flagged_after_the_ack_timeout() -> None:
    state = judge(POLICY, SiteFollow(), None, acked=False, sent_ms=SENT, now_ms=SENT + 10_000)
    assert state.verdict is Verdict.AWAITING
    state = judge(POLICY, state, None, acked=False, sent_ms=SENT, now_ms=SENT + 10_001)
    assert state.verdict is Verdict.NO_ACK


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        FollowPolicy(tolerance_kw=-1.0)
    with pytest.raises(ValueError):
        FollowPolicy(grace_ms=-1)
