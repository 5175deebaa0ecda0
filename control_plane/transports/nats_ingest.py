"""NATS transport of the control plane: partitioned JetStream consumers feeding the same
ingest pipeline as gRPC, and the sender of receipts and commands to edges.

One class serves the control plane's own consumer and every ``gridfort control-plane
ingest-worker`` process; they all share the partitions of the telemetry stream:

* **Partitions.** The stream stores each site under one of N partitions
  (``gridfort.v1.ingest.<p>.<site>``), each with a durable pull consumer
  ``ingest-p<p>``. Workers announce themselves every ``heartbeat_s`` on
  ``gridfort.v1.workers.<worker>`` and each consumes the partitions that
  :func:`~control_plane.transports.nats_partitions.assign_partitions` gives it, so
  adding a worker moves partitions to it (more throughput) and a worker that dies
  (SIGKILL) loses its partitions after ``member_ttl_s``; its unacknowledged messages
  come back after ``ack_wait_s`` to the new owner.
* **Order per site.** A site is released to the pipeline one batch at a time, in
  sequence order (:class:`~control_plane.transports.nats_site_order.SiteOrder`):
  the replay guard refuses a batch below the site's high-water mark, and a NATS
  cluster fail-over or a dead worker can put later batches in the stream before an
  earlier one. A gap waits for the missing batch (the edge re-sends it, JetStream
  redelivers it, or the store shows another worker committed it) for up to
  ``gap_timeout_s``. On acquiring partitions the worker adopts the store's
  high-water marks into its replay guard, so a site moving between workers is
  judged against what is committed, not what this process remembers.
* **Ack after commit.** A message is acknowledged only after the pipeline answered
  it (committed, duplicate, or refused for good); a store failure is negatively
  acknowledged and redelivered. Redelivery is harmless: commit is idempotent on
  (site, seq).
* **Backpressure and fairness.** Each partition keeps at most ``max_outstanding``
  messages fetched and unanswered (pull credit, see
  :class:`~control_plane.transports.nats_pull.PullConsumer`): a slow pipeline slows
  consumption, nothing is dropped. Each site holds at most ``max_held_per_site``
  of them and is processed one batch at a time, so a flooding site gets the same
  share of the pipeline as any other; what it sends beyond its share is negatively
  acknowledged (redelivered later), and the stream refuses it beyond
  ``max_msgs_per_subject`` unconsumed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.ingest.receipts import IngestResult, sign_receipt
from control_plane.ingest.types import Peer
from control_plane.store.telemetry_store import TelemetryStore
from control_plane.transports.nats_client import ControlPlaneClientTls, connect_control_plane
from control_plane.transports.nats_config import (
    MSG_ID_HEADER,
    SEQ_HEADER,
    STREAM_NAME,
    WORKERS_PREFIX,
    command_subject,
    partition_consumer,
    worker_subject,
)
from control_plane.transports.nats_consumers import NatsIngestSettings as NatsIngestSettings
from control_plane.transports.nats_consumers import ensure_partition_consumer
from control_plane.transports.nats_partitions import WorkerMembership, my_partitions
from control_plane.transports.nats_pull import PullConsumer
from control_plane.transports.nats_site_order import SiteOrder
from control_plane.transports.nats_stream import stream_partitions
from gridfort.v1 import edge_link_pb2 as lpb
from security.clock import Clock
from security.envelope import EnvelopeSigner
from security.refusals import GridfortError, Reason, Refusal
from security.tasks import reap

log = logging.getLogger(__name__)

MSG_ID = MSG_ID_HEADER
_TICK_S = 0.25
_RETRYABLE = (Reason.UNAVAILABLE, Reason.INTERNAL)
_STALE_STATE = (Reason.UNKNOWN_SIGNING_KEY, Reason.ASSET_NOT_AUTHORIZED)


@dataclass
class NatsIngestStats:
    messages: int = 0
    dropped_without_msg_id: int = 0
    naks: int = 0  # store failures, redelivered later
    handed_back: int = 0  # over a site's share: negatively acknowledged for later
    gaps_waited: int = 0  # a later batch waited for a missing one (then processed in order)
    gaps_skipped: int = 0  # ... and gave up waiting after gap_timeout_s
    store_refreshes: int = 0
    rebalances: int = 0
    partitions: tuple[int, ...] = ()
    workers: tuple[str, ...] = ()
    statuses: dict[str, int] = field(default_factory=dict)  # pull status codes seen


@dataclass(slots=True)
class _Delivery:
    msg: Msg
    pinged_s: float  # when it was fetched or last signalled in progress [s, loop time]


class _Partition:
    """What this process holds of one partition: its pull, per-site order, in-flight work."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pull: PullConsumer | None = None
        self.sites: dict[str, SiteOrder[_Delivery]] = {}
        self.held: set[str] = set()  # sites with messages waiting in their SiteOrder
        self.busy: set[str] = set()  # sites with a batch in the pipeline
        self.dirty: set[str] = set()  # sites to look at on the next pump
        self.outstanding = 0
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop_task: asyncio.Task[None] | None = None
        self.closing = False


class NatsIngest:
    """Consume the partitions assigned to this process; receipts back on each site's subject."""

    def __init__(
        self,
        *,
        urls: Sequence[str],
        tls: ControlPlaneClientTls,
        pipeline: IngestPipeline,
        store: TelemetryStore,
        dispatcher: CommandDispatcher,
        signer: EnvelopeSigner,
        clock: Clock,
        settings: NatsIngestSettings | None = None,
    ) -> None:
        self._urls = tuple(urls)
        self._tls = tls
        self._pipeline = pipeline
        self._store = store
        self._dispatcher = dispatcher
        self._signer = signer
        self._clock = clock
        self.settings = settings or NatsIngestSettings()
        s = self.settings
        self.worker_id = s.worker_id or f"{s.name}-{secrets.token_hex(4)}"
        self._membership = WorkerMembership(self.worker_id, s.member_ttl_s)
        self.stats = NatsIngestStats()
        self.partitions = 0
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._last_refresh = 0.0
        self._parts: dict[int, _Partition] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._warned_partitions: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._nc = await connect_control_plane(
            self._urls,
            self._tls.context,
            self._tls.spiffe_id,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._error,
            reconnected_cb=self._reconnected,
        )
        self._js = self._nc.jetstream(timeout=5.0)
        self.partitions = await self._read_partitions()
        if self.settings.consume:
            await self._nc.subscribe(f"{WORKERS_PREFIX}.*", cb=self._on_heartbeat)
            # In a cluster each consumer is a Raft group elected on creation (~1 s): create
            # them all at once now, so that taking over a partition later is a cheap bind.
            created = await asyncio.gather(
                *(self._ensure_consumer(p) for p in range(self.partitions)),
                return_exceptions=True,
            )
            for p, result in enumerate(created):
                if isinstance(result, BaseException):  # retried when the partition is taken
                    log.warning("consumer %s: %s", partition_consumer(p), result)
        self._dispatcher.add_fallback_sink(self.send_to_site)
        if self.settings.consume:  # started = consuming: hear the others, take a share
            await self._beat()
            await asyncio.sleep(2 * self.settings.heartbeat_s)
            loop = asyncio.get_running_loop()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._rebalance(loop.time())
        self._task = asyncio.ensure_future(self._run())
        log.info("nats ingest %s: %d partitions", self.worker_id, self.partitions)

    async def _read_partitions(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout_s
        while True:
            try:
                info = await self._js.stream_info(STREAM_NAME)
                return stream_partitions(info.config)
            except (nats.errors.Error, TimeoutError) as e:
                if loop.time() > deadline:
                    raise GridfortError(f"the telemetry stream does not answer: {e}") from None
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Hand back what is held (redelivered at once to the next owner), say goodbye."""
        await reap(self._task)
        self._task = None
        await reap(self._refresh)
        for p in list(self._parts):
            with contextlib.suppress(Exception):
                await self._release(p)
        if self._nc is not None and not self._nc.is_closed and self.settings.consume:
            with contextlib.suppress(Exception):
                goodbye = {"worker": self.worker_id, "leaving": True}
                await self._nc.publish(worker_subject(self.worker_id), json.dumps(goodbye).encode())
                await self._nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self._nc.close()
        for task in list(self._background):
            await reap(task)

    async def _error(self, e: Exception) -> None:
        log.warning("nats ingest %s: %s", self.worker_id, e or type(e).__name__)

    async def _reconnected(self) -> None:
        for part in self._parts.values():  # the server forgot our pull requests
            if part.pull is not None:
                part.pull.reset()
            part.wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("nats ingest: %s", task.exception())

    # -- membership and partitions ---------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        next_beat = loop.time() + s.heartbeat_s
        while True:
            now = loop.time()
            try:
                if s.consume and now >= next_beat:
                    await self._beat()
                    next_beat = now + s.heartbeat_s
                if s.consume:
                    await self._rebalance(now)
                self._tick(now)
                if self._tls.renew_if_due():
                    log.info("nats ingest %s: renewed its client certificate", self.worker_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep consuming; the next tick tries again
                log.warning("nats ingest %s: %s", self.worker_id, e or type(e).__name__)
            await asyncio.sleep(_TICK_S)

    async def _beat(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            return
        st = self.stats
        beat = {  # also a health line: `nats sub 'gridfort.v1.workers.*'` shows every worker
            "worker": self.worker_id,
            "partitions": self.partitions,
            "owned": sorted(self._parts),
            "messages": st.messages,
            "gaps_waited": st.gaps_waited,
            "gaps_skipped": st.gaps_skipped,
            "handed_back": st.handed_back,
        }
        await self._nc.publish(worker_subject(self.worker_id), json.dumps(beat).encode())

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = json.loads(msg.data)
            worker = str(beat["worker"])[:128]
        except (ValueError, KeyError, TypeError):
            return
        if beat.get("leaving"):
            self._membership.left(worker)
            return
        if beat.get("partitions") != self.partitions and worker not in self._warned_partitions:
            self._warned_partitions.add(worker)
            log.error(
                "ingest worker %s uses %s partitions, this one %d: restart it",
                worker,
                beat.get("partitions"),
                self.partitions,
            )
        self._membership.heard(worker, asyncio.get_running_loop().time())

    async def _rebalance(self, now: float) -> None:
        want = my_partitions(self.partitions, self._membership, now)
        self.stats.workers = self._membership.alive(now)
        if want == set(self._parts):
            return
        for p in sorted(set(self._parts) - want):
            await self._release(p)
        gained = sorted(want - set(self._parts))
        if gained:
            await self._adopt_store_marks()
            results = await asyncio.gather(
                *(self._acquire(p) for p in gained), return_exceptions=True
            )
            for p, result in zip(gained, results, strict=True):
                if isinstance(result, BaseException):  # the next tick tries again
                    log.warning("nats ingest: partition %d: %s", p, result or type(result))
        self.stats.partitions = tuple(sorted(self._parts))
        self.stats.rebalances += 1
        log.info("nats ingest %s: partitions %s", self.worker_id, list(self.stats.partitions))

    async def _ensure_consumer(self, index: int) -> None:
        await ensure_partition_consumer(self._js, index, self.settings)

    async def _acquire(self, index: int) -> None:
        assert self._nc is not None
        await self._ensure_consumer(index)
        part = _Partition(index)
        part.pull = PullConsumer(
            self._nc,
            stream=STREAM_NAME,
            consumer=partition_consumer(index),
            on_message=lambda msg: self._route(part, msg),
            on_idle=part.wake.set,
            max_batch=self.settings.fetch_batch,
        )
        await part.pull.start()
        part.loop_task = asyncio.ensure_future(self._pull_loop(part))
        self._parts[index] = part

    async def _release(self, index: int) -> None:
        part = self._parts.pop(index)
        part.closing = True
        await reap(part.loop_task)
        if part.pull is not None:
            await part.pull.stop()
        if part.tasks:  # let the batches in the pipeline finish and be acknowledged
            await asyncio.wait(set(part.tasks), timeout=5.0)
        for token in part.held:
            for d in part.sites[token].drain():
                with contextlib.suppress(Exception):
                    await d.msg.nak()
        part.held.clear()

    async def _pull_loop(self, part: _Partition) -> None:
        assert part.pull is not None
        while not part.closing:
            part.wake.clear()
            try:
                await part.pull.request(self.settings.max_outstanding - part.outstanding)
            except Exception as e:  # disconnected: nats-py reconnects, we ask again
                log.debug("pull request on partition %d: %s", part.index, e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await part.wake.wait()

    async def _adopt_store_marks(self) -> None:
        """What other workers committed: raise the replay guard and each site's order to it."""
        marks = await asyncio.to_thread(self._store.high_water_marks)
        guard = self._pipeline.guard
        for site_id, hwm in marks.items():
            if hwm > guard.high_water_mark(site_id):
                with contextlib.suppress(ValueError):  # this process has a commit above it
                    guard.reserve(site_id, hwm, b"")
                    guard.commit(site_id, hwm)
            token = site_id.replace(".", "~")
            for part in self._parts.values():
                order = part.sites.get(token)
                if order is not None:
                    order.raise_expected(hwm + 1)
                    part.dirty.add(token)
        self.stats.store_refreshes += 1
        self._last_refresh = asyncio.get_running_loop().time()

    # -- per message -----------------------------------------------------------------------------

    def _route(self, part: _Partition, msg: Msg) -> None:
        self.stats.messages += 1
        if part.closing:
            self._spawn(msg.nak())
            return
        if not msg.headers or MSG_ID not in msg.headers:
            # JetStream publish acks can be aimed at a telemetry subject by any client;
            # such noise carries no Msg-Id and is not blamed on the site.
            self.stats.dropped_without_msg_id += 1
            self._spawn(msg.term())
            return
        token = msg.subject.rsplit(".", 1)[-1]
        order = part.sites.get(token)
        if order is None:
            s = self.settings
            order = part.sites[token] = SiteOrder(
                max_held=s.max_held_per_site, gap_timeout_s=s.gap_timeout_s
            )
        now = asyncio.get_running_loop().time()
        part.outstanding += 1
        handed_back = order.add(_seq_hint(msg.headers.get(SEQ_HEADER)), _Delivery(msg, now))
        if handed_back is not None:
            part.outstanding -= 1
            self.stats.handed_back += 1
            self._spawn(handed_back.msg.nak(delay=self.settings.nak_delay_s))
        part.held.add(token)
        part.dirty.add(token)
        self._pump(part)

    def _pump(self, part: _Partition) -> None:
        """Start the next batch of every site that has none in the pipeline."""
        now = asyncio.get_running_loop().time()
        dirty, part.dirty = part.dirty, set()
        for token in dirty:
            order = part.sites.get(token)
            if order is None or token in part.busy:
                continue
            # what this process committed (over any transport) is never a gap
            site_id = token.replace("~", ".")
            order.raise_expected(self._pipeline.guard.high_water_mark(site_id) + 1)
            skipped, waited = order.gaps_skipped, order.gaps_waited
            ready = order.pop_ready(now)
            self.stats.gaps_waited += order.gaps_waited - waited
            if not len(order):
                part.held.discard(token)
            if ready is None:
                continue
            if order.gaps_skipped > skipped:
                self.stats.gaps_skipped += 1
                log.warning(
                    "nats ingest: site %s: batch %d waited %.0f s for its predecessor; going on",
                    token,
                    ready[0] or 0,
                    self.settings.gap_timeout_s,
                )
            part.busy.add(token)
            task = asyncio.ensure_future(self._process(part, token, order, *ready))
            part.tasks.add(task)
            task.add_done_callback(part.tasks.discard)

    async def _process(
        self,
        part: _Partition,
        token: str,
        order: SiteOrder[_Delivery],
        hint: int | None,
        delivery: _Delivery,
    ) -> None:
        final, seq = False, hint
        try:
            final, seq = await self._handle(token, hint, delivery.msg)
        except Exception:
            log.exception("nats ingest: message of %s failed", token)
            with contextlib.suppress(Exception):
                await delivery.msg.nak(delay=self.settings.nak_delay_s)
        finally:
            part.busy.discard(token)
            part.outstanding -= 1
            if final and seq is not None:
                order.done(seq)
            part.dirty.add(token)
            part.wake.set()
            if not part.closing:
                self._pump(part)

    async def _handle(self, token: str, hint: int | None, msg: Msg) -> tuple[bool, int | None]:
        """Answer one message. Returns (final, the batch's sequence number if known)."""
        message = lpb.EdgeMessage()
        try:
            message.ParseFromString(msg.data)
        except DecodeError:
            message.Clear()
        kind = message.WhichOneof("kind")
        if kind == "telemetry" and message.telemetry.key_id not in self._pipeline.keys:
            self._pipeline.refresh()  # enrolled since this process last looked (workers)
        peer = self._pipeline.authenticate_subject(token)
        if isinstance(peer, Refusal):
            await msg.term()
            return True, hint
        if kind == "telemetry":
            return await self._telemetry(peer, message, msg, hint)
        if kind == "command_result":
            self._dispatcher.on_result(peer, message.command_result, self._pipeline.keys)
            await msg.ack()
            return True, hint
        refusal = Refusal(Reason.MALFORMED_ENVELOPE, "not a valid EdgeMessage", peer.uri)
        self._pipeline.refuse(refusal)
        await msg.term()
        return True, hint

    async def _telemetry(
        self, peer: Peer, message: lpb.EdgeMessage, msg: Msg, hint: int | None
    ) -> tuple[bool, int | None]:
        result = await self._ingest(peer, message)
        if result.reason in _STALE_STATE:
            # Registered or enrolled a moment ago, and this process has not re-read the
            # registry yet (ingest workers refresh every watch interval): look again.
            seen = (self._pipeline.registry_snapshot, self._pipeline.keys)
            self._pipeline.refresh()
            if (self._pipeline.registry_snapshot, self._pipeline.keys) != seen:
                result = await self._ingest(peer, message)
        receipt = sign_receipt(result, self._signer, self._clock.now_ms())
        self.send_to_site(peer.spiffe_id.name, lpb.ControlMessage(receipt=receipt))
        if result.reason in _RETRYABLE:  # the store failed: again later, in order
            self.stats.naks += 1
            await msg.nak(delay=self.settings.nak_delay_s)
            return False, hint
        await msg.ack()
        return True, result.seq or hint

    async def _ingest(self, peer: Peer, message: lpb.EdgeMessage) -> IngestResult:
        try:
            return await self._pipeline.ingest(peer, message.telemetry)
        except Exception:
            log.exception("ingest failed for %s", peer.uri)
            return self._pipeline.internal_error(peer, message.telemetry)

    def _tick(self, now: float) -> None:
        """Gap timeouts, in-progress signals for held messages, store refresh for old gaps."""
        ping_after = self.settings.ack_wait_s / 3
        stale_gap = False
        statuses: Counter[str] = Counter()
        for part in self._parts.values():
            for token in list(part.held):
                order = part.sites[token]
                if not len(order):
                    part.held.discard(token)
                    continue
                part.dirty.add(token)
                if order.gap_age(now) > 1.0:
                    stale_gap = True
                for d in order.items():
                    if now - d.pinged_s > ping_after:
                        d.pinged_s = now
                        self._spawn(d.msg.in_progress())
            self._pump(part)
            if part.pull is not None:
                statuses.update(part.pull.statuses)
        self.stats.statuses = dict(statuses)
        if (
            stale_gap
            and (self._refresh is None or self._refresh.done())
            and now - self._last_refresh > 1.0
        ):
            self._refresh = asyncio.ensure_future(self._adopt_store_marks())

    # -- to the edges ----------------------------------------------------------------------------

    def send_to_site(self, site_id: str, message: lpb.ControlMessage) -> bool:
        """Publish a receipt or command on the site's command subject (no await needed)."""
        if self._nc is None or self._nc.is_closed:
            return False
        self._spawn(self._nc.publish(command_subject(site_id), message.SerializeToString()))
        return True

    @property
    def owned_partitions(self) -> frozenset[int]:
        return frozenset(self._parts)


def _seq_hint(raw: str | None) -> int | None:
    """The edge's ``Gridfort-Seq`` header: a positive integer, else no hint."""
    if raw is None or not raw.isdigit() or len(raw) > 19:
        return None
    seq = int(raw)
    return seq if seq > 0 else None
