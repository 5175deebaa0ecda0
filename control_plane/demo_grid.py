"""The demo's grid: the sites sit on CIGRE MV buses, a substation RTU reports the grid.

The grid simulator (``edge_node.simulators.grid_sim``) runs an AC power flow of the
CIGRE MV network each second with every demo site's real net injection (its
Modbus PV and battery, its OPC UA EV charger) at its bus; a substation RTU serves
the resulting measurement snapshot over OPC UA (SignAndEncrypt, pinned
certificates); an edge node reads it and streams it, signed, like any other site.
The control plane's FDI gate judges each snapshot with the signed CIGRE MV model.

``--attack SCENARIO`` compromises one device partway through the run:

* ``soc-inflation``: site-2's battery management reports 25 %-points more state of
  charge than the cells hold (to sell flexibility that does not exist); the temporal
  judge's energy balance catches it.
* ``stealthy``, ``ramp``, ``scaling``, ``random``: the RTU falsifies grid measurements
  (``stealthy`` = consistent with the AC power-flow equations on a region, built to
  pass the residual test of state estimation); the grid judge catches and localizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.gate.grid_assets import bus_for_sites, grid_assets
from edge_node.app import EdgeNode
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind as EdgeKind
from edge_node.simulators.grid_sim import GridSimulator
from edge_node.simulators.opcua_server import generate_application_certificate
from edge_node.simulators.rtu_server import SERVER_APPLICATION_URI, GridRtuSimulator
from security.clock import Clock

if TYPE_CHECKING:
    from control_plane.demo import Site
    from control_plane.embedded import EmbeddedSystem

GRID = "cigre_mv"
RTU_SITE = "substation-1"
GRID_ATTACKS = ("stealthy", "ramp", "scaling", "random")
ATTACK_SCENARIOS = ("soc-inflation", *GRID_ATTACKS)
SOC_INFLATION_PCT = 25.0
OPCUA_CLIENT_URI = "urn:gridfort:edge:opcua-client"


@dataclass
class AttackRecord:
    """What was attacked, when [ms, sample clock], and what the gate made of it."""

    scenario: str
    target: str
    started_ms: int
    detail: str
    expected_detector: str
    caught_ms: int | None = None
    quarantined: int = 0
    by_detector: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        delay = None if self.caught_ms is None else (self.caught_ms - self.started_ms) / 1000
        return {
            "scenario": self.scenario,
            "target": self.target,
            "detail": self.detail,
            "expected_detector": self.expected_detector,
            "caught": self.caught_ms is not None,
            "detection_delay_s": delay,
            "quarantined": self.quarantined,
            "by_detector": self.by_detector,
        }


def launch_soc_inflation(sites: list[Site], now_ms: int) -> AttackRecord:
    """Compromise site-2's battery management: it reports more charge than it holds."""
    site = sites[1] if len(sites) > 1 else sites[0]
    site.modbus.soc_falsification_pct = SOC_INFLATION_PCT
    return AttackRecord(
        "soc-inflation",
        site.assets["bat"],
        now_ms,
        f"{site.site_id}'s battery reports +{SOC_INFLATION_PCT:.0f} %-points of SOC",
        "temporal:soc_balance",
    )


def observe_attack(attack: AttackRecord, system: EmbeddedSystem) -> None:
    """Update ``attack`` from the gate's alerts raised since it started."""
    alerts = [x for x in system.control_plane.alerts.list() if x.last_ms >= attack.started_ms]
    expected = [x for x in alerts if x.detector == attack.expected_detector]
    if expected and attack.caught_ms is None:
        attack.caught_ms = max(min(x.first_ms for x in expected), attack.started_ms)
    attack.quarantined = sum(x.measurements for x in expected)
    attack.by_detector = {}
    for x in alerts:
        attack.by_detector[x.detector] = attack.by_detector.get(x.detector, 0) + x.measurements


class DemoGrid:
    """The RTU world of the demo (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        clock: Clock,
        sim_clock: Clock,
        sample_interval_s: float,
        transport: str,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.sim_clock = sim_clock
        self.sample_interval_s = sample_interval_s
        self.transport = transport
        self.simulator = GridSimulator(GRID, seed=0)
        self.rtu: GridRtuSimulator | None = None
        self.edge: EdgeNode | None = None

    def register(self, system: EmbeddedSystem) -> None:
        """Register the RTU's metering points (before the transports sync their users)."""
        system.register_site(RTU_SITE, grid_assets(GRID, RTU_SITE))

    async def start(self, system: EmbeddedSystem, sites: list[Site]) -> None:
        buses = bus_for_sites(GRID, min(len(sites), 11))
        for i, site in enumerate(sites):
            self.simulator.attach_site(site.site_id, buses[i % len(buses)], _export_kw(site))
        rtu_dir, now_ms = self.state_dir / "sites" / RTU_SITE, self.clock.now_ms()
        client_cert, client_key = generate_application_certificate(
            rtu_dir / "opcua-client",
            name=f"{RTU_SITE}-edge",
            application_uri=OPCUA_CLIENT_URI,
            role="client",
            now_ms=now_ms,
        )
        server_cert, server_key = generate_application_certificate(
            rtu_dir / "opcua-server",
            name=f"{RTU_SITE}-rtu",
            application_uri=SERVER_APPLICATION_URI,
            role="server",
            now_ms=now_ms,
        )
        self.rtu = GridRtuSimulator(
            self.simulator,
            clock=self.clock,
            sim_clock=self.sim_clock,
            interval_s=self.sample_interval_s,
            server_cert_path=server_cert,
            server_key_path=server_key,
            trusted_client_certs=[client_cert],
            state_dir=rtu_dir / "opcua-state",
        )
        await self.rtu.start()
        edge_dir = self.state_dir / "edges" / RTU_SITE
        await system.enroll_edge(RTU_SITE, edge_dir)
        nats_url = system.control_plane.nats_url
        config = EdgeConfig(
            site_id=RTU_SITE,
            edge_dir=edge_dir,
            endpoints=system.link_endpoints,
            transport=self.transport,
            nats_servers=(nats_url,) if nats_url else (),
            # sample twice per snapshot so none is missed; a repeated snapshot reads as []
            sample_interval_s=self.sample_interval_s / 2,
            devices=(
                DeviceConfig(
                    f"{RTU_SITE}-rtu",
                    EdgeKind.GRID_RTU,
                    "opcua",
                    self.rtu.endpoint_url,
                    opcua_client_cert=client_cert,
                    opcua_client_key=client_key,
                    opcua_server_cert=server_cert,
                    opcua_application_uri=OPCUA_CLIENT_URI,
                    grid=GRID,
                ),
            ),
        )
        self.edge = EdgeNode(config, clock=self.clock)
        await self.edge.start()

    def launch_attack(self, scenario: str) -> AttackRecord:
        """Start the RTU attack ``scenario`` now (one of :data:`GRID_ATTACKS`)."""
        if scenario not in GRID_ATTACKS:
            raise ValueError(f"unknown grid attack {scenario!r}")
        now = self.clock.now_ms()
        live = self.simulator.inject(scenario, now)
        return AttackRecord(
            scenario, RTU_SITE, now, f"compromised RTU: {live.detail}", f"grid:{GRID}"
        )

    async def stop(self) -> None:
        if self.edge is not None:
            await self.edge.stop()
        if self.rtu is not None:
            await self.rtu.stop()


def _export_kw(site: Site) -> Any:
    def export_kw() -> float:  # + export [kW]; called on the event loop
        s = site.modbus.snapshot()
        return s.pv_p_kw + s.battery_p_kw - site.opcua.snapshot().charge_kw

    return export_kw
