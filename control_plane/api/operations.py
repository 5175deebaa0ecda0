"""What each REST route does, against the live control plane; returns JSON-ready values.

Blocking reads (SQLite, the audit verifier) run in worker threads so a slow
query never stalls ingest on the event loop. Nothing here decides who may
call what (``routes.decide`` did) or writes HTTP (``rest`` does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import math
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from control_plane.alerts import Alert, AlertBook, AlertNotFoundError
from control_plane.api.problems import ApiRefusal, not_found
from control_plane.api.quarantine import (
    quantity_name,
    recent_gate_quarantine,
    unit_name,
)
from control_plane.assets.model import CANONICAL_UNIT, CHANNELS
from control_plane.dispatch.activation import ActivationEvent
from control_plane.dispatch.afrr import AfrrActivation
from control_plane.gate.gate import GateStats
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.transports.streams import StreamRegistry
from security.audit_log import AuditVerification, verify_audit_log
from security.clock import Clock
from security.identity import Role
from security.refusals import Reason, Refusal

Json = dict[str, Any]


class TransportPorts(Protocol):
    """What the API reports about the other listeners (``ControlPlane`` has these)."""

    @property
    def link_ports(self) -> list[int]: ...

    @property
    def bootstrap_port(self) -> int: ...

    @property
    def nats_url(self) -> str | None: ...


class HasStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


class Planning(HasStatus, Protocol):
    """The planning cycle as the API sees it (:class:`control_plane.planning.PlanningCycle`)."""

    async def activate_afrr(
        self, event: ActivationEvent, requested_by: str
    ) -> AfrrActivation | Refusal: ...


#: Store a weather forecast document from the named identity; the store's answer.
WeatherSubmit = Callable[[Mapping[str, Any], str], Awaitable[dict[str, Any]]]


class HasGateStats(Protocol):
    version: str
    stats: GateStats


@dataclass(frozen=True)
class ApiSources:
    """The live objects the API reads (built by the composition root)."""

    control_plane_id: str
    alerts: AlertBook
    pipeline: IngestPipeline
    gate: HasGateStats
    streams: StreamRegistry
    transports: TransportPorts
    telemetry_db: Path
    audit_log: Path
    clock: Clock
    planning: Planning | None = None  # the planning cycle, when configured
    weather: WeatherSubmit | None = None  # the live PV model's weather feed, when configured
    follower: HasStatus | None = None  # the store follower, with NATS ingest (workers)


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as its repr (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` in [0, 100] of ``samples``; None if there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def verify_audit_snapshot(path: Path) -> AuditVerification:
    """Verify the records complete when called: writers append whole lines under an exclusive
    ``flock``, so the size read under a shared lock ends on a record boundary; that prefix is
    copied (beside the log, same permissions as the state dir) and verified while writers go on."""
    with open(path, "rb") as src:
        fcntl.flock(src.fileno(), fcntl.LOCK_SH)
        try:
            size = os.fstat(src.fileno()).st_size
        finally:
            fcntl.flock(src.fileno(), fcntl.LOCK_UN)
        with tempfile.TemporaryDirectory(prefix=".audit-verify-", dir=path.parent) as d:
            copy = Path(d) / path.name
            with open(copy, "wb") as dst:
                remaining = size
                while remaining > 0:
                    chunk = src.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    dst.write(chunk)
                    remaining -= len(chunk)
            result = verify_audit_log(copy)
    return dataclasses.replace(result, path=str(path))


def alert_json(alert: Alert) -> Json:
    return jsonable(alert.to_json())  # type: ignore[no-any-return]


class ApiOperations:
    def __init__(self, sources: ApiSources, *, query_deadline_s: float = 5.0) -> None:
        self._s = sources
        self._deadline_s = query_deadline_s
        self._verifying: asyncio.Future[AuditVerification] | None = None

    # -- SOC -----------------------------------------------------------------------------------
    async def list_alerts(self, status: str | None, site_id: str | None, limit: int) -> Json:
        alerts = await asyncio.to_thread(self._s.alerts.list, status=status, site_id=site_id)
        page = [alert_json(a) for a in alerts[:limit]]
        return {"alerts": page, "count": len(page), "truncated": len(alerts) > limit}

    async def get_alert(self, alert_id: str) -> Json | ApiRefusal:
        try:
            alert = await asyncio.to_thread(self._s.alerts.get, alert_id)
        except AlertNotFoundError:
            return not_found("no such alert")
        return alert_json(alert)

    async def acknowledge_alert(
        self, alert_id: str, analyst: str
    ) -> tuple[Json, bool] | ApiRefusal:
        """(the alert, whether this call acknowledged it). Acknowledging twice changes nothing:
        the first analyst and time stay."""
        try:
            alert = await asyncio.to_thread(self._s.alerts.get, alert_id)
            if alert.status == "acknowledged":
                return alert_json(alert), False
            alert = await asyncio.to_thread(self._s.alerts.acknowledge, alert_id, analyst)
        except AlertNotFoundError:
            return not_found("no such alert")
        return alert_json(alert), True

    async def quarantine(self, site_id: str | None, limit: int) -> Json:
        rows = await asyncio.to_thread(
            recent_gate_quarantine,
            self._s.telemetry_db,
            site_id=site_id,
            limit=limit,
            deadline_s=self._deadline_s,
        )
        return {"measurements": jsonable(rows), "count": len(rows)}

    async def verify_audit(self) -> Json:
        """Run the chain verifier; concurrent callers share one run."""
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.ensure_future(
                asyncio.to_thread(verify_audit_snapshot, self._s.audit_log)
            )
        v = await asyncio.shield(self._verifying)
        return {
            "ok": v.ok,
            "records": v.records,
            "head_hash": v.head_hash or None,
            "first_bad_line": v.first_bad_line,
            "first_bad_seq": v.first_bad_seq,
            "problem": v.problem or None,
        }

    # -- operators -----------------------------------------------------------------------------
    def _connected(self) -> dict[str, list[Json]]:
        out: dict[str, list[Json]] = {}
        for stream in self._s.streams.all():
            sid = stream.peer.spiffe_id
            if sid.role is Role.EDGE and not stream.closed.is_set():
                out.setdefault(sid.name, []).append(
                    {"opened_ms": stream.opened_ms, "last_seen_ms": stream.last_seen_ms}
                )
        return out

    def status(self, rest_port: int) -> Json:
        ingest = self._s.pipeline.stats
        gate = self._s.gate.stats
        latency = list(gate.latency_ms)
        connected = self._connected()
        t = self._s.transports
        follower = self._s.follower
        return jsonable(  # type: ignore[no-any-return]
            {
                "control_plane": self._s.control_plane_id,
                "now_ms": self._s.clock.now_ms(),
                "ingest": {
                    "batches_committed": ingest.batches_committed,
                    "batches_duplicate": ingest.batches_duplicate,
                    "batches_refused": ingest.batches_refused,
                    "measurements_committed": ingest.measurements_committed,
                    "measurements_quarantined": ingest.measurements_quarantined,
                    "refusals": dict(sorted(ingest.refusals.items())),
                },
                "gate": {
                    "version": self._s.gate.version,
                    "batches": gate.batches,
                    "measurements_judged": gate.measurements_judged,
                    "measurements_quarantined": gate.measurements_quarantined,
                    "by_detector": dict(sorted(gate.by_detector.items())),
                    "latency_ms": {
                        "p50": percentile(latency, 50),
                        "p99": percentile(latency, 99),
                        "samples": len(latency),
                    },
                },
                "transports": {
                    "grpc": {
                        "link_ports": list(t.link_ports),
                        "bootstrap_port": t.bootstrap_port,
                        "open_streams": sum(len(v) for v in connected.values()),
                    },
                    "nats": {"enabled": t.nats_url is not None, "url": t.nats_url}
                    | ({} if follower is None else {"follower": follower.status()}),
                    "rest": {"port": rest_port},
                },
                "sites_connected": [
                    {
                        "site_id": site,
                        "streams": len(streams),
                        "since_ms": min(s["opened_ms"] for s in streams),
                    }
                    for site, streams in sorted(connected.items())
                ],
            }
        )

    def sites(self) -> Json:
        snap = self._s.pipeline.registry_snapshot
        connected = self._connected()
        return jsonable(  # type: ignore[no-any-return]
            {
                "sites": [
                    {
                        "site_id": site,
                        "connected": site in connected,
                        "edge_allowed": self._s.pipeline.edge_allowed(site),
                        "assets": [
                            {
                                "asset_id": a.asset_id,
                                "kind": a.kind.value,
                                "rated_p_kw": a.rated_p_kw,
                                "e_kwh": a.e_kwh,
                            }
                            for a in sorted(snap.assets_of(site), key=lambda a: a.asset_id)
                        ],
                    }
                    for site in sorted(snap.sites)
                ]
            }
        )

    def plan(self) -> Json | ApiRefusal:
        """The planning cycle's status; 404 when this control plane does not plan."""
        if self._s.planning is None:
            return not_found("no planning cycle runs here ([control_plane.planning] is absent)")
        return jsonable(self._s.planning.status())  # type: ignore[no-any-return]

    async def submit_weather(self, document: Mapping[str, Any], operator: str) -> Json | ApiRefusal:
        """Store a day-ahead weather forecast; 404 where no live PV model runs, a refusal
        (``MALFORMED_REQUEST`` with the store's precise message) stores nothing."""
        if self._s.weather is None:
            return not_found(
                "no weather feed here ([control_plane.planning] with pv_live_model is absent)"
            )
        answer = await self._s.weather(document, operator)
        if not answer.get("accepted"):
            return ApiRefusal(
                Reason.MALFORMED_REQUEST,
                f"{answer.get('reason')}: {answer.get('message')}",
                details={"weather_reason": str(answer.get("reason"))},
            )
        return answer

    async def activate_afrr(self, event: ActivationEvent, operator: str) -> Json | ApiRefusal:
        """Pass an aFRR request on to the planning cycle; 404 when nothing plans here, 409
        (``AFRR_NOT_AVAILABLE``) when no dispatched plan reserved aFRR that way."""
        if self._s.planning is None:
            return not_found("no planning cycle runs here ([control_plane.planning] is absent)")
        outcome = await self._s.planning.activate_afrr(event, operator)
        if isinstance(outcome, Refusal):
            return ApiRefusal(outcome.reason, outcome.message)
        return jsonable(outcome.summary())  # type: ignore[no-any-return]

    def asset_state(self, asset_id: str) -> Json | ApiRefusal:
        """Gated values only (what the optimizer may see) and whether the asset is suspect."""
        asset = self._s.pipeline.registry_snapshot.asset(asset_id)
        if asset is None:
            return not_found("no such asset")
        state = self._s.pipeline.state
        values = []
        for quantity in CHANNELS.get(asset.kind, {}):
            gated = state.get(asset_id, quantity)
            if gated is not None:
                values.append(
                    {
                        "quantity": quantity_name(quantity),
                        "unit": unit_name(CANONICAL_UNIT[quantity]),
                        "ts_ms": gated.ts_ms,
                        "value": gated.value,
                    }
                )
        return jsonable(  # type: ignore[no-any-return]
            {
                "asset_id": asset.asset_id,
                "site_id": asset.site_id,
                "kind": asset.kind.value,
                "suspect": state.is_suspect(asset_id, self._s.clock.now_ms()),
                "last_gate_quarantine_ms": state.last_gate_quarantine_ms(asset_id),
                "values": values,
            }
        )
