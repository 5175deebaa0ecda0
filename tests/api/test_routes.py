"""The route table and the authorization decision, without sockets: default deny, strict input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.api.problems import REFUSAL_STATUSES, ApiRefusal
from control_plane.api.routes import DEFAULT_LIMIT, MAX_LIMIT, ROUTES, RouteMatch, decide
from security.identity import Role
from security.refusals import Reason


def concrete(template: str) -> str:
    """A template with every {param} filled by a valid id."""
    return "/".join("x1" if s.startswith("{") else s for s in template.split("/"))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_each_route_admits_exactly_its_roles(route: object, role: Role) -> None:
    assert hasattr(route, "template")
    result = decide(route.method, concrete(route.template), role)  # type: ignore[attr-defined]
    if role in route.roles:  # type: ignore[attr-defined]
        assert isinstance(result, RouteMatch) and result.route is route
    else:
        assert isinstance(result, ApiRefusal)
        assert (result.reason, result.status) == (Reason.ROLE_NOT_ALLOWED, 403)


def test_nobody_but_soc_and_operators_may_use_the_api() -> None:
    for route in ROUTES:
        assert route.roles <= {Role.SOC, Role.OPERATOR}


def test_unknown_route_is_not_found() -> None:
    for target in ("/v1/nope", "/v2/alerts", "/v1/alerts/x1/ack/more", "/", "/v1"):
        result = decide("GET", target, Role.SOC)
        assert isinstance(result, ApiRefusal) and result.reason is Reason.NOT_FOUND


def test_wrong_method_is_405_with_the_allowed_methods() -> None:
    result = decide("DELETE", "/v1/alerts", Role.SOC)
    assert isinstance(result, ApiRefusal) and result.status == 405 and result.allow == ("GET",)
    result = decide("GET", "/v1/alerts/x1/ack", Role.SOC)
    assert isinstance(result, ApiRefusal) and result.allow == ("POST",)
    for method in ("HEAD", "OPTIONS", "PUT", "PATCH", "TRACE", "get"):
        assert isinstance(decide(method, "/v1/status", Role.OPERATOR), ApiRefusal)


def test_decision_order_reveals_nothing_a_role_may_not_know() -> None:
    # role before query: an operator learns nothing about the SOC route's parameters
    refusal = decide("GET", "/v1/alerts?status=bogus", Role.OPERATOR)
    assert isinstance(refusal, ApiRefusal) and refusal.reason is Reason.ROLE_NOT_ALLOWED
    # role before path parameters
    refusal = decide("GET", "/v1/state/-bad", Role.SOC)
    assert isinstance(refusal, ApiRefusal) and refusal.reason is Reason.ROLE_NOT_ALLOWED
    # path syntax first of all
    refusal = decide("GET", "/v1/../v1/status", Role.EDGE)
    assert isinstance(refusal, ApiRefusal) and refusal.reason is Reason.MALFORMED_REQUEST


@pytest.mark.parametrize(
    "target",
    [
        "/v1/state/..",
        "/v1/state/../../etc/passwd",
        "/v1/state/.",
        "/v1/state/%2e%2e",
        "/v1/state/a%2Fb",
        "/v1/state/a%00",
        "/v1/alerts//ack",
        "//v1/status",
        "/v1/status/",
        "/v1/state/-leading-dash",
        "/v1/state/" + "a" * 65,
        "/v1/state/a b",
        "/v1/state/a\nb",
        "/v1/state/é",
        "http://evil/v1/status",
        "*",
        "",
        "/v1/status#frag",
        "/v1/state/" + "a" * 3000,
    ],
)
def test_path_traversal_and_odd_ids_are_malformed(target: str) -> None:
    result = decide("GET", target, Role.OPERATOR)
    assert isinstance(result, ApiRefusal) and result.status == 400, result


@pytest.mark.parametrize(
    "query",
    [
        "bogus=1",
        "status=open&status=open",
        "status=OPEN",
        "status=",
        "site=",
        "site=..",
        "site=a%2Fb",
        "limit=0",
        f"limit={MAX_LIMIT + 1}",
        "limit=-1",
        "limit=1e3",
        "limit=ten",
        "limit=99999999999999999999",
        "a=1&",
        "&",
        "status",
        "site=%ff",
        "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9",
    ],
)
def test_bad_query_is_malformed(query: str) -> None:
    result = decide("GET", f"/v1/alerts?{query}", Role.SOC)
    assert isinstance(result, ApiRefusal) and result.status == 400, result


def test_good_query_is_typed_and_defaults_filled() -> None:
    result = decide("GET", "/v1/alerts?status=open&site=s-1.a_b&limit=7", Role.SOC)
    assert isinstance(result, RouteMatch)
    assert result.query == {"status": "open", "site": "s-1.a_b", "limit": 7}
    result = decide("GET", "/v1/quarantine", Role.SOC)
    assert isinstance(result, RouteMatch) and result.query == {"limit": DEFAULT_LIMIT}
    result = decide("GET", "/v1/status?x=1", Role.OPERATOR)
    assert isinstance(result, ApiRefusal) and result.status == 400  # no query at all here


def test_path_parameters_are_bound() -> None:
    result = decide("POST", "/v1/alerts/0123abcd/ack", Role.SOC)
    assert isinstance(result, RouteMatch) and result.path_params == {"alert_id": "0123abcd"}
    result = decide("GET", "/v1/state/cigre_mv.bus1", Role.OPERATOR)
    assert isinstance(result, RouteMatch) and result.path_params == {"asset_id": "cigre_mv.bus1"}


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "X"]),
    target=st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda a, b: f"/v1/{a}?{b}",
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789./%-_", max_size=30),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=&%;.", max_size=30),
        ),
    ),
    role=st.sampled_from(list(Role)),
)
def test_any_request_is_decided_without_raising(method: str, target: str, role: Role) -> None:
    result = decide(method, target, role)
    if isinstance(result, ApiRefusal):
        assert result.status in REFUSAL_STATUSES
        assert result.body().startswith(b'{"reason": ')
    else:
        assert role in result.route.roles and result.route.method == method
