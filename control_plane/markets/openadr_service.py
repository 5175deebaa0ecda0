"""The running OpenADR 2.0b VEN: events in, audited opt decisions, constraints to the planner.

:class:`OpenAdrConfig` is the ``[control_plane.openadr]`` section, validated at load with
errors naming the field. :class:`OpenAdrService` owns a :class:`GridfortVen` and, for every
event the VTN sends (new, modified or cancelled), :meth:`OpenAdrService.handle_event`:

1. parses and checks it (:func:`refusal_for`): malformed, unknown signal, a level not 0..3,
   a load increase, a reduction above ``max_reduction_kw``, a window in the past, too far
   ahead or too long -> ``optOut`` with a stable :class:`OpenAdrReason`;
2. computes the fleet's available reduction from gated state only
   (:func:`available_reduction` over the event's remaining duration) minus what overlapping
   accepted events already claim, and opts in only if the reduction fits (:func:`opt_for`);
3. audits the decision (``openadr.event``, allow/deny with the reason) *before* storing an
   accepted constraint with the fleet's gated net import as its baseline; an audit or
   storage failure is an ``optOut`` (``INTERNAL``);
4. keeps accepted constraints in ``openadr.db`` (a restart keeps them) and gives the planner
   :meth:`active_constraints` for a day, as optimizer :class:`DemandResponse` caps.

The VTN's telemetry report is the fleet's net import [W] from gated state (+ import).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from control_plane.assets.model import ID_PATTERN, Asset
from control_plane.markets.flexibility import FlexibilityRules
from control_plane.markets.openadr_planning import (
    available_reduction,
    demand_response_for,
    fleet_import_kw,
)
from control_plane.markets.openadr_store import AcceptedConstraint, ConstraintStore
from control_plane.markets.openadr_ven import (
    CANCELLED,
    OPT_IN,
    OPT_OUT,
    EventLimits,
    EventRefusal,
    GridfortVen,
    OpenAdrReason,
    constraint_for,
    event_from_openleadr,
    opt_for,
    refusal_for,
)
from control_plane.optimizer.assets import DemandResponse
from control_plane.state import GatedStateView
from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import ConfigError
from security.tasks import reap

log = logging.getLogger(__name__)

EVENT = "openadr.event"  #: audit event of every decision
_FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){4,63}$")
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class OpenAdrConfig:
    """The ``[control_plane.openadr]`` config section.

    ``vtn_url``: the VTN's OpenADR 2.0b endpoint (``https://``; plain ``http://`` only on
    loopback); ``ven_name`` and optional ``ven_id``: how this VEN registers;
    ``poll_interval_s`` [s] (absent: the VTN's requested frequency); ``report_interval_s`` [s]:
    sampling of the fleet power report; ``tls_cert``/``tls_key``: the VEN's client
    certificate and key (both or neither; they also sign messages), ``tls_ca``: CA bundle for
    the VTN, ``vtn_fingerprint``: the VTN certificate's fingerprint (XML signatures);
    ``site_ids``: the sites an event constrains (empty: the whole fleet); ``max_event_h``,
    ``max_lead_h`` [h], ``max_reduction_kw`` [kW]: events beyond them are refused;
    ``flexibility_max_age_s`` [s]: oldest gated sample counted.
    """

    vtn_url: str
    ven_name: str
    ven_id: str | None = None
    poll_interval_s: float | None = None
    report_interval_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    vtn_fingerprint: str | None = None
    site_ids: tuple[str, ...] = ()
    max_event_h: float = 12.0
    max_lead_h: float = 48.0
    max_reduction_kw: float = 100_000.0
    flexibility_max_age_s: float = 60.0

    def __post_init__(self) -> None:
        _check_url(self.vtn_url)
        for name in ("ven_name", "ven_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and ID_PATTERN.match(value)):
                raise ConfigError(f"openadr.{name}: must match {ID_PATTERN.pattern}")
        _range("poll_interval_s", self.poll_interval_s, 1, 3600, optional=True)
        _range("report_interval_s", self.report_interval_s, 1, 3600)
        _range("max_event_h", self.max_event_h, 0.25, 48)
        _range("max_lead_h", self.max_lead_h, 0, 7 * 24)
        _range("max_reduction_kw", self.max_reduction_kw, 1, 1e6)
        _range("flexibility_max_age_s", self.flexibility_max_age_s, 1, 3600)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("openadr.tls_cert, tls_key: give both or neither")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"openadr.{name}: {path} is not a file")
        fp = self.vtn_fingerprint
        if fp is not None and not (isinstance(fp, str) and _FINGERPRINT_RE.match(fp)):
            raise ConfigError("openadr.vtn_fingerprint: expected hex pairs like 'AB:CD:...'")
        sites = tuple(self.site_ids)
        if not all(isinstance(s, str) and ID_PATTERN.match(s) for s in sites):
            raise ConfigError(f"openadr.site_ids: each must match {ID_PATTERN.pattern}")
        object.__setattr__(self, "site_ids", sites)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base: Path) -> OpenAdrConfig:
        """From the parsed ``[openadr]`` table; relative TLS paths are against ``base``."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"openadr: unknown field(s): {', '.join(sorted(unknown))}")
        for required in ("vtn_url", "ven_name"):
            if required not in raw:
                raise ConfigError(f"openadr.{required}: required")
        values = dict(raw)
        for name in ("tls_cert", "tls_key", "tls_ca"):
            if values.get(name) is not None:
                values[name] = (base / str(values[name])).resolve()
        if "site_ids" in values:
            if not isinstance(values["site_ids"], list | tuple):
                raise ConfigError("openadr.site_ids: must be a list of site ids")
            values["site_ids"] = tuple(values["site_ids"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"openadr: {e}") from e

    def limits(self) -> EventLimits:
        return EventLimits(
            max_duration_ms=round(self.max_event_h * 3_600_000),
            max_lead_ms=round(self.max_lead_h * 3_600_000),
            max_reduction_kw=self.max_reduction_kw,
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``openleadr.OpenADRClient``."""
        opts: dict[str, Any] = {}
        if self.ven_id is not None:
            opts["ven_id"] = self.ven_id
        if self.tls_cert is not None and self.tls_key is not None:
            opts["cert"], opts["key"] = str(self.tls_cert), str(self.tls_key)
        if self.tls_ca is not None:
            opts["ca_file"] = str(self.tls_ca)
        if self.vtn_fingerprint is not None:
            opts["vtn_fingerprint"] = self.vtn_fingerprint
        return opts


def _range(name: str, value: float | None, lo: float, hi: float, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi
    if not ok:
        raise ConfigError(f"openadr.{name}: must be between {lo:g} and {hi:g}")


def _check_url(url: object) -> None:
    if not isinstance(url, str):
        raise ConfigError("openadr.vtn_url: must be a URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("openadr.vtn_url: expected https://HOST[:PORT]/PATH")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError("openadr.vtn_url: plain http only on loopback; use https")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAdrService:
    """The VEN of one control plane (see the module docstring)."""

    def __init__(
        self,
        config: OpenAdrConfig,
        *,
        db_path: Path,
        state: GatedStateView,
        assets: Callable[[], Iterable[Asset]],
        audit: AuditLog,
        clock: Clock,
        flexibility_rules: FlexibilityRules | None = None,
    ) -> None:
        self.config = config
        self.store = ConstraintStore(db_path)
        self._state = state
        self._assets = assets
        self._audit = audit
        self._clock = clock
        self._limits = config.limits()
        self._max_age_ms = round(config.flexibility_max_age_s * 1000)
        self._rules = flexibility_rules or FlexibilityRules(max_age_ms=self._max_age_ms)
        self._sites = frozenset(config.site_ids)
        self.ven: GridfortVen | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the planner's view ------------------------------------------------------------------

    def active_constraints(self, day_start_ms: int) -> tuple[DemandResponse, ...]:
        """Accepted events as optimizer caps for the day starting at ``day_start_ms`` [ms]."""
        out: list[DemandResponse] = []
        for a in self.store.all():
            dr = demand_response_for(
                a.constraint,
                day_start_ms,
                baseline_import_kw=a.baseline_import_kw,
                site_ids=self._sites,
            )
            if dr is not None:
                out.append(dr)
        return tuple(out)

    def fleet_import_kw(self) -> float:
        """The fleet's net import [kW] (+ import) from gated state."""
        now_ms = self._clock.now_ms()
        return fleet_import_kw(self._assets(), self._state, now_ms, self._max_age_ms, self._sites)

    # -- events ------------------------------------------------------------------------------

    def handle_event(self, event: Mapping[str, Any]) -> str:
        """The opt for one openleadr event dict (module docstring); never raises."""
        try:
            return self._handle(event)
        except Exception as e:
            log.exception("OpenADR event handling failed")
            with contextlib.suppress(Exception):
                self._deny(_raw_id(event), EventRefusal(OpenAdrReason.INTERNAL, str(e)[:200]))
            return OPT_OUT

    def _handle(self, event: Mapping[str, Any]) -> str:
        now_ms = self._clock.now_ms()
        try:
            parsed = event_from_openleadr(event)
        except ValueError as e:
            return self._deny(_raw_id(event), EventRefusal(OpenAdrReason.MALFORMED_EVENT, str(e)))
        eid = parsed.event_id
        base: dict[str, object] = {
            "signal": f"{parsed.signal_name}/{parsed.signal_type}",
            "modification_number": parsed.modification_number,
            "start_ms": parsed.start_ms,
            "end_ms": parsed.end_ms,
        }
        if parsed.event_status == CANCELLED:
            removed = self.store.remove(eid)
            self._audit.append(
                EVENT,
                decision="info",
                identity=self.config.vtn_url,
                reason="CANCELLED",
                details={**base, "event_id": eid, "opt": OPT_OUT, "removed": removed},
            )
            return OPT_OUT
        refusal = refusal_for(parsed, now_ms, self._limits)
        if refusal is not None:
            self.store.remove(eid)  # a modification may turn an accepted event unservable
            return self._deny(eid, refusal, base)
        start = max(parsed.start_ms, now_ms)
        hours = (parsed.end_ms - start) / 3_600_000
        flex = available_reduction(self._assets(), self._state, now_ms, hours, self._rules)
        committed = self.store.committed_kw(parsed.start_ms, parsed.end_ms, except_event=eid)
        available = max(flex.up_kw - committed, 0.0)
        constraint = constraint_for(parsed, available)
        facts = {
            **base,
            "verified_up_kw": round(flex.up_kw, 3),
            "committed_kw": round(committed, 3),
            "available_kw": round(available, 3),
            **flex.basis(),
        }
        if constraint is None:  # refusal_for lets only served signals through
            return self._deny(
                eid, EventRefusal(OpenAdrReason.UNSUPPORTED_SIGNAL, "unserved"), facts
            )
        facts["reduce_load_kw"] = round(constraint.reduce_load_kw, 3)
        if opt_for(constraint, available) != OPT_IN:
            self.store.remove(eid)
            why = (
                f"reduction {constraint.reduce_load_kw:.1f} kW > available {available:.1f} kW "
                f"(verified {flex.up_kw:.1f} kW over {hours:.2f} h, {committed:.1f} kW committed)"
            )
            return self._deny(
                eid, EventRefusal(OpenAdrReason.ABOVE_VERIFIED_FLEXIBILITY, why), facts
            )
        baseline = self.fleet_import_kw()
        facts["baseline_import_kw"] = round(baseline, 3)
        self._audit.append(  # audited first: an unrecorded commitment is never made
            EVENT,
            decision="allow",
            identity=self.config.vtn_url,
            details={**facts, "event_id": eid, "opt": OPT_IN},
        )
        if constraint.reduce_load_kw <= 0:
            self.store.remove(eid)  # level 0: normal operation, nothing to plan
        else:
            self.store.put(
                AcceptedConstraint(constraint, baseline, parsed.modification_number, now_ms)
            )
        return OPT_IN

    def _deny(
        self, event_id: str, refusal: EventRefusal, facts: Mapping[str, object] | None = None
    ) -> str:
        self._audit.append(
            EVENT,
            decision="deny",
            identity=self.config.vtn_url,
            reason=refusal.reason.value,
            details={
                **(facts or {}),
                "event_id": event_id,
                "opt": OPT_OUT,
                "message": refusal.message,
            },
        )
        log.warning("OpenADR event %s opted out: %s %s", event_id, refusal.reason, refusal.message)
        return OPT_OUT

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_ven(self) -> GridfortVen:
        c = self.config
        return GridfortVen(
            c.ven_name,
            c.vtn_url,
            decide=self.handle_event,
            fleet_power_w=lambda: self.fleet_import_kw() * 1000.0,
            report_sampling=timedelta(seconds=c.report_interval_s),
            poll_interval=None
            if c.poll_interval_s is None
            else timedelta(seconds=c.poll_interval_s),
            client_options=c.client_options(),
        )

    async def start(self) -> None:
        """Register with the VTN in the background, retrying with backoff until it answers."""
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        delay_s = 1.0
        while True:
            ven = self._new_ven()
            try:
                await ven.start()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await ven.stop()
                raise
            except Exception:
                log.exception("OpenADR VEN could not start")
            if ven.registered:
                self.ven = ven
                log.info(
                    "OpenADR VEN %s registered with %s", self.config.ven_name, self.config.vtn_url
                )
                return
            with contextlib.suppress(Exception):
                await ven.stop()
            log.warning(
                "OpenADR VTN %s did not register us; retry in %.0f s", self.config.vtn_url, delay_s
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 60.0)

    async def wait_registered(self, timeout_s: float) -> None:
        """Until the VEN is registered (for tests and start-up checks)."""
        if self._task is not None:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    async def stop(self) -> None:
        await reap(self._task)
        self._task = None
        if self.ven is not None:
            with contextlib.suppress(Exception):
                await self.ven.stop()
            self.ven = None


def _raw_id(event: Mapping[str, Any]) -> str:
    try:
        return str(event["event_descriptor"]["event_id"])[:128]
    except Exception:
        return "?"
