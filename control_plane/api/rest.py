"""The REST API for SOC analysts and operators: HTTPS with mutual TLS, default deny.

One aiohttp listener. Every request takes the same path through one function
(:meth:`RestApi._handle`), whatever its method or target:

1. TLS (``control_plane.api.tls``): client certificate required, chained to our
   CA, valid now; handshake refusals are audited there;
2. authenticate: the certificate's SPIFFE ID, trust domain, validity and
   revocation, by the ingest pipeline's own stage-1 function, on every request
   (a revocation reaches open keep-alive connections at their next request);
3. decide (``routes.decide``): path syntax, route, method, role, query;
4. bounded body (``max_body_bytes``), then the operation, all under
   ``request_timeout_s``;
5. one audit record per decision (``access_audit``, throttled under floods;
   state changes never throttled), and a JSON answer: the resource, or
   ``{"reason", "message"}`` with 400/401/403/404/405/413/415/500/503.

Hardening: TLS handshake timeout, keep-alive timeout (also for connections that
never send a request), a maximum connection age, a connection cap, small
request-line and header limits, no tracebacks or server version to the peer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from control_plane.api.access_audit import AccessAudit, AccessDecision
from control_plane.api.inputs import parse_ack_body, parse_afrr_body, parse_json_object
from control_plane.api.openapi import openapi_document
from control_plane.api.operations import ApiOperations, Json
from control_plane.api.problems import AnyReason, ApiRefusal, malformed
from control_plane.api.routes import RouteMatch, decide
from control_plane.api.tls import ApiTlsContext
from control_plane.ingest.stages.authenticate import authenticate
from control_plane.ingest.types import Peer
from control_plane.tls_identity import ServerIdentity
from security.audit_log import AuditLog
from security.clock import Clock
from security.identity import Role
from security.refusals import ConfigError, Reason, Refusal
from security.revocation import RevocationList
from security.tasks import reap

log = logging.getLogger(__name__)

ALL_ROLES = frozenset(Role)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Server": "gridfort",
}


@dataclass(frozen=True)
class RestSettings:
    """Limits of the REST listener. Sizes in bytes, times in seconds."""

    address: str  # HOST:PORT (port 0: pick one)
    max_body_bytes: int = 16 << 10
    request_timeout_s: float = 10.0
    handshake_timeout_s: float = 5.0
    keepalive_timeout_s: float = 15.0
    max_connection_age_s: float = 300.0
    max_connections: int = 128
    max_line_bytes: int = 4096
    max_header_bytes: int = 4096
    max_headers: int = 32
    # After answering before a body was read (413, 503), drain it this long, then close:
    # the client gets to read the answer instead of a reset, and cannot hold the slot.
    lingering_s: float = 2.0
    housekeeping_interval_s: float = 1.0

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"api address {self.address!r}: expected HOST:PORT")
        if not 1024 <= self.max_body_bytes <= 1 << 20:
            raise ValueError("max_body_bytes must be between 1 KiB and 1 MiB")
        if self.request_timeout_s <= 0 or self.handshake_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


def _dumps(payload: Json) -> bytes:
    return json.dumps(payload, allow_nan=False).encode()


@dataclass
class _Exchange:
    """What is known about one request so far (for its audit record)."""

    method: str
    target: str
    identity: str = ""
    route: str = "-"


class _RefuseConnection(asyncio.Protocol):
    """Answers a connection over the cap by closing it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _MtlsSite(web.BaseSite):
    """A TCP site with a TLS handshake timeout and a connection cap (``TCPSite`` has neither)."""

    __slots__ = ("_api", "_bound_port")

    def __init__(self, runner: web.BaseRunner, api: RestApi, ssl_context: ssl.SSLContext) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._api = api
        self._bound_port = 0

    @property
    def name(self) -> str:
        return f"https://{self._api.settings.host}:{self._bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        settings = self._api.settings

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= settings.max_connections:
                self._api.connection_refused()
                return _RefuseConnection()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            settings.host,
            settings.port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=settings.handshake_timeout_s,
            backlog=128,
        )
        sockets = self._server.sockets
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else 0


class RestApi:
    """The REST listener; built by the composition root, started and stopped with it."""

    def __init__(
        self,
        settings: RestSettings,
        *,
        identity: ServerIdentity,
        trust_bundle_pem: bytes,
        trust_domain: str,
        revocations: RevocationList,
        audit: AuditLog,
        clock: Clock,
        operations: ApiOperations,
    ) -> None:
        self.settings = settings
        self._trust_domain = trust_domain
        self._revocations = revocations
        self._revocation_snapshot = revocations.snapshot()
        self._clock = clock
        self.operations = operations
        self.access = AccessAudit(audit, clock)
        self._tls = ApiTlsContext(identity, trust_bundle_pem, self._handshake_refused)
        self._openapi = json.dumps(openapi_document()).encode()
        self._runner: web.AppRunner | None = None
        self._site: _MtlsSite | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._first_seen: dict[RequestHandler, float] = {}

    @property
    def port(self) -> int:
        return self._site._bound_port if self._site is not None else 0

    async def start(self) -> None:
        @web.middleware
        async def everything(request: web.Request, handler: Handler) -> web.StreamResponse:
            # No aiohttp routes exist: ``handler`` is its 404. Every request, whatever its
            # method or target, takes the one audited path.
            return await self._handle(request)

        s = self.settings
        app = web.Application(middlewares=[everything], client_max_size=s.max_body_bytes)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=1.0,
            keepalive_timeout=s.keepalive_timeout_s,
            max_line_size=s.max_line_bytes,
            max_field_size=s.max_header_bytes,
            max_headers=s.max_headers,
            lingering_time=s.lingering_s,
            handler_cancellation=True,
        )
        await self._runner.setup()
        self._site = _MtlsSite(self._runner, self, self._tls.context)
        try:
            await self._site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError(f"api_address {s.address}: cannot listen ({e.strerror})") from e
        self._housekeeping = asyncio.ensure_future(self._housekeep())
        log.info("REST API listening on %s", self._site.name)

    async def stop(self) -> None:
        await reap(self._housekeeping)
        if self._runner is not None:
            await self._runner.cleanup()
        self._tls.close()
        self.access.flush()

    # -- housekeeping ----------------------------------------------------------------------------
    async def _housekeep(self) -> None:
        """Every second: write flood summaries; close connections past their maximum age."""
        while True:
            await asyncio.sleep(self.settings.housekeeping_interval_s)
            try:
                self.access.flush()
                self._age_connections()
            except Exception:  # never let housekeeping die
                log.exception("REST housekeeping failed")

    def _age_connections(self) -> None:
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return
        now = asyncio.get_running_loop().time()
        live = server.connections
        self._first_seen = {c: self._first_seen.get(c, now) for c in live}
        max_age = self.settings.max_connection_age_s
        for conn, since in self._first_seen.items():
            if now - since > max_age + self.settings.request_timeout_s:
                conn.force_close()  # e.g. still trickling one request's headers
            elif now - since > max_age:
                conn.close()  # after the request in progress, if any

    def connection_refused(self) -> None:
        self.access.record(
            AccessDecision(
                "deny",
                "",
                "-",
                0,
                Reason.UNAVAILABLE.value,
                message="connection refused: too many open connections",
                event="api_connection",
            )
        )

    def _handshake_refused(self, reason: AnyReason, message: str) -> None:
        self.access.record(
            AccessDecision("deny", "", "-", 0, reason.value, message=message, event="api_handshake")
        )

    # -- one request -----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ex = _Exchange(method=request.method[:16], target=request.raw_path)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self._serve(request, ex)
        except TimeoutError:
            timeout = self.settings.request_timeout_s
            return self._refuse(
                ex, ApiRefusal(Reason.UNAVAILABLE, f"the request took longer than {timeout} s")
            )
        except Exception:
            log.exception("REST request %s %s failed", ex.method, ex.route)
            return self._refuse(
                ex, ApiRefusal(Reason.INTERNAL, "the control plane could not answer the request")
            )

    async def _serve(self, request: web.Request, ex: _Exchange) -> web.StreamResponse:
        peer = self._authenticate(request)
        if isinstance(peer, ApiRefusal):
            ex.identity = peer.identity
            return self._refuse(ex, peer)
        ex.identity = peer.uri
        match = decide(request.method, request.raw_path, peer.spiffe_id.role)
        if isinstance(match, ApiRefusal):
            if match.details.get("route"):
                ex.route = str(match.details["route"])
            return self._refuse(ex, match)
        ex.route = match.route.template
        body = await self._read_body(request, match)
        if isinstance(body, ApiRefusal):
            return self._refuse(ex, body)
        result = await self._operate(match, peer, request.headers.get(hdrs.CONTENT_TYPE), body)
        if isinstance(result, ApiRefusal):
            return self._refuse(ex, result)
        payload, details = result
        body_out = payload if isinstance(payload, bytes) else _dumps(payload)
        self.access.record(
            AccessDecision(
                "allow",
                ex.identity,
                ex.route,
                200,
                method=ex.method,
                target=ex.target,
                details=details,
                always=match.route.method != "GET",
            )
        )
        return self._response(200, body_out)

    def _authenticate(self, request: web.Request) -> Peer | ApiRefusal:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii") if der else None
        if self._revocations.current_version() != self._revocation_snapshot.version:
            self._revocation_snapshot = self._revocations.snapshot()
        result = authenticate(
            pem,
            trust_domain=self._trust_domain,
            allowed_roles=ALL_ROLES,  # which role may do what: routes.decide
            revocations=self._revocation_snapshot,
            now_ms=self._clock.now_ms(),
        )
        if isinstance(result, Refusal):
            return ApiRefusal(result.reason, result.message, result.identity)
        return result

    async def _read_body(self, request: web.Request, match: RouteMatch) -> bytes | ApiRefusal:
        limit = match.route.max_body_bytes or self.settings.max_body_bytes
        too_big = ApiRefusal(Reason.OVERSIZED, f"the request body is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            return too_big
        if not match.route.has_body:
            if request.body_exists:
                return malformed("this route takes no request body")
            return b""
        chunks, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                return too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _operate(
        self, match: RouteMatch, peer: Peer, content_type: str | None, body: bytes
    ) -> tuple[Json | bytes, dict[str, object]] | ApiRefusal:
        ops, op = self.operations, match.route.operation_id
        q, p = match.query, match.path_params
        result: Json | ApiRefusal
        if op == "listAlerts":
            status, site = q.get("status"), q.get("site")
            result = await ops.list_alerts(
                None if status is None else str(status),
                None if site is None else str(site),
                int(q["limit"]),
            )
        elif op == "getAlert":
            result = await ops.get_alert(p["alert_id"])
        elif op == "acknowledgeAlert":
            ack = parse_ack_body(content_type if body else None, body)
            if isinstance(ack, ApiRefusal):
                return ack
            acked = await ops.acknowledge_alert(p["alert_id"], peer.uri)
            if isinstance(acked, ApiRefusal):
                return acked
            alert, changed = acked
            details: dict[str, object] = {"alert_id": p["alert_id"], "acknowledged": changed}
            if ack.note:
                details["note"] = ack.note
            return alert, details
        elif op == "listQuarantine":
            site = q.get("site")
            result = await ops.quarantine(None if site is None else str(site), int(q["limit"]))
        elif op == "verifyAudit":
            result = await ops.verify_audit()
        elif op == "getStatus":
            result = ops.status(self.port)
        elif op == "listSites":
            result = ops.sites()
        elif op == "getAssetState":
            result = ops.asset_state(p["asset_id"])
        elif op == "getPlan":
            result = ops.plan()
        elif op == "putWeatherForecast":
            document = parse_json_object(content_type, body)
            if isinstance(document, ApiRefusal):
                return document
            result = await ops.submit_weather(document, peer.uri)
        elif op == "activateAfrr":
            event = parse_afrr_body(content_type, body)
            if isinstance(event, ApiRefusal):
                return event
            result = await ops.activate_afrr(event, peer.uri)
            if not isinstance(result, ApiRefusal):
                return result, {"activation_id": event.activation_id, "delta_kw": event.delta_kw}
        elif op == "getOpenApi":
            return self._openapi, {}
        else:  # a route without an operation is a bug: refuse, never guess
            return ApiRefusal(Reason.INTERNAL, "the control plane could not answer the request")
        return result if isinstance(result, ApiRefusal) else (result, dict(p))

    # -- answers ---------------------------------------------------------------------------------
    def _refuse(self, ex: _Exchange, refusal: ApiRefusal) -> web.Response:
        self.access.record(
            AccessDecision(
                "deny",
                ex.identity,
                ex.route,
                refusal.status,
                refusal.reason.value,
                method=ex.method,
                target=ex.target,
                message=refusal.message,
                details=refusal.details,
            )
        )
        response = self._response(refusal.status, refusal.body())
        if refusal.allow:
            response.headers["Allow"] = ", ".join(refusal.allow)
        if refusal.status == 401:
            response.headers["WWW-Authenticate"] = f'mutual-tls realm="{self._trust_domain}"'
        if refusal.status in (413, 500, 503):
            response.force_close()  # an unread body or a confused exchange: start afresh
        return response

    @staticmethod
    def _response(status: int, body: bytes) -> web.Response:
        response = web.Response(status=status, body=body, content_type="application/json")
        response.headers.update(_SECURITY_HEADERS)
        return response
