"""REST API test support: real client certificates from the embedded CA, a real HTTPS client.

The ``system`` fixture (tests/conftest.py) runs the control plane with the REST
API on a random loopback port. ``clients(role, name)`` issues a certificate for
``spiffe://gridfort.test/<role>/<name>`` from the deployment's own CA and
returns a client holding it; ``raw_request`` sends exact bytes over mutual TLS
(HTTP clients normalise ``..`` away, an attacker does not).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.embedded import EmbeddedSystem
from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import telemetry_pb2 as tpb
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN
from tests.e2e.raw_link import RawLink, sign_batch

Q, U = tpb.Quantity, tpb.Unit
Row = tuple[str, int, int, float, int]  # asset, quantity, unit, value, ts_ms


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        return str(self.json()["reason"])


def tls_context(
    directory: Path, bundle_pem: bytes, chain_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """A client context trusting ``bundle_pem``, presenting (chain, key) if given."""
    ctx = ssl.create_default_context(cadata=bundle_pem.decode())
    if chain_pem is not None and key_pem is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.pem").write_bytes(chain_pem)
        (directory / "tls.key").write_bytes(key_pem)
        ctx.load_cert_chain(directory / "tls.pem", directory / "tls.key")
    return ctx


@dataclass
class ApiClient:
    url: str
    ctx: ssl.SSLContext
    identity: str

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> Answer:
        async def go(s: aiohttp.ClientSession) -> Answer:
            async with s.request(
                method, self.url + path, ssl=self.ctx, data=body, headers=headers
            ) as r:
                return Answer(r.status, dict(r.headers), await r.read())

        if session is not None:
            return await go(session)
        async with aiohttp.ClientSession() as s:
            return await go(s)

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    async def post_json(self, path: str, value: object, **kw: Any) -> Answer:
        headers = {"Content-Type": "application/json"}
        return await self.request(
            "POST", path, body=json.dumps(value).encode(), headers=headers, **kw
        )

    async def raw(self, data: bytes) -> Answer:
        return await raw_request(self.url, self.ctx, data)


async def raw_request(url: str, ctx: ssl.SSLContext, data: bytes) -> Answer:
    """Send ``data`` as is over TLS; read the whole answer (send ``Connection: close``)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(int(lines[0].split()[1]), headers, body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 answer (with Content-Length) off a stream, without waiting for EOF."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), 10)
    return Answer(int(lines[0].split()[1]), headers, body)


Clients = Callable[..., ApiClient]


@pytest.fixture
def clients(system: EmbeddedSystem, tmp_path: Path) -> Clients:
    """``clients(Role.SOC, "alice")``: a client with a fresh certificate from the system's CA."""

    def make(
        role: Role, name: str, *, ttl_s: int = 600, not_before_ms: int | None = None
    ) -> ApiClient:
        cp = system.control_plane
        spiffe_id = SpiffeId(TRUST_DOMAIN, role, name)
        key_pem, issued = cp.ca.issue_with_new_key(
            spiffe_id, ttl_s=ttl_s, not_before_ms=not_before_ms
        )
        ctx = tls_context(
            tmp_path / "clients" / f"{role.value}-{name}",
            cp.ca.trust_bundle_pem(),
            issued.chain_pem,
            key_pem,
        )
        return ApiClient(system.api_url, ctx, spiffe_id.uri)

    return make


def edge_client(system: EmbeddedSystem, creds: EdgeCredentials, directory: Path) -> ApiClient:
    """A client presenting an enrolled edge's own certificate."""
    ctx = tls_context(directory, creds.bundle_pem, creds.chain_pem, creds.tls_key_pem)
    return ApiClient(system.api_url, ctx, creds.spiffe_id.uri)


def audit_records(system: EmbeddedSystem) -> list[dict[str, Any]]:
    path = system.control_plane.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()]


def api_denials(system: EmbeddedSystem, event: str = "api_request") -> list[dict[str, Any]]:
    return [r for r in audit_records(system) if r["event"] == event and r["decision"] == "deny"]


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds (no timing is asserted: the bound only ends a hang)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


# -- telemetry that the gate quarantines ---------------------------------------------------------


def _batch(site: str, seq: int, sealed_ms: int, rows: Sequence[Row]) -> tpb.TelemetryBatch:
    return tpb.TelemetryBatch(
        site_id=site,
        seq=seq,
        sealed_ms=sealed_ms,
        measurements=[
            tpb.Measurement(asset_id=a, quantity=q, unit=u, value=v, ts_ms=t)  # type: ignore[arg-type]
            for a, q, u, v, t in rows
        ],
    )


class BatteryEdge:
    """An enrolled site on a real EdgeLink stream, reporting its battery honestly or lying."""

    def __init__(self, system: EmbeddedSystem, creds: EdgeCredentials) -> None:
        self.system = system
        self.creds = creds
        self.seq = creds.next_seq
        self.link = RawLink.for_edge(system.link_endpoints[0], creds)
        self.asset = f"{creds.site_id}-bat"
        self.soc = 40.0
        self.t = system.clock.now_ms() - 200_000  # samples every 10 s, ending before now

    async def _send(self, rows: list[Row]) -> lpb.BatchReceipt:
        now = self.system.clock.now_ms()
        seq, self.seq = self.seq, self.seq + 1
        batch = _batch(self.creds.site_id, seq, now, rows)
        await self.link.send_envelope(sign_batch(self.creds.signer, batch, now))
        return await self.link.recv_receipt()

    async def honest(self, n: int = 13, p_kw: float = -4.0) -> lpb.BatchReceipt:
        """``n`` samples of a charging 10 kWh battery, 95 % efficient, 10 s apart."""
        rows: list[Row] = []
        for k in range(n):
            if k:
                self.soc += 100 * (-p_kw * 10 / 3600 * 0.95) / 10.0
                self.t += 10_000
            rows += [
                (self.asset, Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, p_kw, self.t),
                (self.asset, Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, round(self.soc, 1), self.t),
            ]
        receipt = await self._send(rows)
        assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED and receipt.quarantined == 0
        return receipt

    async def inflate_soc(self, by_pct: float = 30.0, p_kw: float = -4.0) -> lpb.BatchReceipt:
        """One sample whose state of charge jumps by ``by_pct``: the gate quarantines it."""
        self.t += 10_000
        receipt = await self._send(
            [
                (self.asset, Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, p_kw, self.t),
                (
                    self.asset,
                    Q.QUANTITY_STATE_OF_CHARGE,
                    U.UNIT_PCT,
                    round(self.soc, 1) + by_pct,
                    self.t,
                ),
            ]
        )
        assert receipt.status == lpb.RECEIPT_STATUS_COMMITTED and receipt.quarantined == 1
        return receipt

    async def close(self) -> None:
        await self.link.close()


EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]
