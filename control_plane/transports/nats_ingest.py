"""NATS transport of the control plane: a durable JetStream pull consumer feeding the
same ingest pipeline as gRPC, and the sender of receipts and commands to edges.

A message is acknowledged to JetStream only after the pipeline answered it (a batch
is committed, refused, or a duplicate): a crash before that means redelivery, and
redelivery is harmless because commit is idempotent on (site, seq). Retryable
failures (store unavailable) are negatively acknowledged and come back later.
Backpressure: the next fetch waits until the current one is fully processed, so a
slow pipeline slows consumption and never drops. Several control-plane processes may
share the durable consumer (``gridfort control-plane ingest-worker``, issue #3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.receipts import sign_receipt
from control_plane.ingest.types import Peer
from control_plane.transports.nats_config import STREAM_NAME, TELEMETRY_PREFIX, command_subject
from control_plane.transports.nats_server import EmbeddedNats
from gridfort.v1 import edge_link_pb2 as lpb
from security.clock import Clock
from security.envelope import EnvelopeSigner
from security.refusals import Reason, Refusal
from security.tasks import reap

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
DURABLE = "ingest"


@dataclass
class NatsIngestStats:
    messages: int = 0
    dropped_without_msg_id: int = 0
    naks: int = 0


class NatsIngest:
    def __init__(
        self,
        *,
        broker: EmbeddedNats,
        pipeline: IngestPipeline,
        dispatcher: CommandDispatcher,
        signer: EnvelopeSigner,
        clock: Clock,
        name: str = "cp-1",
        fetch_batch: int = 64,
    ) -> None:
        self._broker = broker
        self._pipeline = pipeline
        self._dispatcher = dispatcher
        self._signer = signer
        self._clock = clock
        self._name = name
        self._fetch_batch = fetch_batch
        self.stats = NatsIngestStats()
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nc = await self._broker.connect_control_plane(
            self._name, allow_reconnect=True, max_reconnect_attempts=-1, error_cb=self._error
        )
        js = self._nc.jetstream()
        self._sub = await js.pull_subscribe(
            f"{TELEMETRY_PREFIX}.*", durable=DURABLE, stream=STREAM_NAME
        )
        self._dispatcher.add_fallback_sink(self.send_to_site)
        self._task = asyncio.ensure_future(self._consume())

    async def stop(self) -> None:
        await reap(self._task)
        self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _error(self, e: Exception) -> None:
        log.warning("nats ingest: %s", e)

    def send_to_site(self, site_id: str, message: lpb.ControlMessage) -> bool:
        """Publish a receipt or command on the site's command subject (no await needed)."""
        if self._nc is None or self._nc.is_closed:
            return False
        task = asyncio.ensure_future(
            self._nc.publish(command_subject(site_id), message.SerializeToString())
        )
        task.add_done_callback(_log_failure)
        return True

    async def _consume(self) -> None:
        while True:
            try:
                messages = await self._sub.fetch(self._fetch_batch, timeout=1.0)
            except TimeoutError:
                continue
            except Exception as e:  # reconnecting; do not spin
                log.warning("nats ingest fetch: %s", e)
                await asyncio.sleep(0.5)
                continue
            await asyncio.gather(*(self._handle(m) for m in messages))

    async def _handle(self, msg: Msg) -> None:
        self.stats.messages += 1
        if not msg.headers or MSG_ID not in msg.headers:
            # JetStream publish acks can be aimed at a telemetry subject by any client;
            # such noise carries no Msg-Id and is not blamed on the site.
            self.stats.dropped_without_msg_id += 1
            await msg.term()
            return
        site_token = msg.subject.rsplit(".", 1)[-1]
        peer = self._pipeline.authenticate_subject(site_token)
        if isinstance(peer, Refusal):
            await msg.term()
            return
        message = lpb.EdgeMessage()
        try:
            message.ParseFromString(msg.data)
        except DecodeError:
            message.Clear()
        kind = message.WhichOneof("kind")
        if kind == "telemetry":
            await self._telemetry(peer, message, msg)
        elif kind == "command_result":
            self._dispatcher.on_result(peer, message.command_result, self._pipeline.keys)
            await msg.ack()
        else:
            refusal = Refusal(Reason.MALFORMED_ENVELOPE, "not a valid EdgeMessage", peer.uri)
            self._pipeline.refuse(refusal)
            await msg.term()

    async def _telemetry(self, peer: Peer, message: lpb.EdgeMessage, msg: Msg) -> None:
        try:
            result = await self._pipeline.ingest(peer, message.telemetry)
        except Exception:
            log.exception("ingest failed for %s", peer.uri)
            result = self._pipeline.internal_error(peer, message.telemetry)
        receipt = sign_receipt(result, self._signer, self._clock.now_ms())
        self.send_to_site(peer.spiffe_id.name, lpb.ControlMessage(receipt=receipt))
        if result.reason in (Reason.UNAVAILABLE, Reason.INTERNAL):  # the store failed: again later
            self.stats.naks += 1
            await msg.nak(delay=1.0)
        else:
            await msg.ack()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("nats publish failed: %s", task.exception())
