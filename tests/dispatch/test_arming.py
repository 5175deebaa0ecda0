"""Frequency-response arming from the plan's FCR capacity, and its signed delivery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from control_plane.dispatch.arming import FcrSettings, FfrSettings, block_arming
from control_plane.optimizer.assets import STEPS, Battery, FleetState
from control_plane.optimizer.market import MarketRules
from control_plane.optimizer.plan import Plan
from edge_node.devices.base import AssetKind
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from security.clock import ManualClock
from security.refusals import Reason
from tests.dispatch.sites import add_site, build_control

DAY = 1_799_971_200_000  # a midnight (UTC)
H_MS = 3_600_000


def fleet() -> FleetState:
    return FleetState(
        batteries=(
            Battery("b1", "s1", 20.0, 10.0, 50.0),
            Battery("b2", "s1", 10.0, 5.0, 50.0),
            Battery("b3", "s2", 10.0, 5.0, 50.0),
        )
    )


def plan(f: FleetState) -> Plan:
    reserve = np.zeros((3, 6))
    reserve[0, 1] = 4.0  # b1 sells 4 kW of FCR in block 1 (04:00-08:00)
    reserve[2, 1] = 2.0
    return Plan(f.asset_ids, np.zeros((3, STEPS)), reserve, "optimal", bids=True)


def test_block_arming_turns_fcr_capacity_into_droop_parameters() -> None:
    f = fleet()
    armings = block_arming(plan(f), f, MarketRules(), 1, day_start_ms=DAY)
    assert set(armings) == {"s1", "s2"}
    s1 = armings["s1"]
    assert (s1.active_from_ms, s1.active_until_ms) == (DAY + 4 * H_MS, DAY + 8 * H_MS)
    (b1,) = s1.assets  # b2 sells nothing in this block
    assert b1.asset_id == "b1" and b1.fcr_max_kw == 4.0
    assert b1.fcr_kw_per_hz == pytest.approx(4.0 / 0.19)  # full at 200 mHz, 10 mHz deadband
    assert (b1.nominal_hz, b1.fcr_deadband_hz, b1.ffr_trigger_hz) == (50.0, 0.01, 0.0)
    assert block_arming(plan(f), f, MarketRules(), 0, day_start_ms=DAY) == {}


def test_ffr_is_armed_only_when_asked_and_capped_at_the_rating() -> None:
    f = fleet()
    ffr = FfrSettings(trigger_hz=49.7, fraction_of_reserve=5.0, duration_ms=10_000)
    armings = block_arming(plan(f), f, MarketRules(), 1, day_start_ms=DAY, ffr=ffr)
    b3 = armings["s2"].assets[0]
    assert (b3.ffr_trigger_hz, b3.ffr_p_kw, b3.ffr_duration_ms) == (49.7, 5.0, 10_000)
    with pytest.raises(ValueError):
        FcrSettings(deadband_hz=0.3, full_activation_hz=0.2)
    with pytest.raises(ValueError):
        block_arming(plan(f), f, MarketRules(), 6, day_start_ms=DAY)


async def test_arming_is_signed_per_site_and_answered(tmp_path: Path) -> None:
    clock = ManualClock(DAY + 3 * H_MS)
    control = build_control(tmp_path, clock)
    add_site(control, tmp_path, clock, "s1", {"b1": AssetKind.BATTERY})
    f = fleet()
    arming = block_arming(plan(f), f, MarketRules(), 1, day_start_ms=DAY)["s1"]
    sent = control.commands.send_frequency_arming("s1", arming)
    assert isinstance(sent, cpb.Command) and sent.seq == 1 and sent.site_id == "s1"
    ((site, message),) = control.outbox
    assert site == "s1" and message.command.payload_type == epb.PAYLOAD_TYPE_COMMAND
    assert cpb.Command.FromString(message.command.payload).arm_frequency_response == arming
    await control.deliver()  # this edge runs no frequency responder: a signed refusal
    assert control.commands.status_counts(["s1"]) == {"refused": 1}
    unreachable = control.commands.send_frequency_arming("s9", arming)
    assert not isinstance(unreachable, cpb.Command)
    assert unreachable.reason is Reason.UNAVAILABLE
