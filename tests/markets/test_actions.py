"""Market actions cannot exist malformed; what is well-typed goes to the policy unchanged."""

from __future__ import annotations

import math

import pytest

from control_plane.markets.actions import (
    Actor,
    KillSwitch,
    ManualOverride,
    ModifyOrder,
    OrderTerms,
    Product,
    SubmitOrder,
    action_from_dict,
    volume_mw_to_kw,
)
from tests.markets.conftest import ALICE, DELIVERY_MS, terms


@pytest.mark.parametrize(
    ("volume_mw", "kw"), [(0.1, 100), (5.05, 5050), (1.0, 1000), (0.001, 1), (150, 150000)]
)
def test_volume_is_exact_integer_kw(volume_mw: float, kw: int) -> None:
    assert volume_mw_to_kw(volume_mw) == kw


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, 0.0001, True, "5"])
def test_nonsense_volume_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        terms(volume_mw=bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_non_finite_price_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        terms(price_eur_per_mwh=bad)


def test_unknown_product_is_refused() -> None:
    with pytest.raises(ValueError):
        terms(product="balancing_xyz")


def test_negative_delivery_start_is_refused() -> None:
    with pytest.raises(ValueError):
        terms(delivery_start_ms=-1)


def test_manual_override_needs_a_note() -> None:
    with pytest.raises(ValueError):
        ManualOverride(ALICE, terms(), note="  ")


def test_kill_switch_engage_must_be_bool() -> None:
    with pytest.raises(ValueError):
        KillSwitch(ALICE, engage="yes")  # type: ignore[arg-type]


def test_forged_actor_survives_to_the_policy_with_parse_error() -> None:
    forged = Actor("spiffe://gridfort.test/operator/a/b", "operator")
    assert "path segments" in forged.parse_error
    assert forged.to_input()["spiffe_id"] == "spiffe://gridfort.test/operator/a/b"
    assert ALICE.parse_error == ""


def test_policy_input_uses_integer_kw() -> None:
    doc = SubmitOrder(ALICE, terms(volume_mw=5.1)).to_input()
    assert doc == {
        "kind": "submit",
        "product": "day_ahead",
        "side": "sell",
        "volume_kw": 5100,
        "price_eur_per_mwh": 80.0,
        "delivery_start_ms": DELIVERY_MS,
    }


def test_action_from_json_dict() -> None:
    action = action_from_dict(
        {
            "kind": "modify",
            "order_id": "o-7",
            "actor": {"spiffe_id": ALICE.spiffe_id, "role": "operator"},
            "product": "fcr",
            "side": "sell",
            "volume_mw": 2,
            "price_eur_per_mwh": 12.5,
            "delivery_start": "2026-06-02T08:00:00+02:00",
        }
    )
    assert isinstance(action, ModifyOrder)
    assert action.terms == OrderTerms(Product.FCR, "sell", 2, 12.5, 1780380000000)  # type: ignore[arg-type]


def test_action_from_json_names_missing_field() -> None:
    with pytest.raises(ValueError, match="volume_mw"):
        action_from_dict(
            {
                "kind": "submit",
                "actor": {"spiffe_id": ALICE.spiffe_id, "role": "operator"},
                "product": "fcr",
                "side": "sell",
                "price_eur_per_mwh": 1,
                "delivery_start_ms": 0,
            }
        )
