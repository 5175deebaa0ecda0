"""The partition consumers of the telemetry stream, and how a consumer process is tuned.

One durable pull consumer per partition (``ingest-p<p>``, filter
``gridfort.v1.ingest.<p>.*``), explicit acks, unlimited redeliveries, created the
same way by every process that needs it (ingest workers, the control plane's own
consumer, the benchmark's raw consumers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from control_plane.transports.nats_config import STREAM_NAME, partition_consumer, partition_filter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatsIngestSettings:
    """Tuning of one consumer process. Times in seconds [s]."""

    name: str = "cp-1"  # the control-plane identity (NATS user) this process connects as
    worker_id: str = ""  # unique per process; default "<name>-<random>"
    fetch_batch: int = 128  # messages per pull request
    max_outstanding: int = 1024  # per partition: fetched and not yet answered
    max_held_per_site: int = 256  # >= an edge's publish window (256): honest sites fit
    ack_wait_s: float = 10.0  # unacknowledged messages come back after this
    gap_timeout_s: float = 30.0  # give up waiting for a missing batch (> ack_wait_s)
    nak_delay_s: float = 1.0  # redelivery delay after a store failure or a hand-back
    heartbeat_s: float = 0.5
    member_ttl_s: float = 2.5  # a silent worker's partitions move after this
    max_ack_pending: int = 20_000  # per partition consumer (server side)
    start_timeout_s: float = 30.0  # for the stream to answer at start (cluster elections)
    consume: bool = True  # False: only send receipts/commands (ingest workers consume)

    def __post_init__(self) -> None:
        if self.fetch_batch < 1 or self.max_outstanding < self.fetch_batch:
            raise ValueError("fetch_batch must be >= 1 and <= max_outstanding")
        if self.gap_timeout_s <= self.ack_wait_s:
            raise ValueError("gap_timeout_s must exceed ack_wait_s (redeliveries must come first)")
        if not 0 < self.heartbeat_s < self.member_ttl_s:
            raise ValueError("heartbeat_s must be positive and below member_ttl_s")
        if self.max_ack_pending < 2 * self.max_outstanding:
            raise ValueError("max_ack_pending must be at least twice max_outstanding")


def partition_consumer_config(index: int, settings: NatsIngestSettings) -> ConsumerConfig:
    """The durable pull consumer of partition ``index`` (every worker creates the same)."""
    return ConsumerConfig(
        durable_name=partition_consumer(index),
        filter_subject=partition_filter(index),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
    )


async def ensure_partition_consumer(js: Any, index: int, settings: NatsIngestSettings) -> None:
    """Bind to partition ``index``'s durable consumer, creating it if it does not exist.

    The lookup comes first: in a cluster, creating a consumer elects a Raft group
    (about a second), binding to an existing one is a single API call.
    """
    try:
        await js.consumer_info(STREAM_NAME, partition_consumer(index))
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_consumer(STREAM_NAME, partition_consumer_config(index, settings))
    except nats.js.errors.BadRequestError as e:  # exists with other settings: use it
        log.warning("consumer %s: %s", partition_consumer(index), e)
