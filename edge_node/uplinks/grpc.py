"""gRPC uplink: one bidirectional mutual-TLS stream to the first reachable control-plane
endpoint of an ordered list (primary, then fallbacks: the dual-SIM case), with
reconnection backoff, a window of batches in flight, signed-receipt handling and
certificate rotation at half-life (a new channel is opened before the old one closes).

Delivery rule: a batch leaves the outbox only on a verified receipt (COMMITTED or
DUPLICATE) for its exact digest. After any reconnect, every unacknowledged batch is
sent again; the control plane de-duplicates, so nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from edge_node.credentials import EdgeCredentials, EnrollmentError, renew
from edge_node.outbox import Outbox
from edge_node.uplinks.delivery import Delivery, DeliveryPolicy
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.clock import Clock
from security.rotation import should_rotate
from security.tasks import reap

log = logging.getLogger(__name__)

CommandHandler = Callable[[epb.SignedEnvelope], Awaitable[epb.SignedEnvelope]]
_METHOD = "/gridfort.v1.EdgeLink/Connect"
RENEWAL_RETRY_S = 10.0  # after a failed renewal; the certificate is still valid until expiry


@dataclass(frozen=True)
class UplinkSettings:
    endpoints: tuple[str, ...]
    window: int = 256  # batches in flight without a receipt
    connect_timeout_s: float = 3.0
    heartbeat_s: float = 5.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    resign_after_ms: int = 15_000  # re-sign buffered batches older than this before sending
    rotation_fraction: float = 0.5
    retry_delay_ms: int = 1_000  # wait before resending a batch refused as retryable

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("uplink needs at least one control-plane endpoint")
        if self.window < 1:
            raise ValueError("uplink window must be >= 1")


class _Session:
    """One channel and one stream."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall):
        self.endpoint = endpoint
        self.channel = channel
        self.call = call
        self.reader: asyncio.Task[None] | None = None
        # Telemetry/heartbeats (sender task) and command results (reader task) share the
        # call; gRPC allows one write in flight per call (else TOO_MANY_OPERATIONS).
        self._write_lock = asyncio.Lock()

    async def write(self, message: lpb.EdgeMessage) -> None:
        """Write one message; concurrent writers take turns."""
        async with self._write_lock:
            await self.call.write(message)

    async def close(self) -> None:
        self.call.cancel()
        await reap(self.reader)
        await self.channel.close(grace=None)


class GrpcUplink:
    def __init__(
        self,
        *,
        credentials: EdgeCredentials,
        outbox: Outbox,
        settings: UplinkSettings,
        clock: Clock,
        on_command: CommandHandler,
    ) -> None:
        self._creds = credentials
        self._outbox = outbox
        self._settings = settings
        self._clock = clock
        self._on_command = on_command
        self._delivery = Delivery(
            credentials,
            outbox,
            clock,
            DeliveryPolicy(
                window=settings.window,
                resign_after_ms=settings.resign_after_ms,
                retry_delay_ms=settings.retry_delay_ms,
            ),
        )
        self.stats = self._delivery.stats
        self._wake = asyncio.Event()
        self._session: _Session | None = None
        self._next_renewal = 0.0  # monotonic time of the next renewal attempt [s]

    def notify(self) -> None:
        """A new batch was sealed; wake the sender."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, stream, fail over and reconnect forever (until cancelled)."""
        endpoints = self._settings.endpoints
        index, attempt = 0, 0
        try:
            while True:
                endpoint = endpoints[index]
                try:
                    await self._serve(endpoint)
                    attempt = 0
                except (grpc.aio.AioRpcError, TimeoutError, ConnectionError, OSError) as e:
                    log.warning("uplink %s to %s: %s", self._creds.site_id, endpoint, _describe(e))
                finally:
                    self.stats.connected = False
                    await self._drop_session()
                index = (index + 1) % len(endpoints)
                if len(endpoints) > 1:
                    self.stats.failovers += 1
                if index == 0:
                    attempt += 1
                delay = min(
                    self._settings.backoff_max_s, self._settings.backoff_initial_s * 2**attempt
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        finally:
            await self._drop_session()

    async def _open(self, endpoint: str) -> _Session:
        options = [
            ("grpc.ssl_target_name_override", self._creds.target_name()),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.enable_retries", 0),
        ]
        channel = grpc.aio.secure_channel(endpoint, self._creds.channel_credentials(), options)
        try:
            await asyncio.wait_for(channel.channel_ready(), self._settings.connect_timeout_s)
        except BaseException:
            await channel.close(grace=None)
            raise
        call = channel.stream_stream(
            _METHOD,
            request_serializer=lpb.EdgeMessage.SerializeToString,
            response_deserializer=lpb.ControlMessage.FromString,
        )()
        session = _Session(endpoint, channel, call)
        session.reader = asyncio.ensure_future(self._read_loop(session))
        return session

    async def _serve(self, endpoint: str) -> None:
        self._session = await self._open(endpoint)
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.endpoint = endpoint
        self._delivery.restart()
        log.info("uplink %s connected to %s", self._creds.site_id, endpoint)
        last_write = self._clock.now_ms()
        while True:
            if self._session.reader is not None and self._session.reader.done():
                self._session.reader.result()  # raises the stream's error
                raise ConnectionError("control plane closed the stream")
            if (
                should_rotate(
                    self._creds.certificate, self._clock.now_ms(), self._settings.rotation_fraction
                )
                and asyncio.get_running_loop().time() >= self._next_renewal
            ):
                await self._rotate()
            sent = await self._send_some()
            now = self._clock.now_ms()
            if sent:
                last_write = now
            elif now - last_write >= self._settings.heartbeat_s * 1000:
                await self._session.write(lpb.EdgeMessage(heartbeat=lpb.Heartbeat(sent_ms=now)))
                last_write = now
            if not sent:
                self._wake.clear()
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation (3.11)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.heartbeat_s / 2):
                        await self._wake.wait()

    async def _send_some(self) -> int:
        assert self._session is not None
        entries = self._delivery.next_batch()
        for entry in entries:
            await self._session.write(lpb.EdgeMessage(telemetry=entry.envelope))
        return len(entries)

    async def _read_loop(self, session: _Session) -> None:
        while True:
            message = await session.call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            if kind == "receipt":
                self._delivery.on_receipt(message.receipt)
            elif kind == "command":
                result = await self._on_command(message.command)
                await session.write(lpb.EdgeMessage(command_result=result))
            self._wake.set()

    async def _rotate(self) -> None:
        """Renew the certificate, then move to a new stream before closing the old one."""
        old = self._session
        assert old is not None
        try:
            await renew(self._creds, old.channel)
        except EnrollmentError as e:
            log.error("uplink %s: certificate renewal failed: %s", self._creds.site_id, e)
            self._next_renewal = asyncio.get_running_loop().time() + RENEWAL_RETRY_S
            return
        new = await self._open(old.endpoint)
        self._session = new
        self.stats.rotations += 1
        log.info("uplink %s rotated its certificate", self._creds.site_id)
        # Let receipts for what the old stream carried arrive, then close it.
        for _ in range(50):
            if not self._delivery.in_flight:
                break
            await asyncio.sleep(0.1)
        await old.close()
        self._delivery.restart()

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details() or ''}"
    if isinstance(e, TimeoutError):
        return "connection timed out"
    return str(e) or type(e).__name__
