"""The control plane starts and stops its OpenADR VEN from ``[control_plane.openadr]``."""

from __future__ import annotations

import socket
from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from control_plane.markets.openadr_service import OpenAdrConfig
from tests.conftest import TRUST_DOMAIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_control_plane_runs_the_ven_on_gated_state(tmp_path: Path) -> None:
    config = OpenAdrConfig(
        vtn_url=f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b",  # no VTN: it retries
        ven_name="gridfort",
    )
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, openadr=config
    )
    cp = await system.start()
    try:
        assert cp.openadr is not None
        assert cp.openadr.active_constraints(0) == ()
        assert cp.openadr.fleet_import_kw() == 0.0  # no gated state yet
        assert (tmp_path / "cp" / "openadr.db").exists()
    finally:
        await system.stop()
