"""Properties: the Rego arithmetic agrees with Python's on lot increments and price bands.

The embedded engine has arithmetic quirks (``%`` and ``max`` misbehave; see
docs/policy-writing.md), so the rules that depend on arithmetic are checked against a
Python oracle over many generated values.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.markets.actions import Product
from control_plane.markets.policy.gateway import build_input
from control_plane.markets.policy.policy_set import read_policy_dir
from control_plane.markets.policy.rego_engine import RegoEngine
from tests.markets.conftest import POLICIES, context, submit

_ENGINE: list[RegoEngine] = []


def _engine() -> RegoEngine:
    if not _ENGINE:
        _ENGINE.append(RegoEngine(read_policy_dir(POLICIES)))
    return _ENGINE[0]


@settings(max_examples=150, deadline=None)
@given(
    kw=st.integers(min_value=1, max_value=25_000),
    product=st.sampled_from([Product.DAY_AHEAD, Product.FCR]),
)
def test_lot_increment_matches_integer_arithmetic(kw: int, product: Product) -> None:
    start = 1780380000000  # 2026-06-02 08:00 CEST, a 4-h block start
    action = submit(volume_mw=kw / 1000, product=product, delivery_start_ms=start)
    codes = (
        _engine()
        .decide(build_input(action, context(approvals=("spiffe://gridfort.test/operator/bob",))))
        .reason_codes
    )
    step = 100 if product is Product.DAY_AHEAD else 1000
    assert ("LOT_INCREMENT" in codes) == (kw % step != 0)
    assert ("LOT_TOO_SMALL" in codes) == (kw < step)


@settings(max_examples=150, deadline=None)
@given(
    price=st.integers(min_value=-500, max_value=4000),
    ref=st.integers(min_value=-500, max_value=4000),
)
def test_price_band_matches_python(price: int, ref: int) -> None:
    action = submit(price_eur_per_mwh=float(price), volume_mw=0.1)
    doc = build_input(action, context(reference_price_eur_per_mwh=float(ref)))
    codes = _engine().decide(doc).reason_codes
    band = max(abs(ref) * 50 / 100, 30)
    assert ("PRICE_OUT_OF_BAND" in codes) == (abs(price - ref) > band)
