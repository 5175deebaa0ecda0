"""End to end against a real openleadr VTN on loopback: the VTN sends events, the service
opts in on gated flexibility (or refuses), reports the fleet's gated import, and the accepted
event reaches the optimizer as a cap that the exact and the aggregated plans satisfy."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control_plane.markets.openadr_planning import STEP_MS
from control_plane.markets.openadr_service import OpenAdrConfig, OpenAdrService
from control_plane.markets.openadr_ven import OPT_IN, OPT_OUT, received_values
from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import STEPS, Battery
from control_plane.optimizer.assets import FleetState as OptimizerFleet
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.schedule import schedule
from control_plane.state import FleetState
from security.audit_log import AuditLog
from security.clock import SystemClock
from tests.markets.conftest import audit_records
from tests.markets.gated_fleet import SOC, P, battery, gated_batch

pytestmark = pytest.mark.timeout(60)
CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_vtn_event_becomes_a_cap_the_plans_satisfy(tmp_path: Path) -> None:
    from openleadr import OpenADRServer

    clock = SystemClock()
    now_ms = clock.now_ms()
    b1, b2 = battery("b1"), battery("b2")  # 2000 kW, 1000 kWh each, site-1
    state = FleetState()
    rows = [
        ("b1", SOC, now_ms, 50.0),
        ("b1", P, now_ms, -100.0),
        ("b2", SOC, now_ms, 50.0),
        ("b2", P, now_ms, 0.0),
    ]
    state.apply(gated_batch([b1, b2], rows, now_ms=now_ms))
    port = free_port()
    loop = asyncio.get_running_loop()
    opts: dict[str, asyncio.Future[str]] = {
        "evt-dr": loop.create_future(),
        "evt-price": loop.create_future(),
    }
    reported: asyncio.Future[list[float]] = loop.create_future()

    def on_create_party_registration(info: dict[str, Any]) -> tuple[str, str]:
        return "ven-gridfort", "reg-1"

    async def on_report(data: list[tuple[datetime, float]]) -> None:
        if not reported.done():
            reported.set_result(received_values(data))

    def on_register_report(
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Any, timedelta]:
        return on_report, timedelta(seconds=1)

    def on_event_response(ven_id: str, event_id: str, opt_type: str) -> None:
        if not opts[event_id].done():
            opts[event_id].set_result(opt_type)

    vtn = OpenADRServer(
        vtn_id="vtn-test",
        http_host="127.0.0.1",
        http_port=port,
        requested_poll_freq=timedelta(seconds=1),
        show_fingerprint=False,
        verify_message_signatures=False,
    )
    vtn.add_handler("on_create_party_registration", on_create_party_registration)
    vtn.add_handler("on_register_report", on_register_report)
    start = datetime.fromtimestamp(now_ms / 1000, UTC) + timedelta(minutes=20)
    window = [{"dtstart": start, "duration": timedelta(minutes=30), "signal_payload": -600.0}]
    vtn.add_event(
        ven_id="ven-gridfort",
        event_id="evt-dr",
        signal_name="LOAD_DISPATCH",
        signal_type="delta",
        intervals=window,
        callback=on_event_response,
    )
    vtn.add_event(
        ven_id="ven-gridfort",
        event_id="evt-price",
        signal_name="ELECTRICITY_PRICE",
        signal_type="price",
        intervals=[{**window[0], "signal_payload": 0.3}],
        callback=on_event_response,
    )
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    config = OpenAdrConfig(
        vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        ven_name="gridfort",
        ven_id="ven-gridfort",
        report_interval_s=1,
        poll_interval_s=1,
    )
    svc = OpenAdrService(
        config,
        db_path=tmp_path / "openadr.db",
        state=state,
        assets=lambda: [b1, b2],
        audit=audit,
        clock=clock,
    )
    await vtn.run()
    try:
        await svc.start()
        await svc.wait_registered(15)
        assert await asyncio.wait_for(opts["evt-dr"], 15) == OPT_IN
        assert await asyncio.wait_for(opts["evt-price"], 15) == OPT_OUT
        assert 100_000.0 in await asyncio.wait_for(reported, 15)  # gated import [W]
    finally:
        await svc.stop()
        await vtn.stop()
        audit.close()
    records = {
        r["details"]["event_id"]: r
        for r in audit_records(tmp_path / "audit.jsonl")
        if r["event"] == "openadr.event"
    }
    assert records["evt-dr"]["decision"] == "allow"
    assert records["evt-price"]["reason"] == "UNSUPPORTED_SIGNAL"

    # The planning day: chosen so that the event starts in step 32 or 33 (08:00 of "its" day).
    start_ms = int(start.timestamp() * 1000)
    day_start_ms = start_ms - start_ms % STEP_MS - 32 * STEP_MS
    (dr,) = svc.active_constraints(day_start_ms)
    assert dr.event_id == "evt-dr" and dr.start_step == 32
    assert dr.import_max_kw[0] == pytest.approx(100.0 - 600.0)
    fleet = OptimizerFleet(
        batteries=tuple(Battery(a.asset_id, a.site_id, 1000.0, 2000.0, 50.0) for a in (b1, b2))
    )
    energy = [60.0] * STEPS
    energy[dr.start_step : dr.end_step] = [1.0] * (dr.end_step - dr.start_step)
    prices = MarketPrices(tuple(energy), (0.0,) * 6)
    with_dr = dataclasses.replace(fleet, demand_response=(dr,))
    for plan_with in (schedule, schedule_aggregated):
        plan = plan_with(with_dr, prices, CONTINUOUS, time_limit_s=20)
        assert check_plan(with_dr, plan, CONTINUOUS) == [], plan_with.__name__
        free = plan_with(fleet, prices, CONTINUOUS, time_limit_s=20)
        violated = {v.constraint for v in check_plan(with_dr, free, CONTINUOUS)}
        assert "demand_response.import_max_kw" in violated, plan_with.__name__


async def test_unreachable_vtn_does_not_stop_the_service(tmp_path: Path) -> None:
    clock = SystemClock()
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    config = OpenAdrConfig(
        vtn_url=f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b", ven_name="gridfort"
    )
    svc = OpenAdrService(
        config,
        db_path=tmp_path / "openadr.db",
        state=FleetState(),
        assets=lambda: [],
        audit=audit,
        clock=clock,
    )
    await svc.start()
    await asyncio.sleep(0.5)  # at least one failed attempt, then backing off
    assert svc.ven is None
    await svc.stop()
    audit.close()
