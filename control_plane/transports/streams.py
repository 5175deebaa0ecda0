"""Open edge streams: per-identity limits, delivery of commands, and forced closure.

Pure bookkeeping, no gRPC: the transport registers each authenticated stream
and the revocation watcher closes the ones whose peer is no longer valid.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from control_plane.ingest.types import Peer
from gridfort.v1 import edge_link_pb2 as lpb
from security.refusals import Reason, Refusal


@dataclass(eq=False)
class EdgeStream:
    """One open stream of one authenticated peer."""

    stream_id: int
    peer: Peer
    opened_ms: int
    outbox: asyncio.Queue[lpb.ControlMessage] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: Refusal | None = None
    last_seen_ms: int = 0

    def close(self, refusal: Refusal) -> None:
        if not self.closed.is_set():
            self.close_reason = refusal
            self.closed.set()

    def send(self, message: lpb.ControlMessage) -> None:
        self.outbox.put_nowait(message)


class StreamRegistry:
    def __init__(self, max_streams_per_identity: int = 2) -> None:
        if max_streams_per_identity < 1:
            raise ValueError("max_streams_per_identity must be >= 1")
        self._max = max_streams_per_identity
        self._by_identity: dict[str, list[EdgeStream]] = defaultdict(list)
        self._ids = itertools.count(1)

    def open(self, peer: Peer, now_ms: int) -> EdgeStream | Refusal:
        streams = self._by_identity[peer.uri]
        if len(streams) >= self._max:
            return Refusal(
                Reason.TOO_MANY_STREAMS,
                f"{len(streams)} streams already open for this identity; limit {self._max}",
                peer.uri,
            )
        stream = EdgeStream(next(self._ids), peer, now_ms, last_seen_ms=now_ms)
        streams.append(stream)
        return stream

    def remove(self, stream: EdgeStream) -> None:
        streams = self._by_identity.get(stream.peer.uri, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._by_identity.pop(stream.peer.uri, None)

    def all(self) -> list[EdgeStream]:
        return [s for streams in self._by_identity.values() for s in streams]

    def newest_for(self, uri: str) -> EdgeStream | None:
        """The most recently opened live stream of an identity (commands go there)."""
        live = [s for s in self._by_identity.get(uri, []) if not s.closed.is_set()]
        return live[-1] if live else None
