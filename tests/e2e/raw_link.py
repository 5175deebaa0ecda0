"""A raw client of ``EdgeLink.Connect`` for hostile tests: sends exactly the bytes it is told."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import grpc

from edge_node.credentials import EdgeCredentials
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import EnvelopeSigner

METHOD = "/gridfort.v1.EdgeLink/Connect"
Q = tpb.Quantity
U = tpb.Unit


def make_batch(
    site_id: str,
    seq: int,
    now_ms: int,
    measurements: Sequence[tuple[str, int, int, float]] | None = None,
) -> tpb.TelemetryBatch:
    """A TelemetryBatch; default: one plausible PV power reading of ``site_id``-pv."""
    if measurements is None:
        measurements = [(f"{site_id}-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 4.2)]
    return tpb.TelemetryBatch(
        site_id=site_id,
        seq=seq,
        sealed_ms=now_ms,
        measurements=[
            tpb.Measurement(asset_id=a, quantity=q, unit=u, value=v, ts_ms=now_ms)  # type: ignore[arg-type]
            for a, q, u, v in measurements
        ],
    )


def sign_batch(
    signer: EnvelopeSigner, batch: tpb.TelemetryBatch, signed_ms: int
) -> epb.SignedEnvelope:
    return signer.sign(epb.PAYLOAD_TYPE_TELEMETRY_BATCH, batch.SerializeToString(), signed_ms)


def digest(envelope: epb.SignedEnvelope) -> bytes:
    return hashlib.sha256(envelope.payload).digest()


class RawLink:
    """One mutual-TLS channel and one Connect stream with the given TLS credentials."""

    def __init__(
        self,
        endpoint: str,
        *,
        key_pem: bytes | None,
        chain_pem: bytes | None,
        bundle_pem: bytes,
        target_name: str,
    ) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=bundle_pem, private_key=key_pem, certificate_chain=chain_pem
        )
        self.channel = grpc.aio.secure_channel(
            endpoint, creds, options=[("grpc.ssl_target_name_override", target_name)]
        )
        self.call = self.channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=lpb.ControlMessage.FromString
        )()

    @classmethod
    def for_edge(cls, endpoint: str, creds: EdgeCredentials) -> RawLink:
        return cls(
            endpoint,
            key_pem=creds.tls_key_pem,
            chain_pem=creds.chain_pem,
            bundle_pem=creds.bundle_pem,
            target_name=creds.target_name(),
        )

    async def send_bytes(self, data: bytes) -> None:
        await self.call.write(data)

    async def send_envelope(self, envelope: epb.SignedEnvelope) -> None:
        await self.send_bytes(lpb.EdgeMessage(telemetry=envelope).SerializeToString())

    async def recv(self, timeout_s: float = 5.0) -> lpb.ControlMessage:
        message = await asyncio.wait_for(self.call.read(), timeout_s)
        if message is grpc.aio.EOF:
            raise EOFError("stream ended")
        return message  # type: ignore[no-any-return]

    async def recv_receipt(self, timeout_s: float = 5.0) -> lpb.BatchReceipt:
        """Next receipt (skipping heartbeats and commands), parsed (signature not checked)."""
        while True:
            message = await self.recv(timeout_s)
            if message.WhichOneof("kind") == "receipt":
                return lpb.BatchReceipt.FromString(message.receipt.payload)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(grace=None)
