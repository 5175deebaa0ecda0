"""Operator-signalled activation: allocation, then signed group setpoints applied at the sites."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from control_plane.dispatch.activation import (
    ActivationDispatcher,
    ActivationEvent,
    Participants,
    allocate,
    sections,
)
from edge_node.devices.base import AssetKind
from security.clock import ManualClock
from tests.dispatch.sites import add_site, build_control

NOW = 1_800_000_000_000


def participants() -> Participants:
    return Participants.from_rows(
        [
            ("s2", "s2-b1", 1.0, 2.0, 4.0),
            ("s1", "s1-b1", 0.0, 3.0, 1.0),
            ("s1", "s1-b2", -1.0, 5.0, 5.0),
            ("s3", "s3-b1", 0.0, 0.0, 0.0),
        ]
    )


def test_participants_are_grouped_by_site() -> None:
    p = participants()
    assert p.site_ids == ("s1", "s2", "s3")
    assert p.site_bounds.tolist() == [0, 2, 3, 4]
    assert p.asset_ids == ("s1-b1", "s1-b2", "s2-b1", "s3-b1")


@pytest.mark.parametrize(
    ("base", "up", "problem"),
    [([0.0, np.nan], [1.0, 1.0], "finite"), ([0.0, 0.0], [1.0, -1.0], ">= 0")],
)
def test_invalid_participants_cannot_exist(
    base: list[float], up: list[float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Participants(
            ("s1",),
            np.array([0, 2]),
            ("a", "b"),
            np.array(base),
            np.array(up),
            np.array([1.0, 1.0]),
        )


def test_allocation_is_pro_rata_to_headroom_and_saturates() -> None:
    p = participants()
    setpoints, delivered = allocate(p, 5.0)  # up headroom 3 + 5 + 2 + 0 = 10
    assert delivered == pytest.approx(5.0)
    assert setpoints.tolist() == pytest.approx([1.5, 1.5, 2.0, 0.0])
    setpoints, delivered = allocate(p, -20.0)  # down headroom 1 + 5 + 4 = 10: saturated
    assert delivered == pytest.approx(-10.0)
    assert setpoints.tolist() == pytest.approx([-1.0, -6.0, -3.0, 0.0])
    assert allocate(p, 0.0)[1] == 0.0


def test_sections_follow_the_sites() -> None:
    p = participants()
    out = sections(p, np.array([1.0, 2.0, 3.0, 4.0]))
    assert [(s.site_id, s.asset_ids, s.p_kw) for s in out] == [
        ("s1", ("s1-b1", "s1-b2"), (1.0, 2.0)),
        ("s2", ("s2-b1",), (3.0,)),
        ("s3", ("s3-b1",), (4.0,)),
    ]


@pytest.mark.parametrize(
    ("activation_id", "delta", "duration"),
    [("bad id!", 1.0, 10.0), ("a1", float("nan"), 10.0), ("a1", 1.0, 0.0), ("a1", 1.0, 4000.0)],
)
def test_an_invalid_event_cannot_exist(activation_id: str, delta: float, duration: float) -> None:
    with pytest.raises(ValueError):
        ActivationEvent(activation_id, delta, duration)


async def test_an_activation_reaches_every_site_signed_once_per_group(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    control = build_control(tmp_path, clock)
    for site in ("s1", "s2"):  # s3 has no edge: undeliverable
        assets = {a: AssetKind.BATTERY for a in participants().asset_ids if a.startswith(site)}
        add_site(control, tmp_path, clock, site, assets)
    dispatcher = ActivationDispatcher(
        groups=control.groups,
        participants=participants(),
        audit=control.audit,
        clock=clock,
        identity=control.signer.signer,
    )
    report = await dispatcher.activate(ActivationEvent("afrr-1", 5.0, 60.0))
    assert report.delivered_kw == pytest.approx(5.0) and report.shortfall_kw == pytest.approx(0.0)
    assert report.send.signatures == 1 and report.send.sites_sent == 2
    assert report.send.undeliverable == ["s3"]
    messages = {m.command.SerializeToString() for _, m in control.outbox}
    assert len(messages) == 1  # the same signed bytes to both sites
    assert await control.deliver() == 2
    assert sorted((a.site_id, a.status) for a in control.acks) == [
        ("s1", "applied"),
        ("s2", "applied"),
    ]
    s1 = control.sites["s1"]
    assert (s1.setpoint("s1-b1"), s1.setpoint("s1-b2")) == pytest.approx((1.5, 1.5))
    assert control.sites["s2"].setpoint("s2-b1") == pytest.approx(2.0)
    dispatcher.release(ActivationEvent("afrr-1", 5.0, 60.0))
    await control.deliver()
    assert s1.setpoint("s1-b2") == pytest.approx(-1.0)  # back to base
    control.groups.flush()
    assert control.log.group_status_counts() == {"applied": 4, "lost": 2}  # s3: no sink took it


async def test_results_arriving_during_a_fan_out_wait_for_its_end_and_are_all_recorded(
    tmp_path: Path,
) -> None:
    """The first sites' results are held while the fan-out still signs for the others
    (the CPU goes to the sites still waiting), then every one is verified and recorded,
    in arrival order, and a forged one is still refused."""
    clock = ManualClock(NOW)
    control = build_control(tmp_path, clock)
    for site in ("s1", "s2"):
        assets = {a: AssetKind.BATTERY for a in participants().asset_ids if a.startswith(site)}
        add_site(control, tmp_path, clock, site, assets)
    event = ActivationEvent("ffr-7", 2.0, 60.0)
    setpoints, _ = allocate(participants(), event.delta_kw)
    await control.groups.send_async(
        sections(participants(), setpoints), ttl_s=60.0, activation_id="first"
    )
    answers = []
    for site_id, message in control.outbox:
        edge = control.sites[site_id]
        answers.append((edge, await edge.executor.handle(message.command)))
    commands = control.commands
    with commands.hold_results():
        for edge, answer in answers:
            assert commands.on_result(edge.peer, answer, {edge.key.key_id: edge.key}) is None
        forged = answers[0][1].__deepcopy__()
        forged.signature = bytes(64)
        s1 = answers[0][0]
        assert commands.on_result(s1.peer, forged, {s1.key.key_id: s1.key}) is None  # held
        assert commands.held_results == 3 and control.acks == []
    assert commands.held_results == 3  # drained on the event loop, a chunk per turn
    await asyncio.sleep(0)
    assert commands.held_results == 0
    assert [(a.site_id, a.status) for a in control.acks] == [("s1", "applied"), ("s2", "applied")]
    records = [json.loads(line) for line in control.audit.path.read_text().splitlines()]
    denied = [r for r in records if r["event"] == "command_result" and r["decision"] == "deny"]
    assert [r["reason"] for r in denied] == ["BAD_SIGNATURE"]
