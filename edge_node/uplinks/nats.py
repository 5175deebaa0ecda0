"""NATS uplink: signed envelopes published to the site's JetStream subject over mutual TLS.

The payload is the same ``EdgeMessage`` bytes as over gRPC (telemetry or a command
result), with a ``Nats-Msg-Id`` header (SHA-256 of the exact envelope bytes) so
JetStream drops an exact re-send within its duplicate window, and a
``Gridfort-Seq`` header: the batch's sequence number, an unsigned *ordering hint*
for the control plane's consumer (the signed payload stays authoritative; a site
that lies in it only delays its own data). A JetStream publish acknowledgement is
*not* durability (the broker syncs to disk every 2 minutes by default): a batch
leaves the outbox only on the control plane's signed commit receipt, which arrives
on the site's command subject like every command. A batch without a receipt after
``receipt_timeout_s`` is sent again.

Sequence numbers must reach the control plane in order. When a publish is not
acknowledged (no stream leader during a cluster fail-over: ``503 no responders``;
a message lost with a killed node: timeout), later publishes may still succeed,
so delivery rewinds at once to the first unacknowledged batch and resends from
there, in order, after ``publish_retry_delay_s`` (the consumer holds the later ones
until the gap is filled). With several servers (a cluster), each reconnect starts
at the next server in the list, so a dead node costs one refused connect.

In ``both`` mode the gRPC uplink is primary: while it is connected this uplink stays
connected for receipts and commands but publishes nothing (``standby``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import nats
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from control_plane.transports.nats_config import (
    MSG_ID_HEADER,
    command_subject,
    inbox_prefix,
    telemetry_subject,
)
from control_plane.transports.nats_config import SEQ_HEADER as SEQ_HEADER
from edge_node.credentials import EdgeCredentials, EnrollmentError, renew
from edge_node.outbox import Outbox
from edge_node.uplinks.delivery import Delivery, DeliveryPolicy
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.clock import Clock
from security.rotation import should_rotate

log = logging.getLogger(__name__)

CommandHandler = Callable[[epb.SignedEnvelope], Awaitable[epb.SignedEnvelope]]
MSG_ID = MSG_ID_HEADER


@dataclass(frozen=True)
class NatsUplinkSettings:
    servers: tuple[str, ...]  # e.g. ("tls://127.0.0.1:4222",); several for a cluster
    server_name: str = ""  # TLS name to verify on the broker (default: the dialled host)
    window: int = 256
    receipt_timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    publish_ack_timeout_s: float = 5.0
    publish_retry_delay_s: float = 0.5  # wait before resending after a publish failed
    renewal_endpoint: str = ""  # control-plane link HOST:PORT for certificate renewal

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("the NATS uplink needs at least one server URL")
        if self.receipt_timeout_s <= 0:
            raise ValueError("receipt_timeout_s must be positive")


def message_id(envelope: epb.SignedEnvelope) -> str:
    """De-duplication id: SHA-256 of the exact envelope bytes (a re-signed copy is new)."""
    return hashlib.sha256(envelope.SerializeToString(deterministic=True)).hexdigest()


class NatsUplink:
    def __init__(
        self,
        *,
        credentials: EdgeCredentials,
        outbox: Outbox,
        settings: NatsUplinkSettings,
        clock: Clock,
        on_command: CommandHandler,
        standby: Callable[[], bool] = lambda: False,
    ) -> None:
        self._creds = credentials
        self._settings = settings
        self._on_command = on_command
        self._standby = standby
        self._delivery = Delivery(
            credentials,
            outbox,
            clock,
            DeliveryPolicy(window=settings.window, receipt_timeout_s=settings.receipt_timeout_s),
        )
        self.stats = self._delivery.stats
        self._wake = asyncio.Event()
        self._subject = telemetry_subject(credentials.site_id)
        self._js: Any = None  # the JetStream context of the current connection
        self._clock = clock
        self._next_renewal = 0.0  # monotonic time of the next renewal attempt [s]
        self._server_index = 0  # where the next connect starts in settings.servers
        self._failed_rounds = 0  # consecutive publish rounds with failures (backoff)
        self.publish_failures = 0  # publishes the broker did not acknowledge

    def notify(self) -> None:
        self._wake.set()

    def _tls(self) -> ssl.SSLContext:
        d = self._creds.directory
        ctx = ssl.create_default_context(cadata=self._creds.bundle_pem.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(d / "tls.pem", d / "tls.key")  # re-read: renewals replace them
        return ctx

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._serve()
                attempt = 0
            except (nats.errors.Error, OSError, TimeoutError, ConnectionError) as e:
                log.warning("nats uplink %s: %s", self._creds.site_id, e or type(e).__name__)
            finally:
                self.stats.connected = False
            attempt += 1
            delay = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _serve(self) -> None:
        options: dict[str, Any] = {
            "tls": self._tls(),
            "inbox_prefix": inbox_prefix(self._creds.spiffe_id),
            "name": str(self._creds.spiffe_id),
            "connect_timeout": self._settings.connect_timeout_s,
            "allow_reconnect": False,  # this loop reconnects and restarts delivery itself
            "max_reconnect_attempts": 1,
        }
        if self._settings.server_name:
            options["tls_hostname"] = self._settings.server_name
        servers = self._settings.servers
        first = self._server_index % len(servers)
        try:
            # Our order, not nats-py's shuffle: after a failure, start at the next server.
            nc = await nats.connect(
                [*servers[first:], *servers[:first]], dont_randomize=True, **options
            )
        except BaseException:
            self._server_index += 1
            raise
        try:
            await nc.subscribe(command_subject(self._creds.site_id), cb=self._on_message)
            await nc.flush(timeout=max(1, int(self._settings.connect_timeout_s)))
            js = nc.jetstream()
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.endpoint = str(nc.connected_url.netloc if nc.connected_url else "")
            self._delivery.restart()
            self._js = js
            while not nc.is_closed:
                if await self._renew_if_due():
                    return  # reconnect with the new certificate
                sent = 0 if self._standby() else await self._publish_some()
                if not sent:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self._wake.wait()
            raise ConnectionError("NATS connection closed")
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _renew_if_due(self) -> bool:
        """Renew the certificate at half-life over the control plane's mTLS Renewal RPC.

        (In ``both`` mode the gRPC uplink renews; this covers NATS-only edges.)
        """
        loop_time = asyncio.get_running_loop().time()
        if self._standby() or not self._settings.renewal_endpoint or loop_time < self._next_renewal:
            return False
        if not should_rotate(self._creds.certificate, self._clock.now_ms()):
            return False
        options = [("grpc.ssl_target_name_override", self._creds.target_name())]
        channel = grpc.aio.secure_channel(
            self._settings.renewal_endpoint, self._creds.channel_credentials(), options
        )
        try:
            await renew(self._creds, channel)
        except EnrollmentError as e:
            log.error("nats uplink %s: certificate renewal failed: %s", self._creds.site_id, e)
            self._next_renewal = loop_time + 10.0
            return False
        finally:
            await channel.close(grace=None)
        self.stats.rotations += 1
        return True

    async def _publish_some(self) -> int:
        entries = self._delivery.next_batch()
        acks = []
        for entry in entries:
            data = lpb.EdgeMessage(telemetry=entry.envelope).SerializeToString()
            headers = {MSG_ID: message_id(entry.envelope), SEQ_HEADER: str(entry.seq)}
            acks.append(await self._js.publish_async(self._subject, data, headers=headers))
        if acks:
            # The broker's ack only means "in the stream"; deletion waits for the receipt.
            _done, pending = await asyncio.wait(acks, timeout=self._settings.publish_ack_timeout_s)
            for future in pending:
                future.cancel()
            failed = [
                (entry.seq, future)
                for entry, future in zip(entries, acks, strict=True)
                if future.cancelled() or future.exception() is not None
            ]
            if failed:
                self._publish_failed(failed)
            else:
                self._failed_rounds = 0
        return len(entries)

    def _publish_failed(self, failed: list[tuple[int, asyncio.Future[Any]]]) -> None:
        """Resend from the first unacknowledged batch, in order, after a pause that doubles
        with each failed round (up to 4x ``publish_retry_delay_s``): an election is not
        hammered, and the edge is back within seconds of a new stream leader."""
        self.publish_failures += len(failed)
        self._failed_rounds += 1
        first_seq, first = min(failed, key=lambda f: f[0])
        why = "no ack in time" if first.cancelled() else repr(first.exception())
        log.warning(
            "nats uplink %s: %d publishes not acknowledged (%s); resending from seq %d",
            self._creds.site_id,
            len(failed),
            why,
            first_seq,
        )
        base = self._settings.publish_retry_delay_s
        delay_s = base * min(4, 2 ** (self._failed_rounds - 1))
        self._delivery.rewind(first_seq, delay_s)

    async def _on_message(self, msg: Msg) -> None:
        message = lpb.ControlMessage()
        try:
            message.ParseFromString(msg.data)
        except DecodeError:
            self.stats.receipts_rejected += 1
            return
        kind = message.WhichOneof("kind")
        if kind == "receipt":
            self._delivery.on_receipt(message.receipt)
            self._wake.set()
        elif kind == "command":
            result = await self._on_command(message.command)
            data = lpb.EdgeMessage(command_result=result).SerializeToString()
            with contextlib.suppress(Exception):
                await self._js.publish(self._subject, data, headers={MSG_ID: message_id(result)})
