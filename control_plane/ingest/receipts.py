"""Outcomes of ingesting one envelope, and the signed receipts the edge acts on."""

from __future__ import annotations

from dataclasses import dataclass, field

from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.envelope import EnvelopeSigner
from security.refusals import RETRYABLE, Reason


@dataclass(frozen=True, slots=True)
class IngestResult:
    site_id: str
    seq: int
    status: int  # gridfort.v1.ReceiptStatus
    digest: bytes = b""
    committed: int = 0
    quarantined: int = 0
    quarantined_detail: list[tuple[int, Reason]] = field(default_factory=list)
    reason: Reason | None = None
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE if self.reason is not None else False


def sign_receipt(result: IngestResult, signer: EnvelopeSigner, now_ms: int) -> epb.SignedEnvelope:
    receipt = lpb.BatchReceipt(
        site_id=result.site_id,
        seq=result.seq,
        status=result.status,  # type: ignore[arg-type]
        reason=result.reason.value if result.reason else "",
        message=result.message,
        batch_sha256=result.digest,
        committed=result.committed,
        quarantined=result.quarantined,
        decided_ms=now_ms,
        retryable=result.retryable,
        quarantined_detail=[
            lpb.QuarantinedMeasurement(index=i, reason=r.value)
            for i, r in result.quarantined_detail
        ],
    )
    return signer.sign(epb.PAYLOAD_TYPE_BATCH_RECEIPT, receipt.SerializeToString(), now_ms)
