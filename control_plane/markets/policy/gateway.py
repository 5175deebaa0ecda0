"""The policy gate every market action passes: input document -> engine -> audited decision.

:class:`PolicyGate` builds the policy input from an action and a :class:`MarketContext`
(computing gate closure and product alignment from the injected ``now``), asks the
engine, and audits every decision, allowed or denied, with its input, reasons, decision
ID and policy version. It fails closed: no policy loaded, an engine error, an engine
that does not answer within ``timeout_s``, a malformed decision, or an audit log that
cannot record the decision all end in a deny.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from control_plane.markets.actions import (
    CancelOrder,
    ManualOverride,
    MarketAction,
    ModifyOrder,
    SubmitOrder,
)
from control_plane.markets.gate_closure import delivery_aligned, gate_closure_ms, local_iso
from control_plane.markets.policy.engine import (
    Decision,
    PolicyEngine,
    PolicyEngineError,
    PolicyEngineUnavailable,
)
from security.audit_log import AuditLog
from security.identity import validate_trust_domain

log = logging.getLogger(__name__)

AUDIT_EVENT = "market.policy_decision"
NO_POLICY_VERSION = "none"
DEFAULT_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class MarketContext:
    """What the policy needs besides the action; every number comes from the caller.

    ``verified_flexibility_mw`` [MW] must be computed from gated state only (measurements
    that passed the false-data-injection gate) and already include, for a modify, the
    volume of the order being replaced; ``flexibility_basis`` says what it was computed
    from (counts of assets counted and left out: ``counted``, ``suspect``, ``stale``,
    ``no_state``), for the deny message and the audit record. ``position_mw`` [MW] is the
    net position of the product and delivery period (sell positive); ``exposure_eur``
    [EUR] the open exposure; ``reference_price_eur_per_mwh`` [EUR/MWh] the caller's
    reference price for the sanity band (None: unknown, which denies). ``approvals`` are
    the SPIFFE IDs of operators who approved this action (four eyes).
    """

    trust_domain: str
    now_ms: int
    verified_flexibility_mw: float = 0.0
    position_mw: float = 0.0
    exposure_eur: float = 0.0
    reference_price_eur_per_mwh: float | None = None
    kill_switch_on: bool = False
    approvals: tuple[str, ...] = field(default_factory=tuple)
    flexibility_basis: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if isinstance(self.now_ms, bool) or not isinstance(self.now_ms, int):
            raise ValueError("now_ms must be an integer (Unix epoch milliseconds)")
        for name in ("verified_flexibility_mw", "position_mw", "exposure_eur"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
        if self.verified_flexibility_mw < 0:
            raise ValueError("verified_flexibility_mw must not be negative")
        ref = self.reference_price_eur_per_mwh
        if ref is not None and (
            isinstance(ref, bool) or not isinstance(ref, int | float) or not math.isfinite(ref)
        ):
            raise ValueError("reference_price_eur_per_mwh must be a finite number or None")
        if not isinstance(self.kill_switch_on, bool):
            raise ValueError("kill_switch_on must be true or false")
        approvals = tuple(self.approvals)
        if not all(isinstance(a, str) for a in approvals):
            raise ValueError("approvals must be SPIFFE ID strings")
        object.__setattr__(self, "approvals", approvals)
        if self.flexibility_basis is not None:
            basis = dict(self.flexibility_basis)
            if not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in basis.items()
            ):
                raise ValueError("flexibility_basis maps names to counts >= 0")
            object.__setattr__(self, "flexibility_basis", basis)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, now_ms: int) -> MarketContext:
        """From JSON; ``now_ms`` is used unless the document pins ``now_ms``."""
        from control_plane.markets.actions import parse_instant_ms

        now = d.get("now_ms", d.get("now"))
        try:
            return cls(
                trust_domain=d["trust_domain"],
                now_ms=now_ms if now is None else parse_instant_ms(now, "now"),
                verified_flexibility_mw=d.get("verified_flexibility_mw", 0.0),
                position_mw=d.get("position_mw", 0.0),
                exposure_eur=d.get("exposure_eur", 0.0),
                reference_price_eur_per_mwh=d.get("reference_price_eur_per_mwh"),
                kill_switch_on=d.get("kill_switch_on", False),
                approvals=tuple(d.get("approvals", ())),
            )
        except KeyError as e:
            raise ValueError(f"context is missing the field {e.args[0]!r}") from None


def build_input(action: MarketAction, context: MarketContext) -> dict[str, object]:
    """The policy input document (schema in docs/policy-writing.md). Pure."""
    ctx: dict[str, object] = {
        "trust_domain": context.trust_domain,
        "now_ms": context.now_ms,
        "now_local": local_iso(context.now_ms),
        "kill_switch_on": context.kill_switch_on,
        "approvals": list(context.approvals),
        "verified_flexibility_kw": math.floor(context.verified_flexibility_mw * 1000),
        "position_kw": round(context.position_mw * 1000),
        "exposure_eur": context.exposure_eur,
        "reference_price_eur_per_mwh": context.reference_price_eur_per_mwh,
    }
    if context.flexibility_basis is not None:
        ctx["verified_flexibility_basis"] = dict(context.flexibility_basis)
    if isinstance(action, SubmitOrder | ModifyOrder | ManualOverride):
        product, start = action.terms.product, action.terms.delivery_start_ms
    elif isinstance(action, CancelOrder):
        product, start = action.product, action.delivery_start_ms
    else:
        product, start = None, None
    if product is not None and start is not None:
        closure = gate_closure_ms(product, start)
        ctx.update(
            {
                "gate_closure_ms": closure,
                "gate_closure_local": local_iso(closure),
                "delivery_start_local": local_iso(start),
                "delivery_aligned": delivery_aligned(product, start),
            }
        )
    return {"action": action.to_input(), "actor": action.actor.to_input(), "context": ctx}


class _Worker:
    """One daemon thread that runs engine calls, so a hung engine never blocks the caller
    (or interpreter exit); calls queue behind a hung one and time out too: fail closed."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Decision], Future[Decision]]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="policy-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def submit(self, fn: Callable[[], Decision]) -> Future[Decision]:
        fut: Future[Decision] = Future()
        self._jobs.put((fn, fut))
        return fut


class PolicyGate:
    """Decides and audits market actions. ``engine`` returns the active engine (or None);
    ``why_no_engine`` says why there is none (e.g. ``PolicyLoader.why_no_engine``)."""

    def __init__(
        self,
        engine: Callable[[], PolicyEngine | None],
        audit: AuditLog,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        engine_name: str = "regopy",
        why_no_engine: Callable[[], str] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        self._engine = engine
        self._audit = audit
        self._timeout_s = timeout_s
        self._engine_name = engine_name
        self._why_no_engine = why_no_engine
        self._worker = _Worker()

    def check(self, action: MarketAction, context: MarketContext) -> Decision:
        """The decision for ``action``; audited before it is returned. Never raises for the
        engine's sake: every failure is a deny."""
        input_doc = build_input(action, context)
        decision = self._decide(input_doc)
        try:
            self._audit.append(
                AUDIT_EVENT,
                decision="allow" if decision.allow else "deny",
                identity=action.actor.spiffe_id,
                reason="" if decision.allow else decision.reason_codes[0],
                details={
                    "decision_id": decision.decision_id,
                    "policy_version": decision.policy_version,
                    "engine": self._engine_name,
                    "action_kind": action.kind.value,
                    "reasons": decision.reasons,
                    "input": input_doc,
                },
            )
        except Exception as e:
            log.error("policy decision %s could not be audited: %s", decision.decision_id, e)
            return Decision(
                allow=False,
                reasons=[f"AUDIT_UNAVAILABLE: decision not auditable ({type(e).__name__})"],
                decision_id=decision.decision_id,
                policy_version=decision.policy_version,
            )
        return decision

    def _decide(self, input_doc: Mapping[str, object]) -> Decision:
        try:
            engine = self._engine()
        except Exception as e:
            log.warning("policy engine lookup failed: %s", e)
            engine = None
        if engine is None:
            return _deny(f"NO_POLICY_LOADED: {self._no_engine_text()}", NO_POLICY_VERSION)
        try:
            version = str(engine.policy_version)
        except Exception:
            version = NO_POLICY_VERSION
        fut = self._worker.submit(lambda: engine.decide(input_doc))
        try:
            decision = fut.result(timeout=self._timeout_s)
        except FutureTimeout:
            fut.cancel()
            ms = round(self._timeout_s * 1000)
            return _deny(f"ENGINE_TIMEOUT: no policy decision within {ms} ms", version)
        except PolicyEngineUnavailable as e:  # our adapters' own words: safe to pass on
            log.warning("policy engine unavailable: %s", e)
            return _deny(f"ENGINE_UNAVAILABLE: {self._engine_name}: {e}", version)
        except PolicyEngineError as e:
            log.warning("policy engine failed: %s", e)
            return _deny(f"ENGINE_ERROR: {self._engine_name} failed: {e}", version)
        except Exception as e:  # an engine bug: its text stays in the log
            log.warning("policy engine failed: %s", e)
            return _deny(f"ENGINE_ERROR: the policy engine failed ({type(e).__name__})", version)
        return _checked(decision, version)

    def _no_engine_text(self) -> str:
        why = ""
        if self._why_no_engine is not None:
            try:
                why = self._why_no_engine()
            except Exception:
                why = ""
        base = f"no tested policy set is loaded in the {self._engine_name} engine"
        return f"{base} ({why})" if why else base


def _deny(reason: str, policy_version: str) -> Decision:
    return Decision(
        allow=False, reasons=[reason], decision_id=uuid.uuid4().hex, policy_version=policy_version
    )


def _checked(decision: object, version: str) -> Decision:
    """Only a well-formed allow with no reasons allows; anything odd is an engine error."""
    if not isinstance(decision, Decision):
        return _deny("ENGINE_ERROR: the policy engine returned no decision", version)
    reasons_ok = isinstance(decision.reasons, list) and all(
        isinstance(r, str) for r in decision.reasons
    )
    if decision.allow is True and reasons_ok and not decision.reasons:
        return decision
    if decision.allow is False and reasons_ok and decision.reasons:
        return decision
    return _deny("ENGINE_ERROR: the policy engine returned a malformed decision", version)
