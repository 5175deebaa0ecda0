"""The no-security baseline of the ingest benchmark: same transport, same store, no checks.

``BaselinePipeline`` keeps everything around ``ingest`` exactly as in the
product (mutual-TLS gRPC stream, peer authentication at connect, the store's
durable group commit, the signed receipt back) and replaces stages 2..5 with
"parse the payload and commit every row": no signature check, no replay guard,
no authorization against the asset registry, no unit or bounds validation.
The ratio full/baseline is therefore the price of those stages on this path.

It lives only under ``benchmarks/`` and is never used by the product.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from control_plane.ingest.pipeline import COMMITTED, DUPLICATE, REFUSED, IngestPipeline
from control_plane.ingest.receipts import IngestResult
from control_plane.ingest.types import MeasurementRow, Peer
from control_plane.store.telemetry_store import CommitOutcome, CommitRequest
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import payload_digest
from security.refusals import Reason


class BaselinePipeline(IngestPipeline):
    """``ingest`` = parse + commit all rows; verify, authorize and validate are off."""

    async def ingest(self, peer: Peer, envelope: epb.SignedEnvelope) -> IngestResult:
        batch = tpb.TelemetryBatch()
        digest = payload_digest(envelope.payload)
        try:
            batch.ParseFromString(envelope.payload)
        except DecodeError:
            return IngestResult("", 0, REFUSED, digest, reason=Reason.MALFORMED_BATCH)
        rows: list[MeasurementRow] = [
            (m.asset_id, m.quantity, m.ts_ms, m.value) for m in batch.measurements
        ]
        request = CommitRequest(
            site_id=batch.site_id,
            seq=batch.seq,
            digest=digest,
            key_id=envelope.key_id,
            sealed_ms=batch.sealed_ms,
            signed_ms=envelope.signed_ms,
            received_ms=self._clock.now_ms(),
            rows=rows,
            quarantined=[],
        )
        outcome = await self._store.commit(request)
        if outcome is CommitOutcome.DUPLICATE:
            self.stats.batches_duplicate += 1
            return IngestResult(batch.site_id, batch.seq, DUPLICATE, digest)
        self.stats.batches_committed += 1
        self.stats.measurements_committed += len(rows)
        return IngestResult(batch.site_id, batch.seq, COMMITTED, digest, committed=len(rows))
