"""Shared fixtures: a real embedded control plane on loopback with random ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.assets.model import Asset, AssetKind
from control_plane.embedded import EmbeddedSystem
from edge_node.credentials import EdgeCredentials

TRUST_DOMAIN = "gridfort.test"


def default_assets(site_id: str) -> list[Asset]:
    return [
        Asset(f"{site_id}-pv", site_id, AssetKind.PV_INVERTER, rated_p_kw=10.0),
        Asset(f"{site_id}-bat", site_id, AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0),
        Asset(f"{site_id}-ev", site_id, AssetKind.EV_CHARGER, rated_p_kw=11.0, e_kwh=60.0),
    ]


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    """A started control plane (CA, gRPC link + bootstrap ports) in a fresh state dir."""
    sys_ = EmbeddedSystem(
        tmp_path / "cp",
        trust_domain=TRUST_DOMAIN,
        link_addresses=("127.0.0.1:0", "127.0.0.1:0"),
        durable_sync=False,
    )
    await sys_.start()
    try:
        yield sys_
    finally:
        await sys_.stop()


@pytest.fixture
def enroll_site(system: EmbeddedSystem, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``await enroll_site("s1")``: register a site with default assets and enroll its edge."""

    async def enroll(site_id: str) -> EdgeCredentials:
        system.register_site(site_id, default_assets(site_id))
        return await system.enroll_edge(site_id, tmp_path / "edges" / site_id)

    return enroll
