"""The FDI gate's temporal judge: storage energy balance and energy counters, over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from control_plane.assets.model import Asset, AssetKind
from control_plane.gate.gate import FdiGate
from control_plane.gate.state_file import load_levels, save_levels
from control_plane.gate.temporal import TemporalJudge
from control_plane.ingest.types import (
    AuthorizedBatch,
    GatedBatch,
    Peer,
    ValidatedBatch,
    VerifiedBatch,
)
from control_plane.state import FleetState
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.identity import Role, SpiffeId
from security.refusals import Reason

Q = tpb.Quantity
P, SOC, EXP, CONN = (
    Q.QUANTITY_ACTIVE_POWER,
    Q.QUANTITY_STATE_OF_CHARGE,
    Q.QUANTITY_ENERGY_EXPORTED,
    Q.QUANTITY_EV_CONNECTED,
)
T0 = 1_800_000_000_000
BAT = Asset("s1-bat", "s1", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0)
PV = Asset("s1-pv", "s1", AssetKind.PV_INVERTER, rated_p_kw=10.0)
EV = Asset("s1-ev", "s1", AssetKind.EV_CHARGER, rated_p_kw=11.0, e_kwh=60.0)
ASSETS = {a.asset_id: a for a in (BAT, PV, EV)}

Row = tuple[str, int, int, float]


def validated(rows: Sequence[Row], seq: int = 1) -> ValidatedBatch:
    batch = tpb.TelemetryBatch(site_id="s1", seq=seq, sealed_ms=max(r[2] for r in rows))
    peer = Peer(SpiffeId("gridfort.test", Role.EDGE, "s1"), 1, 0, 2**62)
    verified = VerifiedBatch(peer, epb.SignedEnvelope(), batch, b"d" * 32, T0)
    return ValidatedBatch(AuthorizedBatch(verified, ASSETS), list(rows), list(range(len(rows))), [])


def battery_samples(
    t_start_s: int, n: int, p_kw: float, soc0: float, step_s: int = 10, eta: float = 0.95
) -> tuple[list[Row], float]:
    """Physically consistent samples of a battery (export positive), SOC with 0.1 % resolution."""
    rows: list[Row] = []
    soc = soc0
    for k in range(n):
        t = T0 + (t_start_s + k * step_s) * 1000
        if k:
            e = p_kw * step_s / 3600  # kWh exported this step
            soc -= 100 * (e / eta if e > 0 else e * eta) / BAT.e_kwh
        rows += [("s1-bat", P, t, p_kw), ("s1-bat", SOC, t, round(soc, 1))]
    return rows, soc


def quarantined(gated: GatedBatch) -> list[tuple[str, int, Reason]]:
    return [(q.asset_id, q.quantity, q.reason) for q in gated.quarantined]


def test_honest_battery_with_efficiency_and_steps_is_accepted() -> None:
    gate = FdiGate(TemporalJudge())
    t, soc, seq = 0, 40.0, 1
    for p in (-4.0, 0.0, 3.5, -5.0, 5.0, 0.0, -2.0):  # commanded steps, each for 2 minutes
        rows, soc = battery_samples(t, 13, p, soc)
        gated = gate.judge(validated(rows, seq))
        assert quarantined(gated) == [], (p, gated.quarantined[:1])
        t, seq = t + 130, seq + 1


def test_soc_jump_is_quarantined_with_evidence_and_the_anchor_stays_honest() -> None:
    gate = FdiGate(TemporalJudge())
    rows, soc = battery_samples(0, 13, -4.0, 40.0)
    assert quarantined(gate.judge(validated(rows))) == []
    # The gateway now reports a battery 25 %-points fuller than it is (to sell flexibility).
    t = T0 + 130_000
    gated = gate.judge(validated([("s1-bat", P, t, -4.0), ("s1-bat", SOC, t, soc + 25)], 2))
    assert quarantined(gated) == [("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)]
    ev = gated.quarantined[0].evidence
    assert ev is not None and ev.detector == "temporal:soc_balance"
    assert ev.score > ev.threshold and "state of charge" in ev.detail
    assert gated.accepted == [("s1-bat", P, t, -4.0)]  # the power is the grid's to doubt
    # The lie persists for 3 minutes (past the gap and re-anchor limits): refused every time.
    for k in range(1, 19):
        t = T0 + 130_000 + k * 10_000
        gated = gate.judge(validated([("s1-bat", P, t, 0.0), ("s1-bat", SOC, t, soc + 25)], 2 + k))
        assert quarantined(gated) == [("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)]
    # The honest value is accepted again.
    t += 10_000
    gated = gate.judge(validated([("s1-bat", P, t, 0.0), ("s1-bat", SOC, t, round(soc, 1))], 99))
    assert quarantined(gated) == []


def test_slow_soc_drift_is_caught_within_minutes() -> None:
    gate = FdiGate(TemporalJudge())
    rows, _ = battery_samples(0, 13, 0.0, 50.0)
    gate.judge(validated(rows))
    caught_at = None
    for k in range(1, 120):  # +0.02 %-points per 10 s on an idle battery
        t = T0 + 120_000 + k * 10_000
        rows = [("s1-bat", P, t, 0.0), ("s1-bat", SOC, t, round(50.0 + 0.02 * k, 2))]
        if quarantined(gate.judge(validated(rows, k + 1))):
            caught_at = k
            break
    # Re-anchoring every 5 minutes bounds integration error; the price: drifts slower than
    # soc_abs_tol_pct per reanchor period (0.1 %-point/min) pass. This one is 0.12 %/min.
    assert caught_at is not None and caught_at * 10 <= 10 * 60  # within 10 minutes


def test_energy_counter_that_decreases_or_outruns_the_power_is_quarantined() -> None:
    gate = FdiGate(TemporalJudge())
    rows: list[Row] = []
    e = 1000.0
    for k in range(13):  # 6 kW for 2 minutes: +0.2 kWh
        t = T0 + k * 10_000
        rows += [("s1-pv", P, t, 6.0), ("s1-pv", EXP, t, round(e, 3))]
        e += 6.0 * 10 / 3600
    assert quarantined(gate.judge(validated(rows))) == []
    t = T0 + 130_000
    gated = gate.judge(validated([("s1-pv", P, t, 6.0), ("s1-pv", EXP, t, 990.0)], 2))
    assert quarantined(gated) == [("s1-pv", EXP, Reason.FDI_TEMPORAL_INCONSISTENT)]
    t += 10_000  # claims 5 kWh exported in 10 s by a 10 kW plant
    gated = gate.judge(validated([("s1-pv", P, t, 6.0), ("s1-pv", EXP, t, e + 5.0)], 3))
    assert quarantined(gated) == [("s1-pv", EXP, Reason.FDI_TEMPORAL_INCONSISTENT)]


def test_ev_soc_is_not_judged_without_a_vehicle_and_a_new_vehicle_re_anchors() -> None:
    gate = FdiGate(TemporalJudge())
    t = T0
    rows = [("s1-ev", CONN, t, 1.0), ("s1-ev", P, t, -11.0), ("s1-ev", SOC, t, 30.0)]
    assert quarantined(gate.judge(validated(rows))) == []
    t += 10_000  # the car leaves; the charger reports a stale SOC
    rows = [("s1-ev", CONN, t, 0.0), ("s1-ev", P, t, 0.0), ("s1-ev", SOC, t, 30.0)]
    assert quarantined(gate.judge(validated(rows, 2))) == []
    t += 10_000  # another car arrives at 70 %
    rows = [("s1-ev", CONN, t, 1.0), ("s1-ev", P, t, -11.0), ("s1-ev", SOC, t, 70.0)]
    assert quarantined(gate.judge(validated(rows, 3))) == []


def test_fleet_state_holds_only_gated_values_and_marks_the_asset_suspect() -> None:
    gate, state = FdiGate(TemporalJudge()), FleetState()
    rows, soc = battery_samples(0, 13, -4.0, 40.0)
    state.apply(gate.judge(validated(rows)))
    t = T0 + 130_000
    state.apply(gate.judge(validated([("s1-bat", P, t, -4.0), ("s1-bat", SOC, t, 95.0)], 2)))
    latest = state.get("s1-bat", SOC)
    assert latest is not None and latest.value == round(soc, 1)  # the last honest sample
    assert state.is_suspect("s1-bat", t + 60_000)
    assert not state.is_suspect("s1-bat", t + state.suspect_hold_ms + 1)
    assert not state.is_suspect("s1-pv", t)


def test_gate_keeps_validation_quarantine_and_orders_by_index() -> None:
    gate = FdiGate(TemporalJudge())
    rows, _ = battery_samples(0, 3, 0.0, 50.0)
    v = validated(rows)
    gated = gate.judge(v)
    assert gated.accepted == rows and gated.gate_version == "temporal-1"
    assert gate.stats.batches == 1 and gate.stats.measurements_judged == len(rows)


def test_a_lie_sent_again_at_the_same_or_an_older_time_is_still_quarantined() -> None:
    """The balance is checked against time: a sample not after the last one judged must not
    slip through unchecked (a new batch carrying an old timestamp)."""
    gate = FdiGate(TemporalJudge())
    rows, soc = battery_samples(0, 13, -4.0, 40.0)
    gate.judge(validated(rows))
    t = T0 + 130_000
    lie = [("s1-bat", P, t, -4.0), ("s1-bat", SOC, t, soc + 25)]
    assert quarantined(gate.judge(validated(lie, 2))) == [
        ("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)
    ]
    again = gate.judge(validated(lie, 3))  # same sample time, new batch
    assert quarantined(again) == [("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)]
    ev = again.quarantined[0].evidence
    assert ev is not None and ev.detector == "temporal:sample_order"
    older = [("s1-bat", P, t - 5_000, -4.0), ("s1-bat", SOC, t - 5_000, soc + 25)]
    assert quarantined(gate.judge(validated(older, 4))) == [
        ("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)
    ]


def test_an_exact_resend_of_an_accepted_sample_is_accepted() -> None:
    gate = FdiGate(TemporalJudge())
    rows, _ = battery_samples(0, 13, -4.0, 40.0)
    gate.judge(validated(rows))
    assert quarantined(gate.judge(validated(rows[-2:], 2))) == []  # e.g. after a failed commit


def test_a_level_without_the_power_sampled_with_it_is_quarantined() -> None:
    """Default deny: a SOC or a counter reported alone cannot be checked by the balance,
    so a gateway that drops the power to dodge the check gains nothing."""
    gate = FdiGate(TemporalJudge())
    rows, soc = battery_samples(0, 7, -4.0, 40.0)
    assert quarantined(gate.judge(validated(rows))) == []
    t = T0 + 70_000
    alone = [("s1-bat", SOC, t, soc + 30), ("s1-pv", EXP, t, 12.5), ("s1-pv", P, t + 1, 3.0)]
    gated = gate.judge(validated(alone, 2))
    assert quarantined(gated) == [
        ("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT),
        ("s1-pv", EXP, Reason.FDI_TEMPORAL_INCONSISTENT),
    ]
    assert {q.evidence.detector for q in gated.quarantined if q.evidence} == {
        "temporal:level_without_power"
    }
    assert [r[1] for r in gated.accepted] == [P]  # the power alone is accepted


def test_an_ev_soc_alone_is_refused_only_while_a_vehicle_is_plugged_in() -> None:
    gate = FdiGate(TemporalJudge())
    t = T0
    unplugged = [("s1-ev", CONN, t, 0.0), ("s1-ev", SOC, t, 0.0)]
    assert quarantined(gate.judge(validated(unplugged))) == []  # its SOC means nothing
    plugged = [("s1-ev", CONN, t + 1000, 1.0), ("s1-ev", SOC, t + 1000, 55.0)]
    assert quarantined(gate.judge(validated(plugged, 2))) == [
        ("s1-ev", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)
    ]


def test_going_silent_does_not_buy_a_free_re_anchor() -> None:
    """After a gap the power in between is unknown; the SOC may still have moved no more
    than the 5 kW rating allows (10 kWh: 1 %-point per 72 s at full power)."""
    gate = FdiGate(TemporalJudge())
    rows, soc = battery_samples(0, 7, -4.0, 40.0)
    gate.judge(validated(rows))
    t = T0 + 60_000 + 120_000  # two minutes of silence after the last sample
    lie = [("s1-bat", P, t, 0.0), ("s1-bat", SOC, t, soc + 30)]
    gated = gate.judge(validated(lie, 2))
    assert quarantined(gated) == [("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)]
    ev = gated.quarantined[0].evidence
    assert ev is not None and ev.detector == "temporal:reachable"
    honest = [("s1-bat", P, t + 1000, 0.0), ("s1-bat", SOC, t + 1000, soc + 1.5)]
    assert quarantined(gate.judge(validated(honest, 3))) == []  # reachable at 5 kW in 2 min
    # and the honest level is the new anchor: the balance holds again from there
    follow = [("s1-bat", P, t + 11_000, 0.0), ("s1-bat", SOC, t + 11_000, soc + 1.5)]
    assert quarantined(gate.judge(validated(follow, 4))) == []


def test_a_restart_restores_the_last_levels_so_the_first_sample_is_judged(
    tmp_path: Path,
) -> None:
    before = FdiGate(TemporalJudge())
    rows, soc = battery_samples(0, 7, -4.0, 40.0)
    before.judge(validated(rows))
    db = tmp_path / "gate_state.db"
    assert save_levels(db, before.temporal.export_levels()) == 1
    after = FdiGate(TemporalJudge())  # a new process
    assert after.temporal.restore_levels(load_levels(db)) == 1
    t = T0 + 90_000  # 30 s after the last sample, across the restart
    lie = [("s1-bat", P, t, -4.0), ("s1-bat", SOC, t, soc + 30)]
    assert quarantined(after.judge(validated(lie))) == [
        ("s1-bat", SOC, Reason.FDI_TEMPORAL_INCONSISTENT)
    ]
    fresh = FdiGate(TemporalJudge())  # without the file: the lie would be the anchor
    assert quarantined(fresh.judge(validated(lie))) == []


def test_an_unreadable_gate_state_file_costs_only_the_protection(tmp_path: Path) -> None:
    db = tmp_path / "gate_state.db"
    db.write_bytes(b"not a database at all" * 100)
    assert load_levels(db) == []
    assert load_levels(tmp_path / "missing.db") == []
