"""The demo: an embedded Gridfort with simulated sites, shown live in the terminal.

Each site is a real SunSpec Modbus TCP server (PV inverter + battery), a real
OPC UA server (EV charger) and an edge node that enrolls with a one-time token
and streams signed batches over mutual-TLS gRPC. The control plane sends signed
setpoints back every few seconds. At the end the outboxes drain and the
summary checks ``sent == committed + quarantined`` with nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from control_plane.assets.model import Asset, AssetKind
from control_plane.demo_grid import (
    GRID,
    RTU_SITE,
    AttackRecord,
    DemoGrid,
    launch_soc_inflation,
    observe_attack,
)
from control_plane.embedded import EmbeddedSystem
from control_plane.planning import PlanningConfig, PlanningCycle
from edge_node.app import EdgeNode
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind as EdgeKind
from edge_node.simulators.opcua_server import (
    OpcUaEvChargerSimulator,
    generate_application_certificate,
)
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import Clock, SystemClock
from security.refusals import GridfortError

DRAIN_TIMEOUT_S = 20.0
PLAN_AFTER_S = 6.0  # the demo plans once its sites have reported [s]
OPCUA_CLIENT_URI = "urn:gridfort:edge:opcua-client"
Q = tpb.Quantity


@dataclass(frozen=True)
class DemoOptions:
    sites: int = 3
    duration_s: float | None = None
    transport: str = "grpc"
    nats_cluster: int = 1  # NATS nodes: 1, or 3/5/7 for a loopback cluster
    state_dir: Path = Path(".gridfort/demo")
    json_summary: Path | None = None
    sample_interval_s: float = 1.0
    command_interval_s: float = 5.0
    time_scale: float = 1.0
    grid: bool = True  # the substation RTU and the grid judge (CIGRE MV; loads torch)
    attack: str | None = None  # one of demo_grid.ATTACK_SCENARIOS
    attack_after_s: float = 15.0  # when the attack starts, after the sites are up [s]

    def __post_init__(self) -> None:
        if not 1 <= self.sites <= 200:
            raise GridfortError("--sites: must be between 1 and 200")
        if self.duration_s is not None and self.duration_s <= 0:
            raise GridfortError("--duration: must be positive")
        if self.transport not in ("grpc", "nats", "both"):
            raise GridfortError("--transport: must be grpc, nats or both")
        if self.nats_cluster not in (1, 3, 5, 7):
            raise GridfortError("--nats-cluster: must be 1, 3, 5 or 7")
        if self.nats_cluster > 1 and self.transport == "grpc":
            raise GridfortError("--nats-cluster: needs --transport nats or both")
        if not 0.1 <= self.sample_interval_s <= 60:
            raise GridfortError("--sample-interval: must be between 0.1 and 60 s")
        if not 0.5 <= self.command_interval_s <= 3600:
            raise GridfortError("--command-interval: must be between 0.5 and 3600 s")
        if self.attack is not None:
            from control_plane.demo_grid import ATTACK_SCENARIOS, GRID_ATTACKS

            if self.attack not in ATTACK_SCENARIOS:
                raise GridfortError(f"--attack: choose one of {', '.join(ATTACK_SCENARIOS)}")
            if self.attack in GRID_ATTACKS and not self.grid:
                raise GridfortError(f"--attack {self.attack}: needs the grid (drop --no-grid)")
            if self.attack == "soc-inflation" and self.sites < 2:
                raise GridfortError("--attack soc-inflation: needs --sites 2 or more")
        if not 0 <= self.attack_after_s <= 3600:
            raise GridfortError("--attack-after: must be between 0 and 3600 s")


class ScaledClock:
    """Simulated time for device physics: starts at 10:00 UTC today, runs ``scale``x.

    Telemetry carries real sample times, so with ``scale`` != 1 the devices' physics runs
    faster than the clock the control plane judges them by, and the gate's temporal
    energy-balance checks rightly flag the batteries' state of charge: keep 1 unless
    that is what you want to see.
    """

    def __init__(self, real: Clock, scale: float) -> None:
        self._real = real
        self._scale = scale
        now = real.now_ms()
        self._origin_real = now
        self._origin_sim = now - now % 86_400_000 + 10 * 3_600_000

    def now_ms(self) -> int:
        return self._origin_sim + int((self._real.now_ms() - self._origin_real) * self._scale)


@dataclass
class Site:
    site_id: str
    modbus: SunSpecSiteSimulator
    opcua: OpcUaEvChargerSimulator
    edge: EdgeNode | None = None

    @property
    def assets(self) -> dict[str, str]:
        return {
            "pv": f"{self.site_id}-pv",
            "bat": f"{self.site_id}-bat",
            "ev": f"{self.site_id}-ev",
        }


def _active_link(edge: EdgeNode) -> str:
    """``grpc:PORT`` or ``nats:PORT`` of the uplink carrying data now ("" if none)."""
    if edge.uplink.stats.connected:
        return f"grpc:{edge.uplink.stats.endpoint.rsplit(':', 1)[-1]}"
    if edge.nats_uplink is not None and edge.nats_uplink.stats.connected:
        return f"nats:{edge.nats_uplink.stats.endpoint.rsplit(':', 1)[-1]}"
    return ""


def _prepare_state_dir(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        marker = path / ".gridfort-demo"
        if not marker.exists():
            raise GridfortError(
                f"--state-dir {path} is not empty and was not made by a demo; choose another"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    (path / ".gridfort-demo").write_text("state of 'gridfort demo'; wiped by the next demo\n")


class Demo:
    def __init__(self, options: DemoOptions, clock: Clock | None = None) -> None:
        self.options = options
        self.clock = clock or SystemClock()
        self.sim_clock = ScaledClock(self.clock, options.time_scale)
        self.system = EmbeddedSystem(
            options.state_dir / "control-plane",
            clock=self.clock,
            nats_port=0 if options.transport != "grpc" else None,
            nats_cluster_size=options.nats_cluster,
            gate_grids=(GRID,) if options.grid else (),
            # Plan only: the demo's command rounds drive the devices. Continuous lots: three
            # home batteries cannot bid the markets' 0.1 MW; the plan serves their owners.
            planning=PlanningConfig(dispatch=False, energy_increment_kw=0, reserve_increment_kw=0),
        )
        self.sites: list[Site] = []
        self.command_round = 0
        self.grid: DemoGrid | None = None
        self.attack: AttackRecord | None = None
        if options.grid:
            self.grid = DemoGrid(
                options.state_dir,
                self.clock,
                self.sim_clock,
                options.sample_interval_s,
                options.transport,
            )

    async def start(self) -> None:
        await self.system.start()
        for i in range(1, self.options.sites + 1):
            site_id = f"site-{i}"
            self.system.register_site(
                site_id,
                [
                    Asset(f"{site_id}-pv", site_id, AssetKind.PV_INVERTER, rated_p_kw=10.0),
                    Asset(f"{site_id}-bat", site_id, AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0),
                    Asset(
                        f"{site_id}-ev", site_id, AssetKind.EV_CHARGER, rated_p_kw=11.0, e_kwh=60.0
                    ),
                ],
            )
        if self.grid is not None:
            self.grid.register(self.system)
        await self.system.control_plane.sync_transports()  # e.g. the NATS users list
        await asyncio.gather(
            *(self._start_site(f"site-{i}", i) for i in range(1, self.options.sites + 1))
        )
        self.sites.sort(key=lambda s: int(s.site_id.split("-")[1]))
        if self.grid is not None:
            await self.grid.start(self.system, self.sites)

    def launch_attack(self) -> None:
        """Start the ``--attack`` scenario now (needs the grid world for RTU attacks)."""
        if self.options.attack is None:
            return
        if self.options.attack == "soc-inflation":
            self.attack = launch_soc_inflation(self.sites, self.clock.now_ms())
        elif self.grid is not None:
            self.attack = self.grid.launch_attack(self.options.attack)

    def observe_attack(self) -> None:
        if self.attack is not None:
            observe_attack(self.attack, self.system)

    async def _start_site(self, site_id: str, i: int) -> None:
        modbus = SunSpecSiteSimulator(
            pv_rated_kw=10.0,
            battery_rated_kw=5.0,
            battery_e_kwh=10.0,
            battery_soc_pct=30.0 + 10 * (i % 5),
            clock=self.sim_clock,
            time_scale=1.0,
        )
        site_dir = self.options.state_dir / "sites" / site_id
        now_ms = self.clock.now_ms()
        client_cert, client_key = generate_application_certificate(
            site_dir / "opcua-client",
            name=f"{site_id}-edge",
            application_uri=OPCUA_CLIENT_URI,
            role="client",
            now_ms=now_ms,
        )
        server_cert, server_key = generate_application_certificate(
            site_dir / "opcua-server",
            name=f"{site_id}-ev-charger",
            application_uri="urn:gridfort:sim:ev-charger",
            role="server",
            now_ms=now_ms,
        )
        opcua = OpcUaEvChargerSimulator(
            clock=self.sim_clock,
            max_charge_kw=11.0,
            e_kwh=60.0,
            soc_pct=25.0 + 5 * (i % 4),
            target_soc_pct=80.0,
            departure_in_s=10 * 3600.0,
            time_scale=1.0,
            security="sign_encrypt",
            server_cert_path=server_cert,
            server_key_path=server_key,
            trusted_client_certs=[client_cert],
            state_dir=site_dir / "opcua-state",
        )
        modbus_port = await modbus.start()
        await opcua.start()
        site = Site(site_id, modbus, opcua)
        self.sites.append(site)
        a = site.assets
        edge_dir = self.options.state_dir / "edges" / site_id
        await self.system.enroll_edge(site_id, edge_dir)
        nats_urls = self.system.control_plane.nats_urls  # every node of a cluster
        config = EdgeConfig(
            site_id=site_id,
            edge_dir=edge_dir,
            endpoints=self.system.link_endpoints,
            sample_interval_s=self.options.sample_interval_s,
            transport=self.options.transport,
            nats_servers=nats_urls,
            devices=(
                DeviceConfig(
                    a["pv"], EdgeKind.PV_INVERTER, "sunspec", f"127.0.0.1:{modbus_port}", 1
                ),
                DeviceConfig(a["bat"], EdgeKind.BATTERY, "sunspec", f"127.0.0.1:{modbus_port}", 2),
                DeviceConfig(
                    a["ev"],
                    EdgeKind.EV_CHARGER,
                    "opcua",
                    opcua.endpoint_url,
                    opcua_client_cert=client_cert,
                    opcua_client_key=client_key,
                    opcua_server_cert=server_cert,
                    opcua_application_uri=OPCUA_CLIENT_URI,
                ),
            ),
        )
        site.edge = EdgeNode(config, clock=self.clock)
        await site.edge.start()

    def send_commands(self) -> None:
        """One round of signed setpoints: battery cycles, PV cap alternates, EV at full power;
        every fourth round adds an unsafe battery setpoint that the edges' local limits refuse."""
        cp = self.system.control_plane
        self.command_round += 1
        r = self.command_round
        for site in self.sites:
            a = site.assets
            cp.dispatcher.send_active_power(site.site_id, a["bat"], (-2.0, 0.0, 2.0)[r % 3])
            cp.dispatcher.send_active_power(site.site_id, a["pv"], (10.0, 6.0)[r % 2])
            cp.dispatcher.send_active_power(site.site_id, a["ev"], -11.0)
            if r % 4 == 0:  # deliberately unsafe (above the 5 kW rating): the edge must refuse
                cp.dispatcher.send_active_power(site.site_id, a["bat"], 8.0)

    def _edges(self) -> list[EdgeNode]:
        edges = [s.edge for s in self.sites if s.edge is not None]
        if self.grid is not None and self.grid.edge is not None:
            edges.append(self.grid.edge)
        return edges

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Stop sampling and wait until every outbox is empty."""
        for edge in self._edges():
            await edge.stop_sampling()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if all(e.outbox.stats().pending_batches == 0 for e in self._edges()):
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self) -> None:
        if self.grid is not None:
            await self.grid.stop()
        for site in self.sites:
            if site.edge is not None:
                await site.edge.stop()
            await site.opcua.stop()
            await site.modbus.stop()
        await self.system.stop()

    def summary(self) -> dict[str, Any]:
        cp = self.system.control_plane
        ids = [s.site_id for s in self.sites]
        rtu = self.grid.edge if self.grid is not None else None
        counts = cp.store.counts(ids + ([RTU_SITE] if rtu is not None else []))
        sent = pending = dead = 0
        per_site = {}
        if rtu is not None:
            st = rtu.outbox.stats()
            sent += st.sealed_measurements
            pending += st.pending_measurements
            dead += st.dead_letter_measurements
            rtu_counts = cp.store.counts([RTU_SITE])
            per_site[RTU_SITE] = {
                "measurements_sent": st.sealed_measurements,
                "measurements_committed": rtu_counts.measurements,
                "measurements_quarantined": rtu_counts.quarantined,
                "pending": st.pending_measurements,
                "link": _active_link(rtu),
                "connected": bool(_active_link(rtu)),
            }
        for s in self.sites:
            assert s.edge is not None
            st = s.edge.outbox.stats()
            sent += st.sealed_measurements
            pending += st.pending_measurements
            dead += st.dead_letter_measurements
            site_counts = cp.store.counts([s.site_id])
            per_site[s.site_id] = {
                "measurements_sent": st.sealed_measurements,
                "measurements_committed": site_counts.measurements,
                "measurements_quarantined": site_counts.quarantined,
                "pending": st.pending_measurements,
                "link": _active_link(s.edge),
                "connected": bool(_active_link(s.edge)),
                "commands_applied": s.edge.executor.applied,
                "commands_refused": s.edge.executor.refused,
            }
        status = cp.dispatcher.status_counts(ids)
        stats = cp.pipeline.stats
        return {
            "sites": len(self.sites),
            "transport": self.options.transport,
            "measurements_sent": sent,
            "measurements_committed": counts.measurements,
            "measurements_quarantined": counts.quarantined,
            "measurements_pending": pending,
            "measurements_dead_lettered": dead,
            "measurements_lost": sent - counts.measurements - counts.quarantined - pending - dead,
            "batches_committed": counts.batches,
            "batches_duplicate": stats.batches_duplicate,
            "batches_rejected": stats.batches_refused,
            "commands_sent": sum(status.values()) - status.get("undeliverable", 0),
            "commands_applied": status.get("applied", 0),
            "commands_refused": status.get("refused", 0),
            "commands_failed": status.get("failed", 0),
            "commands_undeliverable": status.get("undeliverable", 0),
            "refusal_reasons": dict(stats.refusals),
            "gate": cp.gate.version,
            "gate_quarantined": dict(cp.gate.stats.by_detector),
            "alerts": len(cp.alerts.list()),
            "attack": self.attack.to_json() if self.attack is not None else None,
            "plan": _plan(cp.planning),
            "per_site": per_site,
        }

    def _latest(self, asset_id: str, quantity: int, fmt: str) -> str:
        v = self.system.control_plane.pipeline.state.get(asset_id, quantity)
        return "-" if v is None else format(v.value, fmt)

    def table(self) -> Table:
        s = self.summary()
        t = Table(
            title=f"Gridfort demo: {s['sites']} sites over {s['transport']}, mutual TLS, signed",
            caption=(
                f"batches committed {s['batches_committed']}, duplicates "
                f"{s['batches_duplicate']}, rejected {s['batches_rejected']}; commands sent "
                f"{s['commands_sent']}, applied {s['commands_applied']}, refused "
                f"{s['commands_refused'] + s['commands_failed']}; FDI gate: {s['gate']}"
                + _plan_line(s["plan"])
                + _attack_line(s["attack"], s["alerts"])
            ),
        )
        for col in (
            "site",
            "link",
            "PV kW",
            "bat kW",
            "bat SOC",
            "EV kW",
            "EV SOC",
            "sent",
            "committed",
            "quar.",
            "pending",
            "cmds ok",
        ):
            t.add_column(col, justify="left" if col in ("site", "link") else "right")
        p_q, soc_q = Q.QUANTITY_ACTIVE_POWER, Q.QUANTITY_STATE_OF_CHARGE
        for site in self.sites:
            p = s["per_site"][site.site_id]
            a = site.assets
            link = p["link"] if p["connected"] else "[red]down[/red]"
            t.add_row(
                site.site_id,
                link,
                self._latest(a["pv"], p_q, ".2f"),
                self._latest(a["bat"], p_q, "+.2f"),
                self._latest(a["bat"], soc_q, ".1f"),
                self._latest(a["ev"], p_q, ".2f"),
                self._latest(a["ev"], soc_q, ".1f"),
                str(p["measurements_sent"]),
                str(p["measurements_committed"]),
                str(p["measurements_quarantined"]),
                str(p["pending"]),
                str(p["commands_applied"]),
            )
        rtu = s["per_site"].get(RTU_SITE)
        if rtu is not None:
            t.add_row(
                f"{RTU_SITE} (grid)",
                rtu["link"] if rtu["connected"] else "[red]down[/red]",
                *([""] * 5),
                str(rtu["measurements_sent"]),
                str(rtu["measurements_committed"]),
                str(rtu["measurements_quarantined"]),
                str(rtu["pending"]),
                "",
            )
        t.add_row(
            "[b]total[/b]",
            "",
            "",
            "",
            "",
            "",
            "",
            str(s["measurements_sent"]),
            str(s["measurements_committed"]),
            str(s["measurements_quarantined"]),
            str(s["measurements_pending"]),
            str(s["commands_applied"]),
        )
        return t


def _plan(planning: PlanningCycle | None) -> dict[str, Any] | None:
    latest = None if planning is None else planning.latest
    return None if latest is None else latest.summary()


def _plan_line(plan: dict[str, Any] | None) -> str:
    if plan is None:
        return ""
    line = (
        f"\nplan ({plan['method']}, from gated state): {plan['status']}, "
        f"{plan['assets_planned']} assets planned, {plan['assets_excluded']} left out, "
        f"first quarter-hour {plan['first_step_kw']:+.1f} kW, solved in {plan['wall_s']:.2f} s"
    )
    diagnosis = plan.get("diagnosis") or []
    if plan["status"] == "fallback" and diagnosis:  # why the safe plan: what binds
        first = diagnosis[0]
        line += f"\n  why: {first['constraint']}: {first['message']}"
    return line


def _attack_line(attack: dict[str, Any] | None, alerts: int) -> str:
    if attack is None:
        return f"; alerts {alerts}"
    if attack["caught"]:
        status = (
            f"[green]caught[/green] by {attack['expected_detector']} after "
            f"{attack['detection_delay_s']:.1f} s, {attack['quarantined']} measurements quarantined"
        )
    else:
        status = "[yellow]not caught yet[/yellow]"
    return f"\nattack {attack['scenario']}: {attack['detail']}: {status}; alerts {alerts}"


async def _run(options: DemoOptions) -> dict[str, Any]:
    console = Console()
    demo = Demo(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    console.print(
        f"[b]Gridfort demo[/b]: state in {options.state_dir}; starting "
        f"{options.sites} sites (Ctrl-C to stop)"
    )
    try:
        await demo.start()
        cp = demo.system.control_plane
        console.print(
            f"control plane {cp.spiffe_id}: link {', '.join(demo.system.link_endpoints)}, "
            f"enrollment {demo.system.bootstrap_endpoint}, audit log {cp.paths.audit_log}"
        )
        started = loop.time()
        next_command = started + 2.0
        attack_at = started + options.attack_after_s if options.attack else None
        plan_at: float | None = started + PLAN_AFTER_S  # once gated state has arrived
        planning: asyncio.Future[Any] | None = None
        with Live(
            demo.table(), console=console, refresh_per_second=2, transient=not sys.stdout.isatty()
        ) as live:
            while not stop.is_set():
                now = loop.time()
                if options.duration_s is not None and now - started >= options.duration_s:
                    break
                if now >= next_command:
                    demo.send_commands()
                    next_command = now + options.command_interval_s
                if plan_at is not None and now >= plan_at and cp.planning is not None:
                    planning = asyncio.ensure_future(cp.planning.plan_now())
                    plan_at = None
                if attack_at is not None and now >= attack_at:
                    demo.launch_attack()
                    attack_at = None
                demo.observe_attack()
                live.update(demo.table())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await stop.wait()
        if planning is not None:
            await planning
        console.print("stopping sampling and draining outboxes ...")
        drained = await demo.drain()
        await asyncio.sleep(1.0)  # last command results
        demo.observe_attack()
        summary = demo.summary()
        summary["drained"] = drained
        console.print(demo.table())
        return summary
    finally:
        await demo.stop()


def run_demo(options: DemoOptions) -> int:
    _prepare_state_dir(options.state_dir)
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its startup chatter, not ours
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # nats-py's TLS close notices
    summary = asyncio.run(_run(options))
    text = json.dumps(summary, indent=2, sort_keys=True)
    if options.json_summary is not None:
        options.json_summary.parent.mkdir(parents=True, exist_ok=True)
        options.json_summary.write_text(text + "\n")
    ok = (
        summary["measurements_sent"]
        == summary["measurements_committed"] + summary["measurements_quarantined"]
        and summary["measurements_lost"] == 0
    )
    attack = summary["attack"]
    caught = attack is None or attack["caught"]
    verdict = ("OK" if caught else "ATTACK NOT CAUGHT") if ok else "MISMATCH"
    print(
        f"{verdict}: sent {summary['measurements_sent']} = committed "
        f"{summary['measurements_committed']} + quarantined "
        f"{summary['measurements_quarantined']}; lost {summary['measurements_lost']}; "
        f"commands sent {summary['commands_sent']}, applied {summary['commands_applied']}"
    )
    if attack is not None:
        delay = attack["detection_delay_s"]
        print(
            f"attack {attack['scenario']} ({attack['detail']}): "
            + (
                f"caught by {attack['expected_detector']} after {delay:.1f} s; "
                f"{attack['quarantined']} measurements quarantined, with evidence, "
                f"alerts {summary['alerts']}"
                if attack["caught"]
                else "NOT caught"
            )
        )
    return 0 if ok and caught else 1
