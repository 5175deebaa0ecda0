"""The embedded nats-server, for real on loopback: mutual TLS, per-identity permissions,
JetStream, limits, lifecycle. Every server is stopped by its fixture."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from cryptography import x509
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from control_plane.transports import nats_server as nats_server_module
from control_plane.transports.nats_config import inbox_prefix
from control_plane.transports.nats_server import (
    STREAM_NAME,
    EmbeddedNats,
    PermissionViolation,
    client_tls,
    command_subject,
    nats_server_binary,
    parse_violation,
    telemetry_subject,
)
from security.ca import CertificateAuthority
from security.clock import ManualClock, SystemClock
from security.identity import Role, SpiffeId
from security.refusals import GridfortError

DOMAIN = "gridfort.test"
pytestmark = pytest.mark.timeout(30)


class Peer:
    """A nats-py client plus the asynchronous errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.nc: NatsClient | None = None

    async def error_cb(self, e: Exception) -> None:
        self.errors.append(e)

    async def wait_error(self, text: str, timeout_s: float = 3.0) -> Exception:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            for e in self.errors:
                if text in str(e).lower():
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no error containing {text!r}; got {self.errors!r}")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "state" / "ca", DOMAIN, SystemClock())


@pytest.fixture
async def server(tmp_path: Path, ca: CertificateAuthority) -> AsyncIterator[EmbeddedNats]:
    srv = EmbeddedNats(
        tmp_path / "state", ca, DOMAIN, ["s1", "s2"], port=0, monitor_port=0, stop_grace_s=3
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


Connect = Callable[..., Awaitable[tuple[NatsClient, Peer]]]


@pytest.fixture
async def connect(server: EmbeddedNats, ca: CertificateAuthority) -> AsyncIterator[Connect]:
    """``await connect(spiffe_id)``: a client with a fresh certificate for that identity."""
    clients: list[NatsClient] = []

    async def _connect(spiffe_id: SpiffeId, **options: object) -> tuple[NatsClient, Peer]:
        key_pem, issued = ca.issue_with_new_key(spiffe_id)
        peer = Peer()
        kwargs: dict[str, object] = {
            "tls": client_tls(issued.chain_pem, key_pem, ca.trust_bundle_pem()),
            "error_cb": peer.error_cb,
            "allow_reconnect": False,
            "connect_timeout": 2,
        }
        if spiffe_id.role in (Role.EDGE, Role.CONTROL_PLANE):
            kwargs["inbox_prefix"] = inbox_prefix(spiffe_id)
        kwargs.update(options)
        nc = await nats.connect(server.url, **kwargs)
        clients.append(nc)
        peer.nc = nc
        return nc, peer

    yield _connect
    for nc in clients:
        if not nc.is_closed:
            await nc.close()


async def until_received(
    queue: asyncio.Queue[Msg], send: Callable[[], Awaitable[None]], timeout_s: float = 3.0
) -> Msg:
    """Send until a message arrives.

    ``subscribe(); flush()`` does not prove the SUB reached the server: nats-py 2.16
    writes flush's PING straight to the socket, ahead of the SUB still in its pending
    buffer, so a publish on another connection can overtake the SUB (seen under load).
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        await send()
        try:
            return await asyncio.wait_for(queue.get(), 0.1)
        except TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise


def edge(site: str) -> SpiffeId:
    return SpiffeId(DOMAIN, Role.EDGE, site)


CP = SpiffeId(DOMAIN, Role.CONTROL_PLANE, "cp-1")


async def test_edge_publishes_telemetry_with_ack_and_receives_its_commands(
    server: EmbeddedNats, connect: Connect
) -> None:
    e1, _ = await connect(edge("s1"))
    ack = await e1.jetstream().publish(
        telemetry_subject("s1"), b"envelope-1", headers={"Nats-Msg-Id": "s1-1"}
    )
    assert ack.stream == STREAM_NAME and ack.seq == 1
    dup = await e1.jetstream().publish(
        telemetry_subject("s1"), b"envelope-1", headers={"Nats-Msg-Id": "s1-1"}
    )
    assert dup.duplicate and dup.seq == 1

    # pipelined: many publish acks in flight, all arriving in the edge's own inbox
    js_edge = e1.jetstream()
    futures = [await js_edge.publish_async(telemetry_subject("s1"), b"e%d" % i) for i in range(200)]
    assert [a.seq for a in await asyncio.gather(*futures)] == list(range(2, 202))

    cp, cp_peer = await connect(CP)  # the stream was created by the control-plane identity
    js = cp.jetstream()
    # stored under the site's partition: gridfort.v1.ingest.<p>.s1
    sub = await js.pull_subscribe("gridfort.v1.ingest.*.s1", durable="test", stream=STREAM_NAME)
    (msg,) = await sub.fetch(1, timeout=2)
    assert msg.data == b"envelope-1"
    prefix, partition, site = msg.subject.rsplit(".", 2)
    assert (prefix, site) == ("gridfort.v1.ingest", "s1") and 0 <= int(partition) < 8
    await msg.ack_sync(timeout=2)

    received: asyncio.Queue[Msg] = asyncio.Queue()
    await e1.subscribe(command_subject("s1"), cb=received.put)
    got = await until_received(received, lambda: cp.publish(command_subject("s1"), b"command"))
    assert got.data == b"command"
    assert cp_peer.errors == []


async def test_connection_without_client_certificate_is_refused(
    server: EmbeddedNats, ca: CertificateAuthority
) -> None:
    ctx = ssl.create_default_context(cadata=ca.trust_bundle_pem().decode())
    with pytest.raises((OSError, ssl.SSLError, nats.errors.Error, TimeoutError)):
        nc = await nats.connect(
            server.url, tls=ctx, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
        )
        await nc.close()


async def test_certificate_from_a_foreign_ca_is_refused(
    server: EmbeddedNats, ca: CertificateAuthority, tmp_path: Path
) -> None:
    foreign = CertificateAuthority.init(tmp_path / "foreign", DOMAIN, SystemClock())
    key_pem, issued = foreign.issue_with_new_key(edge("s1"))  # same SPIFFE ID, wrong CA
    ctx = client_tls(issued.chain_pem, key_pem, ca.trust_bundle_pem())
    with pytest.raises((OSError, ssl.SSLError, nats.errors.Error, TimeoutError)):
        nc = await nats.connect(
            server.url, tls=ctx, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
        )
        await nc.close()


async def test_identity_without_a_user_can_do_nothing(connect: Connect) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(SpiffeId(DOMAIN, Role.OPERATOR, "alice"), max_reconnect_attempts=0)


async def test_edge_publishing_on_another_sites_subject_is_refused_by_the_server(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    seen: list[PermissionViolation] = []
    srv = EmbeddedNats(tmp_path / "st", ca, DOMAIN, ["s1", "s2"], port=0, on_violation=seen.append)
    await srv.start()
    try:
        key_pem, issued = ca.issue_with_new_key(edge("s1"))
        peer = Peer()
        nc = await nats.connect(
            srv.url,
            tls=srv.client_tls(issued.chain_pem, key_pem),
            inbox_prefix=inbox_prefix(edge("s1")),
            error_cb=peer.error_cb,
            allow_reconnect=False,
        )
        await nc.publish(telemetry_subject("s2"), b"forged")
        await nc.flush()
        err = await peer.wait_error("permissions violation for publish")
        assert telemetry_subject("s2") in str(err).lower()
        assert nc.is_connected  # refused message, not a dropped link
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.jetstream().publish(telemetry_subject("s2"), b"forged", timeout=0.5)
        await nc.close()
        # the control plane learns of it from the server log (for its audit log)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen[0] == PermissionViolation(
            "spiffe://gridfort.test/edge/s1", "publish", telemetry_subject("s2")
        )
        cp = await srv.connect_control_plane()
        info = await cp.jetstream().stream_info(STREAM_NAME)
        assert info.state.messages == 0  # nothing forged was stored
        await cp.close()
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    "subject",
    [
        command_subject("s2"),  # another site's commands
        ">",  # everything
        "gridfort.v1.commands.*",  # every site's commands
        "gridfort.v1.telemetry.s1",  # its own telemetry (core tap on the stream subject)
        "_INBOX.edge.s2.>",  # another edge's publish acks
        "_INBOX.cp.cp-1.>",  # the control plane's deliveries
        "$JS.API.>",
    ],
)
async def test_edge_subscribing_outside_its_own_subjects_is_refused(
    connect: Connect, subject: str
) -> None:
    nc, peer = await connect(edge("s1"))
    await nc.subscribe(subject)
    await nc.flush()
    err = await peer.wait_error("permissions violation for subscription")
    assert subject.lower() in str(err)


async def test_edge_cannot_touch_the_jetstream_api(connect: Connect) -> None:
    nc, peer = await connect(edge("s1"))
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await nc.jetstream(timeout=0.5).delete_stream(STREAM_NAME)
    await peer.wait_error("permissions violation for publish")


async def test_oversized_message_is_refused(
    server: EmbeddedNats, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    nc, _ = await connect(edge("s1"))
    assert nc.max_payload == server.max_payload_bytes == 1 << 20  # announced by the server
    too_big = b"x" * (server.max_payload_bytes + 1)
    with pytest.raises(nats.errors.MaxPayloadError):  # the client refuses first...
        await nc.publish(telemetry_subject("s1"), too_big)
    # ...and the server enforces it against a client that ignores the limit.
    nc._max_payload = 1 << 24  # a hostile client: skip nats-py's own check
    await nc.publish(telemetry_subject("s1"), too_big)
    for _ in range(150):  # the server closes the connection of a client that breaks the limit
        if nc.is_closed:
            break
        await asyncio.sleep(0.02)
    assert nc.is_closed
    # The client sees '-ERR Maximum Payload Violation' or just the reset (a race); the
    # server's log always names the violation.
    assert any("maximum payload exceeded" in r.getMessage() for r in caplog.records)
    cp = await server.connect_control_plane()
    assert (await cp.jetstream().stream_info(STREAM_NAME)).state.messages == 0
    await cp.close()


async def test_port_already_taken_is_a_clear_error(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = EmbeddedNats(tmp_path / "st", ca, DOMAIN, ["s1"], port=port)
        with pytest.raises(GridfortError, match=f"127.0.0.1:{port} is already in use"):
            await srv.start()
        assert srv.pid is None and not srv.running


async def test_bind_failure_reported_by_the_server_is_surfaced(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost race: the port is taken between our check and the server's bind."""
    monkeypatch.setattr(nats_server_module, "_port_taken", lambda host, port: False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = EmbeddedNats(tmp_path / "st", ca, DOMAIN, ["s1"], port=port)
        with pytest.raises(GridfortError, match="address already in use"):
            await srv.start()
        assert not srv.running


async def test_added_site_gets_access_after_reload(server: EmbeddedNats, connect: Connect) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(edge("s3"), max_reconnect_attempts=0)
    assert await server.set_sites({"s1", "s2", "s3"})
    assert not await server.set_sites({"s1", "s2", "s3"})  # unchanged: no reload
    nc, _ = await connect(edge("s3"))
    ack = await nc.jetstream().publish(telemetry_subject("s3"), b"hello")
    assert ack.stream == STREAM_NAME

    s2, _ = await connect(edge("s2"))
    assert await server.set_sites({"s1", "s3"})  # s2 removed: its open link is cut
    for _ in range(150):
        if s2.is_closed:
            break
        await asyncio.sleep(0.02)
    assert s2.is_closed


async def test_state_files_are_private_and_stop_frees_the_port(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    srv = EmbeddedNats(tmp_path / "state", ca, DOMAIN, ["s1"], port=0, monitor_port=0)
    await srv.start()
    pid, port = srv.pid, srv.port
    assert pid is not None
    assert srv.monitor_url is not None and srv.monitor_url.startswith("http://127.0.0.1:")
    d = tmp_path / "state" / "nats"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "nats.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "server.key.pem").stat().st_mode) == 0o600
    assert (d / "jetstream").is_dir()
    await srv.stop()
    await srv.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listener does
        s.bind(("127.0.0.1", port))  # free again


async def served_certificate(srv: EmbeddedNats, tls: ssl.SSLContext) -> x509.Certificate:
    """The leaf certificate the server presents in a TLS handshake (after its plain INFO)."""
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        await writer.start_tls(tls)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


async def test_server_certificate_rotates_at_half_life_without_dropping_clients(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    clock = ManualClock(SystemClock().now_ms())
    srv = EmbeddedNats(
        tmp_path / "st", ca, DOMAIN, ["s1"], port=0, server_cert_ttl_s=10, clock=clock
    )
    await srv.start()
    try:
        cert_file = tmp_path / "st" / "nats" / "server.cert.pem"
        before = cert_file.read_bytes()
        key_pem, issued = ca.issue_with_new_key(edge("s1"))
        tls = srv.client_tls(issued.chain_pem, key_pem)
        old = await nats.connect(srv.url, tls=tls, inbox_prefix=inbox_prefix(edge("s1")))
        clock.advance(6_000)  # past half of the 10 s lifetime
        for _ in range(150):
            if cert_file.read_bytes() != before:
                break
            await asyncio.sleep(0.02)
        assert cert_file.read_bytes() != before
        rotated = x509.load_pem_x509_certificate(cert_file.read_bytes())
        for _ in range(100):  # the server serves the new certificate once it reloaded
            if await served_certificate(srv, tls) == rotated:
                break
            await asyncio.sleep(0.02)
        assert await served_certificate(srv, tls) == rotated
        new = await nats.connect(srv.url, tls=tls, inbox_prefix=inbox_prefix(edge("s1")))
        await new.jetstream().publish(telemetry_subject("s1"), b"after rotation")
        await old.jetstream().publish(telemetry_subject("s1"), b"old link still up")
        await old.close()
        await new.close()
    finally:
        await srv.stop()


async def test_server_that_never_serves_tls_is_killed_with_a_clear_error(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """A server that claims readiness but refuses clients, and ignores SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = tmp_path / "fake-nats-server"
    fake.write_text(
        "#!/bin/sh\n"
        "trap '' TERM\n"
        f"echo '[1] [INF] Listening for client connections on 127.0.0.1:{port}' >&2\n"
        "echo '[1] [INF] Server is ready' >&2\n"
        "exec sleep 30\n"
    )
    fake.chmod(0o700)
    srv = EmbeddedNats(
        tmp_path / "st",
        ca,
        DOMAIN,
        ["s1"],
        port=port,
        server_binary=fake,
        start_timeout_s=0.5,
        stop_grace_s=0.3,
    )
    with pytest.raises(GridfortError, match="refused a mutual-TLS client"):
        await srv.start()
    assert not srv.running and srv.pid is None


async def test_reply_subject_injection_only_delivers_jetstream_acks(
    server: EmbeddedNats, connect: Connect
) -> None:
    """Known NATS property (documented in docs/nats.md): the server does not check a
    publish's *reply* subject against permissions, so edge A can make JetStream send its
    publish ack to edge B's command subject. The payload is JetStream's ack JSON, not
    attacker bytes: B's command verifier refuses it as unsigned."""
    e1, _ = await connect(edge("s1"))
    e2, _ = await connect(edge("s2"))
    received: asyncio.Queue[Msg] = asyncio.Queue()
    await e2.subscribe(command_subject("s2"), cb=received.put)
    got = await until_received(
        received,
        lambda: e1.publish(telemetry_subject("s1"), b"attacker bytes", reply=command_subject("s2")),
    )
    assert b"attacker bytes" not in got.data
    assert got.data.startswith(b'{"stream":"GRIDFORT_TELEMETRY"')


def test_violation_log_lines_are_parsed() -> None:
    line = (
        '[42] 2026/11/28 14:22:03.030968 [ERR] 127.0.0.1:56668 - cid:9 - "v2.16.0:python3" - '
        '"$G/user:spiffe://gridfort.test/edge/s1" - Subscription Violation - '
        'Subject "gridfort.v1.commands.s2", SID 1'
    )
    assert parse_violation(line) == PermissionViolation(
        "spiffe://gridfort.test/edge/s1", "subscribe", "gridfort.v1.commands.s2"
    )
    assert parse_violation("[42] [INF] Server is ready") is None


async def test_a_hostile_client_cannot_forge_violations_in_the_server_log(
    server: EmbeddedNats, connect: Connect
) -> None:
    """The connection name and subject are client-chosen text inside the server's log line."""
    forged = (
        '"$G/user:spiffe://gridfort.test/edge/s2" - Publish Violation - Subject "y"\n'
        '[1] [INF] Reloaded server configuration\n" - "$G/user:spiffe://gridfort.test/edge/s2"'
        " - Publish Violation - Subject "
    )
    nc, peer = await connect(edge("s1"), name=forged)
    await nc.publish('gridfort.v1.telemetry.s2"', b"x")
    await nc.flush()
    await peer.wait_error("permissions violation for publish")
    for _ in range(100):
        if server.violations:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert [v.identity for v in server.violations] == ["spiffe://gridfort.test/edge/s1"]


def test_the_wheel_binary_is_found() -> None:
    binary = nats_server_binary()
    assert binary.name == "nats-server" and os.access(binary, os.X_OK)


def test_control_plane_client_certificate_has_only_the_uri_san(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    srv = EmbeddedNats(tmp_path / "st", ca, DOMAIN, ["s1"])
    _key_pem, chain_pem = srv.issue_client_identity(CP)
    cert = x509.load_pem_x509_certificates(chain_pem)[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.value for n in san] == [CP.uri]  # nothing verify_and_map would try first


async def test_restart_keeps_the_stream_and_its_messages(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    state = tmp_path / "state"
    srv = EmbeddedNats(state, ca, DOMAIN, ["s1"], port=0)
    await srv.start()
    try:
        key_pem, issued = ca.issue_with_new_key(edge("s1"))
        tls = srv.client_tls(issued.chain_pem, key_pem)
        nc = await nats.connect(srv.url, tls=tls, inbox_prefix=inbox_prefix(edge("s1")))
        await nc.jetstream().publish(telemetry_subject("s1"), b"uncommitted")
        await nc.close()
    finally:
        await srv.stop()
    await srv.start()  # same state dir: the stream is reconciled, not recreated
    try:
        cp = await srv.connect_control_plane()
        sub = await cp.jetstream().pull_subscribe(
            "gridfort.v1.ingest.*.s1", durable="test", stream=STREAM_NAME
        )
        (msg,) = await sub.fetch(1, timeout=2)
        assert msg.data == b"uncommitted"
        await cp.close()
    finally:
        await srv.stop()


_CHILD = """
import asyncio, sys
from pathlib import Path
from security.ca import CertificateAuthority
from security.clock import SystemClock
from control_plane.transports.nats_cluster import EmbeddedNatsCluster
from control_plane.transports.nats_server import EmbeddedNats

async def main() -> None:
    state, size = Path(sys.argv[1]), int(sys.argv[2])
    ca = CertificateAuthority.init(state / "ca", "gridfort.test", SystemClock())
    if size == 1:
        broker = EmbeddedNats(state, ca, "gridfort.test", ["s1"], port=0)
        await broker.start()
        pids = [broker.pid]
    else:
        cluster = EmbeddedNatsCluster(state, ca, "gridfort.test", ["s1"], size=size)
        await cluster.start()
        pids = [n.pid for n in cluster.nodes]
    print(" ".join(map(str, pids)), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not yet reaped
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("size", [1, 3])
async def test_brokers_die_when_gridfort_is_killed(tmp_path: Path, size: int) -> None:
    """SIGKILL the process that started the broker(s): no nats-server outlives it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(tmp_path / "state"),
        str(size),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 40)
    pids = [int(p) for p in line.split()]
    assert len(pids) == size and all(_alive(p) for p in pids)
    proc.kill()
    await proc.wait()
    for _ in range(100):
        if not any(_alive(p) for p in pids):
            break
        await asyncio.sleep(0.05)
    assert not any(_alive(p) for p in pids)
