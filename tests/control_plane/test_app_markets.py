"""The control plane composes the market layer from config, on gated state only."""

from __future__ import annotations

from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from control_plane.markets.actions import Product, Side
from control_plane.markets.service import MarketConfig
from tests.conftest import TRUST_DOMAIN, default_assets


async def test_markets_run_on_the_pipelines_gated_state(tmp_path: Path) -> None:
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, markets=MarketConfig()
    )
    cp = await system.start()
    try:
        assert cp.markets is not None
        assert cp.markets.loader.engine is not None  # the shipped policy passed its own tests
        system.register_site("s1", default_assets("s1"))
        # No gated state yet: nothing is verified, whatever the registry holds.
        now = system.clock.now_ms()
        assert cp.markets.flexibility.verified_flexibility_mw(Product.FCR, Side.SELL, now) == 0.0
    finally:
        await system.stop()
