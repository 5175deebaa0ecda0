"""The OpenADR service: gated opt-in decisions, audited refusals of hostile events,
persistence across a restart, config validation, and the mapping onto optimizer steps."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.config import ControlPlaneConfig
from control_plane.markets.openadr_planning import (
    STEP_MS,
    demand_response_for,
    steps_covered,
)
from control_plane.markets.openadr_service import OpenAdrConfig, OpenAdrService
from control_plane.markets.openadr_ven import OPT_IN, OPT_OUT, FleetConstraint
from control_plane.optimizer.assets import STEPS, Battery
from control_plane.optimizer.assets import FleetState as OptimizerFleet
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.schedule import schedule
from control_plane.state import FleetState
from security.audit_log import AuditLog
from security.clock import ManualClock
from security.refusals import ConfigError
from tests.markets.conftest import audit_records
from tests.markets.gated_fleet import SOC, P, battery, gated_batch

NOW_MS = int(datetime(2026, 6, 1, 6, 0, tzinfo=UTC).timestamp() * 1000)
DAY_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
B1 = battery("b1")  # 2000 kW, 1000 kWh at site-1
CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def event(
    event_id: str = "evt-1",
    *,
    signal: tuple[str, str] = ("LOAD_DISPATCH", "delta"),
    payloads: tuple[float, ...] = (-300.0,),
    start_ms: int = DAY_MS + 8 * 3_600_000,  # 08:00, two hours ahead
    duration: timedelta = timedelta(minutes=30),
    status: str = "far",
    modification: int = 0,
    extra_signals: int = 0,
) -> dict[str, Any]:
    """An event in openleadr's dict form, one interval per payload."""
    intervals = [
        {
            "dtstart": at(start_ms) + k * duration,
            "duration": duration,
            "signal_payload": v,
        }
        for k, v in enumerate(payloads)
    ]
    sig = {"signal_name": signal[0], "signal_type": signal[1], "intervals": intervals}
    return {
        "event_descriptor": {
            "event_id": event_id,
            "event_status": status,
            "modification_number": modification,
        },
        "event_signals": [sig] * (1 + extra_signals),
    }


def gated(soc_pct: float = 50.0, p_kw: float = -100.0, *, quarantine: bool = False) -> FleetState:
    """b1 at ``soc_pct`` [%], drawing ``-p_kw`` [kW], sampled now; optionally quarantined."""
    state = FleetState()
    bad = [("b1", SOC, NOW_MS, 99.0)] if quarantine else []
    rows = [("b1", SOC, NOW_MS, soc_pct), ("b1", P, NOW_MS, p_kw)]
    state.apply(gated_batch([B1], rows, bad, now_ms=NOW_MS))
    return state


CONFIG = OpenAdrConfig(vtn_url="http://127.0.0.1:8080/OpenADR2/Simple/2.0b", ven_name="gridfort")


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl", ManualClock(NOW_MS))
    yield log
    log.close()


def service(tmp_path: Path, audit: AuditLog, state: FleetState | None = None) -> OpenAdrService:
    return OpenAdrService(
        CONFIG,
        db_path=tmp_path / "openadr.db",
        state=state or gated(),
        assets=lambda: [B1],
        audit=audit,
        clock=ManualClock(NOW_MS),
    )


def decisions(tmp_path: Path) -> list[dict[str, Any]]:
    return [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "openadr.event"]


# -- accepted events ------------------------------------------------------------------------------


def test_event_within_gated_flexibility_is_accepted_audited_and_planned(
    tmp_path: Path, audit: AuditLog
) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event()) == OPT_IN
    (rec,) = decisions(tmp_path)
    assert rec["decision"] == "allow"
    assert rec["details"]["event_id"] == "evt-1" and rec["details"]["opt"] == OPT_IN
    assert rec["details"]["baseline_import_kw"] == 100.0  # b1 draws 100 kW now
    # 50 % SOC: 380 kWh usable, over the 0.5-h event: 760 kW verified.
    assert rec["details"]["verified_up_kw"] == pytest.approx(760.0)
    (dr,) = svc.active_constraints(DAY_MS)
    assert (dr.event_id, dr.start_step, dr.end_step) == ("evt-1", 32, 34)
    assert dr.import_max_kw == (-200.0, -200.0)  # baseline 100 kW - 300 kW reduction
    # The plan with the cap meets it; the same plan without it would not.
    fleet = OptimizerFleet(batteries=(Battery("b1", "site-1", 1000.0, 2000.0, 50.0),))
    energy = [60.0] * STEPS
    energy[30:36] = [1.0] * 6  # cheapest around the event: an unconstrained plan charges
    prices = MarketPrices(tuple(energy), (0.0,) * 6)
    with_dr = dataclasses.replace(fleet, demand_response=(dr,))
    plan = schedule(with_dr, prices, CONTINUOUS, time_limit_s=20)
    assert check_plan(with_dr, plan, CONTINUOUS) == []
    free = schedule(fleet, prices, CONTINUOUS, time_limit_s=20)
    assert "demand_response.import_max_kw" in {
        v.constraint for v in check_plan(with_dr, free, CONTINUOUS)
    }


def test_simple_level_is_a_share_of_gated_flexibility(tmp_path: Path, audit: AuditLog) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event(signal=("SIMPLE", "level"), payloads=(3.0,))) == OPT_IN
    (a,) = svc.store.all()
    assert a.constraint.reduce_load_kw == pytest.approx(760.0)


def test_level_zero_is_accepted_without_a_constraint(tmp_path: Path, audit: AuditLog) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event(signal=("SIMPLE", "level"), payloads=(0.0,))) == OPT_IN
    assert svc.active_constraints(DAY_MS) == ()


# -- refusals -------------------------------------------------------------------------------------


def test_event_above_gated_flexibility_is_opted_out_and_audited(
    tmp_path: Path, audit: AuditLog
) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event(payloads=(-5000.0,))) == OPT_OUT
    (rec,) = decisions(tmp_path)
    assert (rec["decision"], rec["reason"]) == ("deny", "ABOVE_VERIFIED_FLEXIBILITY")
    assert rec["details"]["available_kw"] == pytest.approx(760.0)
    assert svc.active_constraints(DAY_MS) == ()


def test_quarantined_battery_offers_no_reduction(tmp_path: Path, audit: AuditLog) -> None:
    svc = service(tmp_path, audit, gated(quarantine=True))
    assert svc.handle_event(event(payloads=(-10.0,))) == OPT_OUT
    (rec,) = decisions(tmp_path)
    assert rec["reason"] == "ABOVE_VERIFIED_FLEXIBILITY" and rec["details"]["suspect"] == 1


def test_overlapping_events_do_not_sell_the_same_flexibility_twice(
    tmp_path: Path, audit: AuditLog
) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event("evt-a", payloads=(-500.0,))) == OPT_IN
    assert svc.handle_event(event("evt-b", payloads=(-500.0,))) == OPT_OUT  # 760 - 500 left
    later = DAY_MS + 10 * 3_600_000
    assert svc.handle_event(event("evt-c", payloads=(-500.0,), start_ms=later)) == OPT_IN


def _naive(ev: dict[str, Any]) -> dict[str, Any]:
    ev["event_signals"][0]["intervals"][0]["dtstart"] = datetime(2026, 6, 1, 8)
    return ev


def _bad_duration(ev: dict[str, Any]) -> dict[str, Any]:
    ev["event_signals"][0]["intervals"][0]["duration"] = "PT1H"
    return ev


HOSTILE: dict[str, tuple[object, str]] = {
    "missing_descriptor": ({"event_signals": []}, "MALFORMED_EVENT"),
    "not_a_mapping": (["event"], "MALFORMED_EVENT"),
    "nan_payload": (event(payloads=(math.nan,)), "MALFORMED_EVENT"),
    "infinite_payload": (event(payloads=(-math.inf,)), "MALFORMED_EVENT"),
    "naive_time": (_naive(event()), "MALFORMED_EVENT"),
    "duration_not_a_duration": (_bad_duration(event()), "MALFORMED_EVENT"),
    "zero_duration": (event(duration=timedelta(0)), "MALFORMED_EVENT"),
    "injection_in_event_id": (event("x'; DROP TABLE openadr_constraints;--"), "MALFORMED_EVENT"),
    "huge_event_id": (event("e" * 10_000), "MALFORMED_EVENT"),
    "unknown_signal": (event(signal=("ELECTRICITY_PRICE", "price")), "UNSUPPORTED_SIGNAL"),
    "two_signals": (event(extra_signals=1), "UNSUPPORTED_SIGNAL"),
    "level_out_of_range": (event(signal=("SIMPLE", "level"), payloads=(7.0,)), "VALUE_OUT_OF_RANGE"),
    "negative_level": (event(signal=("SIMPLE", "level"), payloads=(-1.0,)), "VALUE_OUT_OF_RANGE"),
    "fractional_level": (event(signal=("SIMPLE", "level"), payloads=(1.5,)), "VALUE_OUT_OF_RANGE"),
    "load_increase": (event(payloads=(+300.0,)), "VALUE_OUT_OF_RANGE"),
    "huge_reduction": (event(payloads=(-1e12,)), "VALUE_OUT_OF_RANGE"),
    "window_in_past": (event(start_ms=NOW_MS - 3_600_000), "WINDOW_IN_PAST"),
    "window_years_ahead": (event(start_ms=NOW_MS + 400 * 86_400_000), "WINDOW_TOO_FAR"),
    "window_absurdly_long": (event(duration=timedelta(days=30)), "WINDOW_TOO_LONG"),
    "too_many_intervals": (event(payloads=(-1.0,) * 200, duration=timedelta(minutes=1)), "MALFORMED_EVENT"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_event_is_refused_and_audited(name: str, tmp_path: Path, audit: AuditLog) -> None:
    raw, reason = HOSTILE[name]
    svc = service(tmp_path, audit)
    assert svc.handle_event(raw) == OPT_OUT  # type: ignore[arg-type]  # hostile: any shape
    (rec,) = decisions(tmp_path)
    assert (rec["decision"], rec["reason"]) == ("deny", reason), rec["details"]
    assert rec["details"]["message"]
    assert svc.store.all() == []


def test_unauditable_decision_is_an_opt_out(tmp_path: Path, audit: AuditLog) -> None:
    svc = service(tmp_path, audit)
    audit.close()  # every append now fails: nothing may be committed unrecorded
    assert svc.handle_event(event()) == OPT_OUT
    assert svc.store.all() == []


def test_modification_and_cancellation_update_the_stored_constraint(
    tmp_path: Path, audit: AuditLog
) -> None:
    svc = service(tmp_path, audit)
    assert svc.handle_event(event()) == OPT_IN
    assert svc.handle_event(event(payloads=(-400.0,), modification=1)) == OPT_IN
    (a,) = svc.store.all()
    assert (a.constraint.reduce_load_kw, a.modification_number) == (400.0, 1)
    assert svc.handle_event(event(payloads=(-9000.0,), modification=2)) == OPT_OUT
    assert svc.store.all() == []
    assert svc.handle_event(event()) == OPT_IN
    assert svc.handle_event(event(status="cancelled", modification=3)) == OPT_OUT
    assert svc.active_constraints(DAY_MS) == ()


def test_restart_keeps_accepted_constraints(tmp_path: Path, audit: AuditLog) -> None:
    first = service(tmp_path, audit)
    assert first.handle_event(event()) == OPT_IN
    before = first.active_constraints(DAY_MS)
    again = service(tmp_path, audit, gated(p_kw=+500.0))  # different state: same caps
    assert again.active_constraints(DAY_MS) == before != ()


# -- mapping onto optimizer steps -----------------------------------------------------------------


def test_steps_cover_partial_quarter_hours_and_ignore_the_outside() -> None:
    assert steps_covered(DAY_MS, DAY_MS + STEP_MS, DAY_MS) == (0, 1)
    assert steps_covered(DAY_MS + 60_000, DAY_MS + STEP_MS + 60_000, DAY_MS) == (0, 2)
    assert steps_covered(DAY_MS - 3_600_000, DAY_MS + 60_000, DAY_MS) == (0, 1)
    assert steps_covered(DAY_MS + 95 * STEP_MS, DAY_MS + 100 * STEP_MS, DAY_MS) == (95, 96)
    assert steps_covered(DAY_MS + 96 * STEP_MS, DAY_MS + 97 * STEP_MS, DAY_MS) is None
    assert steps_covered(DAY_MS - STEP_MS, DAY_MS, DAY_MS) is None
    c = FleetConstraint("e", DAY_MS + 7 * STEP_MS + 1, DAY_MS + 9 * STEP_MS, 50.0)
    dr = demand_response_for(c, DAY_MS, baseline_import_kw=20.0, site_ids=frozenset({"s1"}))
    assert dr is not None
    assert (dr.start_step, dr.import_max_kw, dr.site_ids) == (7, (-30.0, -30.0), frozenset({"s1"}))
    assert demand_response_for(c, DAY_MS + 86_400_000, baseline_import_kw=0.0) is None


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"ven_name": "g"}, "openadr.vtn_url"),
        ({"vtn_url": "https://vtn.example/OpenADR2"}, "openadr.ven_name"),
        ({"vtn_url": "http://vtn.example/x", "ven_name": "g"}, "openadr.vtn_url"),
        ({"vtn_url": "ftp://127.0.0.1/x", "ven_name": "g"}, "openadr.vtn_url"),
        ({"vtn_url": "https://v/x", "ven_name": "bad name"}, "openadr.ven_name"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "report_interval_s": 0}, "report_interval_s"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "poll_interval_s": math.nan}, "poll_interval"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "max_event_h": 1e9}, "max_event_h"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "tls_cert": "c.pem"}, "tls_cert"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "vtn_fingerprint": "zz"}, "vtn_fingerprint"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "site_ids": "s1"}, "site_ids"),
        ({"vtn_url": "https://v/x", "ven_name": "g", "colour": "red"}, "colour"),
    ],
)
def test_bad_config_names_the_field(raw: dict[str, Any], field: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=field):
        OpenAdrConfig.from_mapping(raw, tmp_path)


def test_config_section_of_the_control_plane(tmp_path: Path) -> None:
    (tmp_path / "ven.pem").write_text("cert")
    (tmp_path / "ven.key").write_text("key")
    cfg = ControlPlaneConfig.from_mapping(
        {
            "state_dir": "state",
            "openadr": {
                "vtn_url": "https://vtn.utility.example/OpenADR2/Simple/2.0b",
                "ven_name": "gridfort",
                "tls_cert": "ven.pem",
                "tls_key": "ven.key",
                "vtn_fingerprint": "AB:CD:EF:01:23:45:67:89:AB:CD",
                "poll_interval_s": 10,
                "site_ids": ["s1", "s2"],
            },
        },
        tmp_path,
    )
    assert cfg.openadr is not None
    opts = cfg.openadr.client_options()
    assert opts["cert"] == str(tmp_path / "ven.pem") and opts["vtn_fingerprint"].startswith("AB")
    assert cfg.openadr.site_ids == ("s1", "s2")
    assert ControlPlaneConfig.from_mapping({"state_dir": "s"}, tmp_path).openadr is None
