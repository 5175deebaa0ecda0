"""The REST route table and the authorization decision: default deny, no I/O.

Every route names the roles that may call it; a role not named is refused
(``ROLE_NOT_ALLOWED``, 403). A request is decided in this order, so that a
caller learns nothing it may not know: path syntax (400), route (404),
method (405), role (403), query (400). The OpenAPI document is generated from
this same table (``control_plane.api.openapi``), so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.api.inputs import (
    ParamKind,
    QueryParam,
    QueryValues,
    is_id,
    parse_query,
    split_target,
)
from control_plane.api.problems import ApiRefusal, malformed
from control_plane.assets.model import ID_PATTERN
from security.identity import Role
from security.refusals import Reason

SOC = frozenset({Role.SOC})
OPERATOR = frozenset({Role.OPERATOR})
HUMANS = frozenset({Role.SOC, Role.OPERATOR})

#: The largest weather forecast body [bytes]: 1,000 quarter-hours of about 80 bytes each,
#: with room for indentation.
WEATHER_MAX_BODY_BYTES = 256 << 10
#: Largest page of a list [items].
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

ALERT_STATUSES = ("open", "acknowledged")

#: Path parameters (each one path segment matching ID_PATTERN) and what they name.
PATH_PARAMS: dict[str, str] = {
    "alert_id": "the alert's id",
    "asset_id": "a registered asset's id",
}


def _limit(what: str) -> QueryParam:
    return QueryParam(
        "limit",
        ParamKind.INT,
        f"the most {what} to return, newest first",
        minimum=1,
        maximum=MAX_LIMIT,
        default=DEFAULT_LIMIT,
    )


_SITE = QueryParam("site", ParamKind.ID, "only this site")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # "/v1/alerts/{alert_id}": fixed segments and {path_param} segments
    operation_id: str
    roles: frozenset[Role]
    summary: str
    query: tuple[QueryParam, ...] = ()
    has_body: bool = False
    max_body_bytes: int | None = None  # None: the API's limit (RestSettings.max_body_bytes)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.template[1:].split("/"))

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(s[1:-1] for s in self.segments if s.startswith("{"))


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/alerts",
        "listAlerts",
        SOC,
        "Alerts raised by the false-data-injection gate, newest activity first",
        (
            QueryParam("status", ParamKind.ENUM, "only alerts in this state", ALERT_STATUSES),
            _SITE,
            _limit("alerts"),
        ),
    ),
    Route("GET", "/v1/alerts/{alert_id}", "getAlert", SOC, "One alert with its latest evidence"),
    Route(
        "POST",
        "/v1/alerts/{alert_id}/ack",
        "acknowledgeAlert",
        SOC,
        "Acknowledge an alert as the analyst named by the client certificate",
        has_body=True,
    ),
    Route(
        "GET",
        "/v1/quarantine",
        "listQuarantine",
        SOC,
        "Recent measurements quarantined by the gate, with the gate's evidence",
        (_SITE, _limit("measurements")),
    ),
    Route("GET", "/v1/audit/verify", "verifyAudit", SOC, "Verify the audit log's hash chain now"),
    Route(
        "GET",
        "/v1/status",
        "getStatus",
        OPERATOR,
        "Ingest, gate and transport counters and the sites connected now",
    ),
    Route("GET", "/v1/sites", "listSites", OPERATOR, "Registered sites and their assets"),
    Route(
        "GET",
        "/v1/state/{asset_id}",
        "getAssetState",
        OPERATOR,
        "An asset's latest gated values and whether it is suspect",
    ),
    Route(
        "GET",
        "/v1/plan",
        "getPlan",
        OPERATOR,
        "The planning cycle: the newest plan's summary and the loop's counters",
    ),
    Route(
        "POST",
        "/v1/afrr/activations",
        "activateAfrr",
        OPERATOR,
        "Activate the aFRR the current plan reserved (the pool's setpoint; 0 ends it)",
        has_body=True,
    ),
    Route(
        "PUT",
        "/v1/weather",
        "putWeatherForecast",
        OPERATOR,
        "A day-ahead weather forecast (GHI, air temperature per quarter-hour) for live PV",
        has_body=True,
        max_body_bytes=WEATHER_MAX_BODY_BYTES,
    ),
    Route("GET", "/v1/openapi.json", "getOpenApi", HUMANS, "This API's OpenAPI 3.1 document"),
)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """An authorized request: which route, its path parameters and its validated query."""

    route: Route
    path_params: dict[str, str]
    query: QueryValues


def _bind(route: Route, segments: tuple[str, ...]) -> dict[str, str] | None:
    """The path parameters if ``segments`` fit the template's shape, else None."""
    template = route.segments
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for t, s in zip(template, segments, strict=True):
        if t.startswith("{"):
            params[t[1:-1]] = s
        elif t != s:
            return None
    return params


def decide(method: str, raw_target: str, role: Role) -> RouteMatch | ApiRefusal:
    """Decide one request of an authenticated peer (see the module docstring for the order)."""
    split = split_target(raw_target)
    if isinstance(split, ApiRefusal):
        return split
    segments, query = split
    bound = [(r, p) for r in ROUTES if (p := _bind(r, segments)) is not None]
    if not bound:
        return ApiRefusal(Reason.NOT_FOUND, "no such route")
    chosen = next(((r, p) for r, p in bound if r.method == method), None)
    if chosen is None:
        allowed = tuple(sorted({r.method for r, _ in bound}))
        return ApiRefusal(
            Reason.METHOD_NOT_ALLOWED,
            f"method not allowed here (allowed: {', '.join(allowed)})",
            allow=allowed,
        )
    route, params = chosen
    if role not in route.roles:
        return ApiRefusal(
            Reason.ROLE_NOT_ALLOWED,
            f"role {role.value} may not {route.method} {route.template}",
            details={"route": route.template},
        )
    for name, value in params.items():
        if not is_id(value):
            return malformed(f"{name} must match {ID_PATTERN.pattern}")
    values = parse_query(query, route.query)
    if isinstance(values, ApiRefusal):
        return values
    return RouteMatch(route, params, values)
