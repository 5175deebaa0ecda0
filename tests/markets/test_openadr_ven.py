"""Gridfort's VEN against a real openleadr VTN on loopback: register, event, opt, report."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from control_plane.markets.openadr_ven import (
    OPT_IN,
    OPT_OUT,
    DemandResponseEvent,
    DrInterval,
    FleetConstraint,
    GridfortVen,
    constraint_for,
    event_from_openleadr,
    opt_for,
    received_values,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simple_levels_map_to_fractions_of_the_flexible_load() -> None:
    ev = DemandResponseEvent("e", "SIMPLE", "level", (DrInterval(0, 60_000, 2.0),))
    c = constraint_for(ev, 300.0)
    assert c is not None and (c.event_id, c.start_ms, c.end_ms) == ("e", 0, 60_000)
    assert c.reduce_load_kw == pytest.approx(200.0)
    assert opt_for(c, 250.0) == OPT_IN
    assert opt_for(c, 150.0) == OPT_OUT


def test_load_dispatch_delta_and_unknown_signals() -> None:
    ev = DemandResponseEvent(
        "e", "LOAD_DISPATCH", "delta", (DrInterval(0, 1000, -50.0), DrInterval(1000, 1000, -80.0))
    )
    c = constraint_for(ev, 0.0)
    assert c is not None and (c.end_ms, c.reduce_load_kw) == (2000, 80.0)
    assert (
        constraint_for(
            DemandResponseEvent("e", "ELECTRICITY_PRICE", "price", (DrInterval(0, 1, 1.0),)), 1.0
        )
        is None
    )
    assert opt_for(None, 1e9) == OPT_OUT


def test_malformed_event_is_refused() -> None:
    with pytest.raises(ValueError):
        event_from_openleadr({"event_descriptor": {}})


async def test_ven_registers_receives_an_event_opts_in_and_reports() -> None:
    from openleadr import OpenADRServer

    port = free_port()
    loop = asyncio.get_running_loop()
    opted: asyncio.Future[tuple[str, str]] = loop.create_future()
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
        if not opted.done():
            opted.set_result((ven_id, opt_type))

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
    vtn.add_event(
        ven_id="ven-gridfort",
        signal_name="SIMPLE",
        signal_type="level",
        intervals=[
            {
                "dtstart": datetime.now(UTC) + timedelta(minutes=5),
                "duration": timedelta(minutes=15),
                "signal_payload": 1.0,
            }
        ],
        callback=on_event_response,
    )
    constraints: list[FleetConstraint] = []

    def decide(raw: Mapping[str, Any]) -> str:
        c = constraint_for(event_from_openleadr(raw), 300.0)
        opt = opt_for(c, 300.0)
        if opt == OPT_IN and c is not None:
            constraints.append(c)
        return opt

    ven = GridfortVen(
        "gridfort",
        f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        decide=decide,
        fleet_power_w=lambda: 123_000.0,
        report_sampling=timedelta(seconds=1),
        client_options={"ven_id": "ven-gridfort"},
    )
    await vtn.run()
    try:
        await ven.start()
        assert await asyncio.wait_for(opted, 15) == ("ven-gridfort", OPT_IN)
        assert len(constraints) == 1 and constraints[0].reduce_load_kw == pytest.approx(100.0)
        assert 123_000.0 in await asyncio.wait_for(reported, 15)
    finally:
        await ven.stop()
        await vtn.stop()
