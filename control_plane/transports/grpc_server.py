"""gRPC transport of the control plane: the edge link, renewal and enrollment services.

Two listeners:
* the link port (mutual TLS, client certificate required and verified against
  the trust bundle by the TLS handshake): ``EdgeLink.Connect`` and ``Renewal.Renew``;
* the bootstrap port (server-authenticated TLS only): ``Enrollment.Enroll``.

Hardened for a hostile network: bounded message size, streams per connection,
streams per identity, keepalive enforcement (too-frequent pings are refused),
handshake timeout, idle connection timeout, an idle-stream watchdog, a deadline
on every unary call, and a bounded number of batches in flight per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.receipts import sign_receipt
from control_plane.transports.grpc_status import REASON_KEY, details_for, status_for
from control_plane.transports.streams import EdgeStream, StreamRegistry
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import enrollment_pb2 as enpb
from gridfort.v1 import enrollment_pb2_grpc as engrpc
from gridfort.v1 import envelope_pb2 as epb
from security.ca import CertificateAuthority
from security.clock import Clock
from security.enrollment import EnrollmentAuthority
from security.envelope import EnvelopeSigner
from security.identity import Role
from security.refusals import Reason, Refusal, RefusedError
from security.signing_keys import SigningKeyRegistry
from security.tasks import reap

log = logging.getLogger(__name__)

EDGE_ROLES = frozenset({Role.EDGE})
RENEW_ROLES = frozenset({Role.EDGE, Role.OPERATOR, Role.SOC, Role.CONTROL_PLANE})


@dataclass(frozen=True)
class GrpcSettings:
    """Limits of the gRPC listeners. Times in ms unless the name says _s."""

    link_addresses: tuple[str, ...] = ("127.0.0.1:0",)
    bootstrap_address: str = "127.0.0.1:0"
    max_message_bytes: int = 1 << 20
    max_batch_bytes: int = 512 << 10
    max_concurrent_streams: int = 4
    max_streams_per_identity: int = 2
    max_in_flight_per_stream: int = 512
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 10_000
    min_client_ping_interval_ms: int = 10_000
    max_ping_strikes: int = 2
    handshake_timeout_ms: int = 5_000
    max_connection_idle_ms: int = 120_000
    stream_idle_timeout_s: float = 30.0
    unary_deadline_s: float = 10.0
    watch_interval_s: float = 1.0
    peers_allowed_roles: frozenset[Role] = field(default=EDGE_ROLES)

    def __post_init__(self) -> None:
        if not self.link_addresses:
            raise ValueError("at least one link address is required")
        if self.max_batch_bytes >= self.max_message_bytes:
            raise ValueError("max_batch_bytes must be below max_message_bytes")

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_client_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout_ms),
            ("grpc.max_connection_idle_ms", self.max_connection_idle_ms),
            ("grpc.so_reuseport", 0),
        ]


CredentialsFactory = Callable[[bool], grpc.ServerCredentials]


def _peer_cert(context: grpc.aio.ServicerContext) -> bytes | None:
    auth = context.auth_context()
    certs = auth.get("x509_pem_cert") if auth else None
    return certs[0] if certs else None


async def _abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    context.set_trailing_metadata(((REASON_KEY, refusal.reason.value),))
    await context.abort(status_for(refusal.reason), details_for(refusal))


T = TypeVar("T")


async def within_deadline(deadline_s: float, work: Callable[[], T]) -> T:
    """Run blocking ``work`` (CA signing, token and key stores) off the event loop, bounded
    by the server's own deadline for unary calls; past it the caller gets UNAVAILABLE."""
    try:
        async with asyncio.timeout(deadline_s):
            return await asyncio.to_thread(work)
    except TimeoutError:
        raise RefusedError(
            Refusal(Reason.UNAVAILABLE, f"the call exceeded the server deadline of {deadline_s} s")
        ) from None


class EdgeLinkService:
    """``EdgeLink.Connect``: telemetry up, signed receipts and commands down."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        streams: StreamRegistry,
        commands: CommandDispatcher,
        signer: EnvelopeSigner,
        clock: Clock,
        settings: GrpcSettings,
    ) -> None:
        self._pipeline = pipeline
        self._streams = streams
        self._commands = commands
        self._signer = signer
        self._clock = clock
        self._settings = settings

    async def connect(self, _requests: object, context: grpc.aio.ServicerContext) -> None:
        peer = self._pipeline.authenticate(_peer_cert(context), self._settings.peers_allowed_roles)
        if isinstance(peer, Refusal):
            await _abort(context, peer)
            return
        stream = self._streams.open(peer, self._clock.now_ms())
        if isinstance(stream, Refusal):
            await _abort(context, self._pipeline.refuse(stream, event="connect"))
            return
        log.info("stream %d opened by %s", stream.stream_id, peer.uri)
        reader = asyncio.ensure_future(self._read_loop(stream, context))
        writer = asyncio.ensure_future(self._write_loop(stream, context))
        closed = asyncio.ensure_future(stream.closed.wait())
        try:
            await asyncio.wait({reader, writer, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._streams.remove(stream)  # first: a cancelled handler must not leak its slot
            log.info("stream %d of %s ended", stream.stream_id, peer.uri)
            try:
                await reap(reader)
            finally:
                for task in (writer, closed):
                    task.cancel()
        if stream.close_reason is not None:
            await _abort(context, stream.close_reason)

    async def _read_loop(self, stream: EdgeStream, context: grpc.aio.ServicerContext) -> None:
        window = asyncio.Semaphore(self._settings.max_in_flight_per_stream)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    break
                stream.last_seen_ms = self._clock.now_ms()
                message = self._parse(stream, raw)
                if message is None:
                    continue
                kind = message.WhichOneof("kind")
                if kind == "telemetry":
                    await window.acquire()
                    task = asyncio.ensure_future(self._ingest(stream, message, window))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "command_result":
                    self._commands.on_result(
                        stream.peer, message.command_result, self._pipeline.keys
                    )
                elif kind == "heartbeat":
                    stream.send(
                        lpb.ControlMessage(heartbeat=lpb.Heartbeat(sent_ms=stream.last_seen_ms))
                    )
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()

    def _parse(self, stream: EdgeStream, raw: object) -> lpb.EdgeMessage | None:
        peer = stream.peer
        data = raw if isinstance(raw, bytes) else b""
        message = lpb.EdgeMessage()
        refusal: Refusal | None = None
        if len(data) > self._settings.max_batch_bytes:
            refusal = Refusal(
                Reason.OVERSIZED,
                f"message is {len(data)} bytes; limit {self._settings.max_batch_bytes}",
                peer.uri,
            )
        else:
            try:
                message.ParseFromString(data)
            except DecodeError:
                refusal = Refusal(Reason.MALFORMED_ENVELOPE, "not a valid EdgeMessage", peer.uri)
            if refusal is None and message.WhichOneof("kind") is None:
                refusal = Refusal(
                    Reason.MALFORMED_ENVELOPE, "EdgeMessage carries nothing", peer.uri
                )
        if refusal is None:
            return message
        self._pipeline.refuse(refusal)
        self._pipeline.stats.batches_refused += 1
        receipt = lpb.BatchReceipt(
            status=lpb.RECEIPT_STATUS_REFUSED,
            reason=refusal.reason.value,
            message=refusal.message,
            decided_ms=self._clock.now_ms(),
        )
        env = self._signer.sign(
            epb.PAYLOAD_TYPE_BATCH_RECEIPT, receipt.SerializeToString(), self._clock.now_ms()
        )
        stream.send(lpb.ControlMessage(receipt=env))  # answered on the stream that sent it
        return None

    async def _ingest(
        self, stream: EdgeStream, message: lpb.EdgeMessage, window: asyncio.Semaphore
    ) -> None:
        try:
            try:
                result = await self._pipeline.ingest(stream.peer, message.telemetry)
            except Exception:  # a bug must cost one retry, never a silent stall or a leak
                log.exception("ingest failed for %s", stream.peer.uri)
                result = self._pipeline.internal_error(stream.peer, message.telemetry)
            envelope = sign_receipt(result, self._signer, self._clock.now_ms())
            stream.send(lpb.ControlMessage(receipt=envelope))
        finally:
            window.release()

    async def _write_loop(self, stream: EdgeStream, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await stream.outbox.get()
            await context.write(message)


class RenewalService(engrpc.RenewalServicer):
    def __init__(
        self, pipeline: IngestPipeline, authority: EnrollmentAuthority, ca: CertificateAuthority
    ) -> None:
        self._pipeline = pipeline
        self._authority = authority
        self._ca = ca
        self.deadline_s = 10.0  # server-side budget of one Renew call [s]

    async def Renew(
        self, request: enpb.RenewRequest, context: grpc.aio.ServicerContext
    ) -> enpb.RenewResponse:
        peer = self._pipeline.authenticate(_peer_cert(context), RENEW_ROLES)
        if isinstance(peer, Refusal):
            await _abort(context, peer)
            raise AssertionError("unreachable")
        try:
            issued = await within_deadline(
                self.deadline_s,
                lambda: self._authority.renew(
                    peer.spiffe_id, request.csr_der, presented_not_before_ms=peer.not_before_ms
                ),
            )
        except RefusedError as e:
            await _abort(context, e.refusal)
            raise AssertionError("unreachable") from e
        return enpb.RenewResponse(
            certificate_chain_pem=issued.chain_pem,
            trust_bundle_pem=self._ca.trust_bundle_pem(),
        )


class EnrollmentService(engrpc.EnrollmentServicer):
    def __init__(
        self,
        authority: EnrollmentAuthority,
        keys: SigningKeyRegistry,
        pipeline: IngestPipeline,
        signer: EnvelopeSigner,
        next_command_seq: Callable[[str], int],
    ) -> None:
        self._authority = authority
        self._keys = keys
        self.deadline_s = 10.0  # server-side budget of one Enroll call [s]
        self._pipeline = pipeline
        self._signer = signer
        self._next_command_seq = next_command_seq

    async def Enroll(
        self, request: enpb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enpb.EnrollResponse:
        try:
            result = await within_deadline(
                self.deadline_s,
                lambda: self._authority.enroll(
                    request.site_id, request.token, request.csr_der, request.signing_public_key
                ),
            )
        except RefusedError as e:
            await _abort(context, e.refusal)
            raise AssertionError("unreachable") from e
        key = self._keys.lookup(result.signing_key_id)
        if key is not None:
            self._pipeline.add_key(key)
        return enpb.EnrollResponse(
            spiffe_id=str(result.spiffe_id),
            certificate_chain_pem=result.chain_pem,
            trust_bundle_pem=result.trust_bundle_pem,
            signing_key_id=result.signing_key_id,
            control_plane_public_key=self._signer.public_key_raw,
            control_plane_key_id=self._signer.key_id,
            control_plane_spiffe_id=self._signer.signer,
            next_seq=self._pipeline.guard.high_water_mark(request.site_id) + 1,
            next_command_seq=self._next_command_seq(request.site_id),
        )


class GrpcTransport:
    """Owns the two gRPC servers and the watcher that closes revoked or idle streams."""

    def __init__(
        self,
        *,
        settings: GrpcSettings,
        pipeline: IngestPipeline,
        streams: StreamRegistry,
        link: EdgeLinkService,
        renewal: RenewalService,
        enrollment: EnrollmentService,
        link_credentials: grpc.ServerCredentials,
        bootstrap_credentials: grpc.ServerCredentials,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._streams = streams
        self._clock = clock
        options = settings.server_options()
        self._link_server = grpc.aio.server(options=options)
        self._link_server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "gridfort.v1.EdgeLink",
                    {
                        "Connect": grpc.stream_stream_rpc_method_handler(
                            link.connect,
                            request_deserializer=None,
                            response_serializer=lpb.ControlMessage.SerializeToString,
                        )
                    },
                ),
            )
        )
        engrpc.add_RenewalServicer_to_server(renewal, self._link_server)
        self._bootstrap_server = grpc.aio.server(options=options)
        engrpc.add_EnrollmentServicer_to_server(enrollment, self._bootstrap_server)
        self.link_ports: list[int] = [
            int(self._link_server.add_secure_port(addr, link_credentials))
            for addr in settings.link_addresses
        ]
        self.bootstrap_port: int = self._bootstrap_server.add_secure_port(
            settings.bootstrap_address, bootstrap_credentials
        )
        if 0 in self.link_ports or self.bootstrap_port == 0:
            raise OSError("could not bind a gRPC port (already in use?)")
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._link_server.start()
        await self._bootstrap_server.start()
        self._watcher = asyncio.ensure_future(self._watch())

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for stream in self._streams.all():
            stream.close(
                Refusal(Reason.UNAVAILABLE, "control plane shutting down", stream.peer.uri)
            )
        await self._link_server.stop(grace_s)
        await self._bootstrap_server.stop(grace_s)

    async def _watch(self) -> None:
        """Every second: reload state; close revoked, expired and idle streams."""
        while True:
            await asyncio.sleep(self._settings.watch_interval_s)
            try:
                self.check_streams()
            except Exception:  # never let the watcher die
                log.exception("stream watcher failed")

    def check_streams(self) -> None:
        self._pipeline.refresh()
        now_ms = self._clock.now_ms()
        idle_ms = int(self._settings.stream_idle_timeout_s * 1000)
        for stream in self._streams.all():
            refusal = self._pipeline.still_valid(stream.peer)
            if refusal is None and now_ms - stream.last_seen_ms > idle_ms:
                refusal = Refusal(Reason.UNAVAILABLE, "stream idle for too long", stream.peer.uri)
            if refusal is not None and not stream.closed.is_set():
                stream.close(self._pipeline.refuse(refusal, event="stream_closed"))
