"""Shared market-policy fixtures: the repository's policy set compiled once, a gate with a
fresh audit log, and builders for actions and contexts at fixed, readable instants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from control_plane.markets.actions import (
    Actor,
    CancelOrder,
    KillSwitch,
    ManualOverride,
    OrderTerms,
    Product,
    Side,
    SubmitOrder,
)
from control_plane.markets.policy.gateway import MarketContext, PolicyGate
from control_plane.markets.policy.policy_set import read_policy_dir
from control_plane.markets.policy.rego_engine import RegoEngine
from security.audit_log import AuditLog
from security.clock import ManualClock

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TD = "gridfort.test"
BERLIN = ZoneInfo("Europe/Berlin")
ALICE = Actor(f"spiffe://{TD}/operator/alice", "operator")
BOB_ID = f"spiffe://{TD}/operator/bob"
SOC = Actor(f"spiffe://{TD}/soc/sam", "soc")


def berlin_ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    """A market-time wall clock reading as Unix epoch ms."""
    return int(datetime(y, mo, d, h, mi, tzinfo=BERLIN).timestamp() * 1000)


#: Delivery 2026-06-02 10:00 CEST; day-ahead gate 2026-06-01 12:00 CEST; now 1 h before it.
DELIVERY_MS = berlin_ms(2026, 6, 2, 8)
NOW_MS = berlin_ms(2026, 6, 1, 7)


def terms(**kw: Any) -> OrderTerms:
    base: dict[str, Any] = {
        "product": Product.DAY_AHEAD,
        "side": Side.SELL,
        "volume_mw": 5.0,
        "price_eur_per_mwh": 80.0,
        "delivery_start_ms": DELIVERY_MS,
    }
    base.update(kw)
    return OrderTerms(**base)


def submit(actor: Actor = ALICE, **kw: Any) -> SubmitOrder:
    return SubmitOrder(actor, terms(**kw))


def override(actor: Actor = ALICE, **kw: Any) -> ManualOverride:
    return ManualOverride(actor, terms(**kw), note="storm front, manual hedge")


def cancel(actor: Actor = ALICE, **kw: Any) -> CancelOrder:
    base: dict[str, Any] = {
        "order_id": "o-1",
        "product": Product.DAY_AHEAD,
        "delivery_start_ms": DELIVERY_MS,
    }
    base.update(kw)
    return CancelOrder(actor, **base)


def kill_switch(engage: bool, actor: Actor = SOC) -> KillSwitch:
    return KillSwitch(actor, engage)


def context(**kw: Any) -> MarketContext:
    base: dict[str, Any] = {
        "trust_domain": TD,
        "now_ms": NOW_MS,
        "verified_flexibility_mw": 20.0,
        "position_mw": 0.0,
        "exposure_eur": 0.0,
        "reference_price_eur_per_mwh": 75.0,
        "kill_switch_on": False,
        "approvals": (),
    }
    base.update(kw)
    return MarketContext(**base)


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def rego_engine() -> RegoEngine:
    return RegoEngine(read_policy_dir(POLICIES))


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl", ManualClock(NOW_MS))
    yield log
    log.close()


@pytest.fixture
def gate(rego_engine: RegoEngine, audit: AuditLog) -> PolicyGate:
    return PolicyGate(lambda: rego_engine, audit, timeout_s=2.0)
