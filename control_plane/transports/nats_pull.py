"""Continuous pull from one durable JetStream consumer, with bounded credit.

nats-py's ``fetch(n)`` returns only when ``n`` messages arrived or its timeout
expired, so at low load the first message waits for the timeout. This adapter
keeps up to two pull requests open (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``,
each for at most ``max_batch`` messages and ``expires_s``) and hands every message
to ``on_message`` the moment it arrives. The caller says how much room it has
(:meth:`PullConsumer.request`): the requested-but-undelivered credit never exceeds
it, so a slow pipeline slows consumption and never makes the client buffer grow.

Each request gets its own reply subject (``<inbox>.<n>``), so the server's status
messages end exactly that request: ``408`` (expired), ``404``, ``409`` (leadership
change, max waiting, consumer deleted). Delivered messages carry their own subject,
not the request's, so they are counted against the oldest open request: the server
serves a consumer's waiting requests in arrival order. A request that never ends (its
server was killed) is forgotten ``expires_s + 1`` seconds after it was sent;
:meth:`reset` forgets them all at once after a reconnect. ``503`` (the consumer has no leader
while a cluster elects one) pauses requests for ``no_leader_pause_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

_STATUS = "Status"
_HEARTBEAT = "100"
_NO_RESPONDERS = "503"  # the consumer has no leader right now (cluster election)
_MAX_OPEN_REQUESTS = 2


class PullConsumer:
    """Pulls ``consumer`` of ``stream`` on ``nc``; ``on_message`` gets each delivery."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        stream: str,
        consumer: str,
        on_message: Callable[[Msg], None],
        on_idle: Callable[[], None] = lambda: None,
        max_batch: int = 128,
        expires_s: float = 2.0,
        no_leader_pause_s: float = 0.25,
    ) -> None:
        if max_batch < 1 or expires_s <= 0:
            raise ValueError("max_batch must be >= 1 and expires_s positive")
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_message = on_message
        self._on_idle = on_idle
        self._max_batch = max_batch
        self._expires_s = expires_s
        # token -> [remaining, forget at (loop time)], oldest first
        self._open: dict[str, list[float]] = {}
        self._tokens = itertools.count(1)
        self._no_leader_pause_s = no_leader_pause_s
        self._paused_until = 0.0  # loop time
        self._prefix = ""
        self._sub: Any = None
        self.statuses: Counter[str] = Counter()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_delivery)

    async def stop(self) -> None:
        self._open.clear()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as e:  # the connection may be closed already
                log.debug("pull consumer unsubscribe: %s", e)

    @property
    def requested(self) -> int:
        """Messages asked for and not delivered yet."""
        return int(sum(r[0] for r in self._open.values()))

    def reset(self) -> None:
        """Forget every open request (the connection changed: the server forgot them too)."""
        self._open.clear()

    async def request(self, room: int) -> None:
        """Ask for more messages while ``room`` (free slots of the caller) allows."""
        loop_time = asyncio.get_running_loop().time()
        for token, (_remaining, forget_at) in list(self._open.items()):
            if loop_time > forget_at:
                del self._open[token]
        if loop_time < self._paused_until:
            return
        while len(self._open) < _MAX_OPEN_REQUESTS and room - self.requested > 0:
            batch = min(self._max_batch, room - self.requested)
            token = str(next(self._tokens))
            self._open[token] = [float(batch), loop_time + self._expires_s + 1.0]
            body = {"batch": batch, "expires": int(self._expires_s * 1e9)}
            await self._nc.publish(
                self._api, json.dumps(body).encode(), reply=f"{self._prefix}.{token}"
            )

    async def _on_delivery(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers and not msg.reply else None
        if status is not None:
            token = msg.subject.rsplit(".", 1)[-1]  # a status comes on the request's subject
            if status != _HEARTBEAT:  # 404/408/409/503: this request is over
                self.statuses[status] += 1
                self._open.pop(token, None)
                if status == _NO_RESPONDERS:
                    loop_time = asyncio.get_running_loop().time()
                    self._paused_until = loop_time + self._no_leader_pause_s
                self._on_idle()
            return
        oldest = next(iter(self._open), None)  # dicts keep insertion order
        if oldest is not None:
            request = self._open[oldest]
            request[0] -= 1
            if request[0] <= 0:
                del self._open[oldest]
                self._on_idle()
        self._on_message(msg)
