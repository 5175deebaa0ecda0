"""The embedded deployment: a CA, a control plane and enrolled edges in one state directory.

Used by ``gridfort demo``, the benchmarks and the end-to-end tests, so that all
three exercise exactly the production path (real gRPC over loopback with mutual
TLS, real enrollment with one-time tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from control_plane.app import ControlPlane, StatePaths, init_state
from control_plane.assets.model import Asset
from control_plane.config import ControlPlaneConfig
from control_plane.ingest.pipeline import IngestPipeline
from edge_node.credentials import EdgeCredentials, enroll
from security.clock import Clock, SystemClock


class EmbeddedSystem:
    def __init__(
        self,
        state_dir: Path,
        *,
        trust_domain: str = "gridfort.local",
        clock: Clock | None = None,
        link_addresses: tuple[str, ...] = ("127.0.0.1:0",),
        pipeline_cls: type[IngestPipeline] = IngestPipeline,
        api_address: str | None = "127.0.0.1:0",
        **config: Any,
    ) -> None:
        self._pipeline_cls = pipeline_cls
        self.state_dir = state_dir
        self.trust_domain = trust_domain
        self.clock = clock or SystemClock()
        self._config = ControlPlaneConfig(
            state_dir=state_dir,
            trust_domain=trust_domain,
            link_addresses=link_addresses,
            bootstrap_address="127.0.0.1:0",
            api_address=api_address,
            **config,
        )
        self.cp: ControlPlane | None = None

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.state_dir)

    @property
    def control_plane(self) -> ControlPlane:
        if self.cp is None:
            raise RuntimeError("the embedded control plane is not running")
        return self.cp

    async def start(self) -> ControlPlane:
        if not self.paths.ca.exists():
            init_state(self.state_dir, self.trust_domain, self.clock)
        self.cp = ControlPlane(self._config, self.clock, pipeline_cls=self._pipeline_cls)
        await self.cp.start()
        return self.cp

    async def stop(self) -> None:
        if self.cp is not None:
            await self.cp.stop()
            self.cp = None

    async def restart(self) -> ControlPlane:
        """Stop and start the control plane on the same ports (edges see a brief outage)."""
        cp = self.control_plane
        ports, bootstrap, api_port = cp.link_ports, cp.bootstrap_port, cp.api_port
        # an embedded broker keeps its client port too, so edges reconnect to the same URL
        # (a loopback cluster's nodes get new random ports unless nats_port was fixed)
        nats_port = self._config.nats_port
        if cp.nats is not None and self._config.nats_cluster_size == 1 and cp.nats.urls:
            nats_port = int(cp.nats.urls[0].rsplit(":", 1)[1])
        await self.stop()
        self._config = ControlPlaneConfig(
            **{
                **{k: getattr(self._config, k) for k in self._config.__dataclass_fields__},
                "link_addresses": tuple(f"127.0.0.1:{p}" for p in ports),
                "bootstrap_address": f"127.0.0.1:{bootstrap}",
                "api_address": None if api_port is None else f"127.0.0.1:{api_port}",
                "nats_port": nats_port,
            }
        )
        return await self.start()

    @property
    def link_endpoints(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{p}" for p in self.control_plane.link_ports)

    @property
    def bootstrap_endpoint(self) -> str:
        return f"127.0.0.1:{self.control_plane.bootstrap_port}"

    @property
    def api_url(self) -> str:
        """``https://127.0.0.1:<port>`` of the REST API (RuntimeError when it is off)."""
        port = self.control_plane.api_port
        if port is None:
            raise RuntimeError("the embedded control plane runs without the REST API")
        return f"https://127.0.0.1:{port}"

    def register_site(self, site_id: str, assets: Iterable[Asset]) -> None:
        cp = self.control_plane
        cp.registry.add_site(site_id, self.clock.now_ms())
        cp.registry.add_assets(assets)
        cp.pipeline.refresh()

    def issue_token(self, site_id: str, ttl_s: int = 600) -> str:
        return self.control_plane.tokens.issue(site_id, ttl_s=ttl_s)

    async def enroll_edge(self, site_id: str, edge_dir: Path) -> EdgeCredentials:
        cp = self.control_plane
        return await enroll(
            directory=edge_dir,
            site_id=site_id,
            token=self.issue_token(site_id),
            bootstrap_address=self.bootstrap_endpoint,
            bundle_pem=cp.ca.trust_bundle_pem(),
            trust_domain=self.trust_domain,
        )
