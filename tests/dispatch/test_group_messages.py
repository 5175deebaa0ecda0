"""Group messages, the pure part: sections that cannot exist invalid, packing, the Command."""

from __future__ import annotations

import math

import pytest

from control_plane.commands.group_messages import (
    GroupInputError,
    SiteSetpoints,
    group_command,
    pack,
)


def section(site: str, n: int = 3, p_kw: float = 1.0) -> SiteSetpoints:
    return SiteSetpoints(site, tuple(f"{site}-a{i}" for i in range(n)), (p_kw,) * n)


@pytest.mark.parametrize(
    ("site", "ids", "values", "problem"),
    [
        ("", ("a",), (1.0,), "site id"),
        ("s1", ("a", "b"), (1.0,), "2 asset ids but 1 setpoints"),
        ("s1", (), (), "0 entries"),
        ("s1", ("a", "a"), (1.0, 2.0), "appears twice"),
        ("s1", ("a", ""), (1.0, 2.0), "asset ids must have"),
        ("s1", ("a", "x" * 65), (1.0, 2.0), "asset ids must have"),
        ("s1", ("a",), (math.nan,), "finite"),
        ("s1", ("a",), (math.inf,), "finite"),
    ],
)
def test_an_invalid_section_cannot_exist(
    site: str, ids: tuple[str, ...], values: tuple[float, ...], problem: str
) -> None:
    with pytest.raises(GroupInputError, match=problem):
        SiteSetpoints(site, ids, values)


def test_pack_respects_the_byte_budget_and_the_site_limit() -> None:
    sections = [section(f"s{i:02d}", 10) for i in range(20)]
    size = sections[0].estimated_bytes()
    groups = pack(sections, max_payload_bytes=size * 4, max_sites=100)
    assert [len(g) for g in groups] == [4] * 5
    assert [s for g in groups for s in g] == sections  # order kept, nothing lost
    assert [len(g) for g in pack(sections, max_payload_bytes=10**6, max_sites=7)] == [7, 7, 6]
    # a section larger than the budget still goes, alone
    assert [len(g) for g in pack(sections[:3], max_payload_bytes=1)] == [1, 1, 1]


def test_pack_refuses_a_site_twice() -> None:
    with pytest.raises(GroupInputError, match="twice"):
        pack([section("s1"), section("s1")])


def test_estimated_bytes_bound_the_serialized_size() -> None:
    sections = [section(f"site-{i:04d}", 100) for i in range(5)]
    command = group_command(
        group_id="g" * 32,
        group_seq=7,
        issued_ms=1,
        expires_ms=2,
        activation_id="a",
        sections=sections,
    )
    size = len(command.group_setpoints.SerializeToString())
    estimate = sum(s.estimated_bytes() for s in sections)
    assert size <= estimate < size * 1.2


def test_group_command_carries_no_single_site_fields() -> None:
    command = group_command(
        group_id="g1",
        group_seq=3,
        issued_ms=1000,
        expires_ms=2000,
        activation_id="x" * 80,
        sections=[section("s1", 2, 2.5)],
    )
    assert (command.site_id, command.asset_id, command.seq) == ("", "", 0)
    group = command.group_setpoints
    assert group.group_seq == 3 and len(group.activation_id) == 64
    assert list(group.sites[0].asset_ids) == ["s1-a0", "s1-a1"]
    assert list(group.sites[0].p_kw) == [2.5, 2.5]
    with pytest.raises(ValueError):
        group_command(
            group_id="g", group_seq=0, issued_ms=1, expires_ms=2, activation_id="", sections=[]
        )
