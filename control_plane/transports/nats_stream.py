"""The telemetry stream's configuration: retention, per-site caps, partitions (JetStream).

Created (or reconciled) by the control-plane identity when the embedded server or
cluster starts; ingest workers read the partition count back from its metadata.
"""

from __future__ import annotations

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from control_plane.transports.nats_config import (
    DEFAULT_MAX_MSGS_PER_SITE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_PARTITIONS,
    STREAM_NAME,
    STREAM_SUBJECTS,
    partition_transform,
)
from security.refusals import GridfortError

#: How long a message id is remembered for de-duplication [s] (JetStream default).
DUPLICATE_WINDOW_S = 120.0
#: Stream metadata key holding the number of partitions (read by ingest workers).
PARTITIONS_METADATA_KEY = "gridfort_partitions"


def telemetry_stream_config(
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    *,
    max_bytes: int = -1,
    replicas: int = 1,
    partitions: int = DEFAULT_PARTITIONS,
    max_msgs_per_site: int = DEFAULT_MAX_MSGS_PER_SITE,
) -> StreamConfig:
    """The telemetry stream: every site's subject, file storage, work-queue retention.

    * work queue: a message is removed once a control plane acknowledges it (after
      commit), so the store holds only the uncommitted backlog;
    * ``discard: new`` with ``max_bytes``: when full, publishes are *refused* (the
      edge keeps the envelope in its outbox and retries); nothing is silently dropped;
    * ``max_msgs_per_subject`` = ``max_msgs_per_site`` with ``discard_new_per_subject``:
      one site can hold at most that many unconsumed messages; a flooding site is
      refused at the broker while the others keep publishing (per-site fairness);
    * subject transform to ``gridfort.v1.ingest.<partition>.<site>`` (``partitions``
      partitions, recorded in the metadata): one consumer per partition;
    * ``duplicate_window`` 2 min: edges publish with ``Nats-Msg-Id`` headers, a
      resend within the window is stored once;
    * ``max_msg_size`` = the server's ``max_payload``; ``replicas``: 3 on a cluster.
    """
    src, dest = partition_transform(partitions)
    return StreamConfig(
        name=STREAM_NAME,
        subjects=list(STREAM_SUBJECTS),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=max_bytes,
        max_msg_size=max_payload_bytes,
        max_msgs_per_subject=max_msgs_per_site,
        discard_new_per_subject=True,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        subject_transform=SubjectTransform(src=src, dest=dest),
        metadata={PARTITIONS_METADATA_KEY: str(partitions)},
    )


async def ensure_stream(nc: NatsClient, config: StreamConfig, timeout_s: float = 2.0) -> None:
    """Create the stream, or reconcile an existing one to ``config``."""
    js = nc.jetstream(timeout=timeout_s)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


def stream_partitions(config: StreamConfig) -> int:
    """The number of partitions a telemetry stream was created with (its metadata)."""
    raw = (config.metadata or {}).get(PARTITIONS_METADATA_KEY, "")
    if not raw.isdigit() or int(raw) < 1:
        raise GridfortError(
            f"stream {STREAM_NAME} has no partition count in its metadata: it was not created "
            "by this Gridfort version; start the control plane first"
        )
    return int(raw)
