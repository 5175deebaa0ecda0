"""Local frequency response at a real edge: signed arming, then the edge answers frequency
events on its own, measured at the device (the SunSpec simulator on loopback).

The frequency is the battery inverter's model 103 ``Hz``, changed by the simulator
(a scripted dip); the edge reads it with its own Modbus connection, computes the
response and writes the battery's model 124 controls. Arming commands are hostile-tested
like every command: forged, misaddressed, replayed, unsafe and malformed ones are
refused, signed and audited, and leave nothing armed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.embedded import EmbeddedSystem
from edge_node.commands import DeviceState
from edge_node.frequency_meter import SunSpecFrequencyMeter
from edge_node.frequency_response import FrequencyResponder
from edge_node.safety_limits import SiteLimits
from edge_node.simulators.sunspec_server import BATTERY_UNIT_ID, ControlChange, FrequencyStep
from gridfort.v1 import command_pb2 as cpb
from security.audit_log import AuditLog
from security.envelope import EnvelopeSigner
from security.refusals import Reason
from tests.e2e.command_site import (
    EdgeSite,
    EnrollSite,
    assert_refused_and_not_applied,
    audit_records,
    start_edge,
)
from tests.e2e.edge_harness import wait_until

HOUR_MS = 3_600_000


def responder_factory(system: EmbeddedSystem):  # type: ignore[no-untyped-def]
    def build(
        devices: dict[str, DeviceState], audit: AuditLog, port: int, controller: str
    ) -> FrequencyResponder:
        meter = SunSpecFrequencyMeter("s1-bat#hz", "127.0.0.1", port, BATTERY_UNIT_ID)
        return FrequencyResponder(
            devices=devices,
            meters={"s1-bat": meter},
            site_limits=SiteLimits(),
            clock=system.clock,
            audit=audit,
            controller_id=controller,
            interval_s=0.01,
        )

    return build


async def _edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path, soc: float
) -> AsyncIterator[EdgeSite]:
    factory = responder_factory(system)
    async for site in start_edge(system, enroll_site, tmp_path, soc, frequency=factory):
        yield site


@pytest.fixture
async def edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> AsyncIterator[EdgeSite]:
    async for site in _edge(system, enroll_site, tmp_path, 50.0):
        yield site


@pytest.fixture
async def low_edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> AsyncIterator[EdgeSite]:
    async for site in _edge(system, enroll_site, tmp_path, 4.0):
        yield site


def params(asset_id: str = "s1-bat", **changes: float) -> cpb.FrequencyResponseParams:
    p = cpb.FrequencyResponseParams(
        asset_id=asset_id,
        nominal_hz=50.0,
        fcr_deadband_hz=0.01,
        fcr_kw_per_hz=10.0,
        fcr_max_kw=1.0,
        ffr_trigger_hz=49.7,
        ffr_p_kw=3.0,
        ffr_duration_ms=300,
    )
    for name, value in changes.items():
        setattr(p, name, value)
    return p


def arm(
    edge: EdgeSite,
    assets: list[cpb.FrequencyResponseParams],
    *,
    from_ms: int | None = None,
    until_ms: int | None = None,
    site_id: str = "s1",
    seq: int | None = None,
) -> cpb.Command:
    now = edge.now()
    if seq is None:
        seq, edge.next_command_seq = edge.next_command_seq, edge.next_command_seq + 1
    arming = cpb.ArmFrequencyResponse(
        active_from_ms=now - 1_000 if from_ms is None else from_ms,
        active_until_ms=now + HOUR_MS if until_ms is None else until_ms,
        assets=assets,
    )
    return cpb.Command(
        command_id=uuid.uuid4().hex,
        site_id=site_id,
        seq=seq,
        issued_ms=now,
        expires_ms=now + 30_000,
        arm_frequency_response=arming,
    )


def battery_changes(edge: EdgeSite) -> list[ControlChange]:
    return [c for c in edge.sim.control_log if c.unit_id == BATTERY_UNIT_ID]


async def wait_for_battery(edge: EdgeSite, p_kw: float, after: int = 0) -> ControlChange:
    def reached() -> bool:
        return any(abs(c.p_kw - p_kw) < 0.02 for c in battery_changes(edge)[after:])

    await wait_until(reached, timeout_s=10.0)
    return next(c for c in battery_changes(edge)[after:] if abs(c.p_kw - p_kw) < 0.02)


# -- the edge reacts on its own --------------------------------------------------------------------


async def test_armed_battery_answers_a_frequency_dip_locally(edge: EdgeSite) -> None:
    result = await edge.handle(edge.sign(arm(edge, [params()])))
    assert result.status == cpb.COMMAND_STATUS_APPLIED, result
    assert edge.frequency is not None
    await asyncio.sleep(0.1)
    assert battery_changes(edge) == []  # nominal frequency: nothing to do
    edge.sim.set_grid_frequency(49.6)
    crossing = edge.sim.frequency_log[-1]
    reaction = await wait_for_battery(edge, 3.0)  # FFR 3 kW beats the droop's 1 kW cap
    assert reaction.mono_ns > crossing.mono_ns
    responder = edge.frequency
    assert isinstance(responder, FrequencyResponder)
    (activation,) = responder.activations
    assert activation.hz == pytest.approx(49.6) and activation.p_kw == pytest.approx(3.0)
    assert activation.latency_ms > 0
    record = [r for r in audit_records(edge.audit.path) if r["event"] == "frequency_response"]
    assert record and record[-1]["details"]["asset"] == "s1-bat"
    # the FFR hold (300 ms) ends; the frequency is still low: the droop alone remains
    n = len(battery_changes(edge))
    await wait_for_battery(edge, 1.0, after=n)
    edge.sim.set_grid_frequency(50.0)
    await wait_for_battery(edge, 0.0, after=n)


async def test_fcr_droop_follows_a_scripted_frequency_event(edge: EdgeSite) -> None:
    p = params(ffr_trigger_hz=0.0, ffr_p_kw=0.0, ffr_duration_ms=0, fcr_max_kw=2.0)
    assert (await edge.handle(edge.sign(arm(edge, [p])))).status == cpb.COMMAND_STATUS_APPLIED
    edge.sim.script_frequency([FrequencyStep(0.0, 49.91), FrequencyStep(0.3, 50.06)])
    await wait_for_battery(edge, 0.8)  # 10 kW/Hz x (0.09 - 0.01) Hz, discharging
    await wait_for_battery(edge, -0.5)  # over-frequency: charging


async def test_the_executor_setpoint_is_the_base_of_the_response(edge: EdgeSite) -> None:
    assert (await edge.handle(edge.sign(arm(edge, [params()])))).status == 1
    applied = await edge.handle(edge.sign(edge.command("s1-bat", -2.0)))
    assert applied.status == cpb.COMMAND_STATUS_APPLIED
    edge.sim.set_grid_frequency(49.5)
    await wait_for_battery(edge, 1.0)  # -2 kW charging + 3 kW FFR


async def test_a_reaction_is_clamped_to_local_limits(low_edge: EdgeSite) -> None:
    """At 4 % state of charge (minimum 5 %) the battery may not discharge, FFR or not."""
    edge = low_edge
    assert (await edge.handle(edge.sign(arm(edge, [params()])))).status == 1
    edge.sim.set_grid_frequency(49.5)

    def clamped() -> bool:
        return any(
            r["event"] == "frequency_response" and r["decision"] == "deny"
            for r in audit_records(edge.audit.path)
        )

    await wait_until(clamped, timeout_s=5.0)
    assert battery_changes(edge) == []
    edge.sim.set_grid_frequency(50.3)  # over-frequency: charging is allowed
    await wait_for_battery(edge, -1.0)


async def test_disarming_stops_the_response(edge: EdgeSite) -> None:
    assert (await edge.handle(edge.sign(arm(edge, [params()])))).status == 1
    assert (await edge.handle(edge.sign(arm(edge, [])))).status == 1
    assert isinstance(edge.frequency, FrequencyResponder) and not edge.frequency.armed
    edge.sim.set_grid_frequency(49.5)
    await asyncio.sleep(0.2)
    assert battery_changes(edge) == []


async def test_disarming_during_a_response_puts_the_base_back(edge: EdgeSite) -> None:
    p = params(ffr_trigger_hz=0.0, ffr_p_kw=0.0, ffr_duration_ms=0)
    assert (await edge.handle(edge.sign(arm(edge, [p])))).status == 1
    edge.sim.set_grid_frequency(49.8)
    await wait_for_battery(edge, 1.0)
    n = len(battery_changes(edge))
    assert (await edge.handle(edge.sign(arm(edge, [])))).status == 1
    await wait_for_battery(edge, 0.0, after=n)


async def test_the_response_ends_with_its_armed_window(edge: EdgeSite) -> None:
    now = edge.now()
    command = arm(edge, [params(ffr_trigger_hz=0.0, ffr_p_kw=0.0)], until_ms=now + 600)
    assert (await edge.handle(edge.sign(command))).status == 1
    edge.sim.set_grid_frequency(49.8)
    await wait_for_battery(edge, 1.0)
    await wait_for_battery(edge, 0.0)  # the window closed: back to the base
    assert isinstance(edge.frequency, FrequencyResponder)
    await wait_until(lambda: not edge.frequency.armed, timeout_s=2.0)  # type: ignore[union-attr]


# -- hostile arming --------------------------------------------------------------------------------


async def test_forged_arming_is_refused(edge: EdgeSite) -> None:
    rogue = EnvelopeSigner(Ed25519PrivateKey.generate(), edge.cp_signer.signer)
    await assert_refused_and_not_applied(
        edge, edge.sign(arm(edge, [params()]), rogue), Reason.COMMAND_BAD_SIGNATURE
    )


async def test_arming_for_another_site_is_refused(edge: EdgeSite) -> None:
    command = arm(edge, [params("s2-bat")], site_id="s2")
    await assert_refused_and_not_applied(edge, edge.sign(command), Reason.COMMAND_WRONG_SITE)


async def test_replayed_arming_is_refused(edge: EdgeSite) -> None:
    envelope = edge.sign(arm(edge, [params()]))
    assert (await edge.handle(envelope)).status == cpb.COMMAND_STATUS_APPLIED
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_REPLAYED)


@pytest.mark.parametrize(
    ("asset", "changes", "reason"),
    [
        ("s1-pv", {}, Reason.COMMAND_UNSAFE),  # PV: batteries only (and no meter configured)
        ("s1-ghost", {}, Reason.COMMAND_UNKNOWN_ASSET),
        ("s1-bat", {"fcr_max_kw": 5.5}, Reason.COMMAND_UNSAFE),
        ("s1-bat", {"ffr_p_kw": 50.0}, Reason.COMMAND_UNSAFE),
        ("s1-bat", {"ffr_trigger_hz": 50.2}, Reason.COMMAND_UNSAFE),
        ("s1-bat", {"nominal_hz": 0.0}, Reason.COMMAND_UNSAFE),
        ("s1-bat", {"ffr_duration_ms": 3_600_000}, Reason.COMMAND_UNSAFE),
    ],
    ids=["pv", "unknown", "fcr-above-rating", "ffr-above-rating", "trigger-above-nominal",
         "no-nominal", "hold-too-long"],
)  # fmt: skip
async def test_unsafe_arming_is_refused(
    edge: EdgeSite, asset: str, changes: dict[str, float], reason: Reason
) -> None:
    command = arm(edge, [params(asset, **changes)])
    await assert_refused_and_not_applied(edge, edge.sign(command), reason)
    assert isinstance(edge.frequency, FrequencyResponder) and not edge.frequency.armed


@pytest.mark.parametrize("window", ["over-24h", "ended", "empty", "asset-twice"])
async def test_malformed_arming_window_is_refused(edge: EdgeSite, window: str) -> None:
    now = edge.now()
    assets, from_ms, until_ms = [params()], now, now + HOUR_MS
    reason = Reason.COMMAND_MALFORMED
    if window == "over-24h":
        until_ms = now + 25 * HOUR_MS
    elif window == "ended":
        from_ms, until_ms, reason = now - 2 * HOUR_MS, now - HOUR_MS, Reason.COMMAND_EXPIRED
    elif window == "empty":
        until_ms = from_ms
    else:
        assets, reason = [params(), params()], Reason.COMMAND_UNKNOWN_ASSET
    command = arm(edge, assets, from_ms=from_ms, until_ms=until_ms)
    await assert_refused_and_not_applied(edge, edge.sign(command), reason)


async def test_an_edge_without_frequency_response_refuses_arming(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> None:
    async for edge in start_edge(system, enroll_site, tmp_path, 50.0):
        await assert_refused_and_not_applied(
            edge, edge.sign(arm(edge, [params()])), Reason.COMMAND_UNSUPPORTED
        )
