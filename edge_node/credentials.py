"""The edge's credentials on disk, enrollment with a bootstrap token, and renewal.

Edge directory layout (keys 0600)::

    tls.key  tls.pem  bundle.pem   TLS key, certificate chain, trust bundle
    signing.key                    Ed25519 key that signs telemetry and results
    enrollment.json                SPIFFE ID, the control plane's key and identity
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_node.commands import TrustedController
from gridfort.v1 import enrollment_pb2 as enpb
from gridfort.v1 import enrollment_pb2_grpc as engrpc
from security.ca import generate_private_key, make_csr, write_bytes_atomic
from security.envelope import (
    EnvelopeSigner,
    generate_signing_key,
    key_id_for,
    load_signing_key,
    save_signing_key,
)
from security.identity import SpiffeId, control_plane_dns_name
from security.refusals import GridfortError
from security.signing_keys import load_signing_public_key

RPC_TIMEOUT_S = 10.0


class EnrollmentError(GridfortError):
    """Enrollment or renewal was refused or failed; the message says why."""


@dataclass
class EdgeCredentials:
    directory: Path
    spiffe_id: SpiffeId
    tls_key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes
    signer: EnvelopeSigner
    controller: TrustedController
    next_seq: int = 1
    next_command_seq: int = 1

    @property
    def site_id(self) -> str:
        return self.spiffe_id.name

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain_pem)[0]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.bundle_pem,
            private_key=self.tls_key_pem,
            certificate_chain=self.chain_pem,
        )

    def target_name(self) -> str:
        return control_plane_dns_name(self.spiffe_id.trust_domain)

    def save(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_bytes_atomic(d / "tls.key", self.tls_key_pem, 0o600)
        write_bytes_atomic(d / "tls.pem", self.chain_pem, 0o644)
        write_bytes_atomic(d / "bundle.pem", self.bundle_pem, 0o644)
        meta = {
            "spiffe_id": str(self.spiffe_id),
            "controller_spiffe_id": self.controller.spiffe_id,
            "controller_key_id": self.controller.key_id,
            "controller_public_key": _raw(self.controller.public_key).hex(),
            "next_seq": self.next_seq,
            "next_command_seq": self.next_command_seq,
        }
        write_bytes_atomic(d / "enrollment.json", json.dumps(meta, indent=2).encode(), 0o644)

    @classmethod
    def load(cls, directory: Path) -> EdgeCredentials:
        try:
            meta = json.loads((directory / "enrollment.json").read_text())
            spiffe_id = SpiffeId.parse(meta["spiffe_id"])
            signer = EnvelopeSigner(load_signing_key(directory / "signing.key"), str(spiffe_id))
            controller_key = load_signing_public_key(bytes.fromhex(meta["controller_public_key"]))
            return cls(
                directory=directory,
                spiffe_id=spiffe_id,
                tls_key_pem=(directory / "tls.key").read_bytes(),
                chain_pem=(directory / "tls.pem").read_bytes(),
                bundle_pem=(directory / "bundle.pem").read_bytes(),
                signer=signer,
                controller=TrustedController(
                    meta["controller_spiffe_id"], meta["controller_key_id"], controller_key
                ),
                next_seq=int(meta.get("next_seq", 1)),
                next_command_seq=int(meta.get("next_command_seq", 1)),
            )
        except (OSError, KeyError, ValueError) as e:
            raise EnrollmentError(
                f"edge directory {directory}: not enrolled or damaged ({e}); "
                "run 'gridfort edge enroll'"
            ) from e


def _raw(key: object) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert isinstance(key, Ed25519PublicKey)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _refusal_text(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name}: {e.details() or 'no details'}"


async def enroll(
    *,
    directory: Path,
    site_id: str,
    token: str,
    bootstrap_address: str,
    bundle_pem: bytes,
    trust_domain: str,
) -> EdgeCredentials:
    """Enroll this edge: new TLS and signing keys, a CSR, and the one-time token."""
    tls_key = generate_private_key()
    signing_key = generate_signing_key()
    signing_pub = signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    request = enpb.EnrollRequest(
        site_id=site_id, token=token, csr_der=make_csr(tls_key), signing_public_key=signing_pub
    )
    options = [("grpc.ssl_target_name_override", control_plane_dns_name(trust_domain))]
    creds = grpc.ssl_channel_credentials(root_certificates=bundle_pem)
    async with grpc.aio.secure_channel(bootstrap_address, creds, options=options) as channel:
        try:
            response = await engrpc.EnrollmentStub(channel).Enroll(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise EnrollmentError(f"enrollment refused: {_refusal_text(e)}") from e
    if response.signing_key_id != key_id_for(signing_pub):
        raise EnrollmentError("enrollment answer names a different signing key")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_signing_key(directory / "signing.key", signing_key)
    credentials = EdgeCredentials(
        directory=directory,
        spiffe_id=SpiffeId.parse(response.spiffe_id),
        tls_key_pem=tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        chain_pem=response.certificate_chain_pem,
        bundle_pem=response.trust_bundle_pem,
        signer=EnvelopeSigner(signing_key, response.spiffe_id),
        controller=TrustedController(
            response.control_plane_spiffe_id,
            response.control_plane_key_id,
            load_signing_public_key(response.control_plane_public_key),
        ),
        next_seq=max(1, response.next_seq),
        next_command_seq=max(1, response.next_command_seq),
    )
    credentials.save()
    return credentials


async def renew(credentials: EdgeCredentials, channel: grpc.aio.Channel) -> EdgeCredentials:
    """Get a fresh certificate for a fresh TLS key over the current mutual-TLS channel."""
    tls_key = generate_private_key()
    request = enpb.RenewRequest(csr_der=make_csr(tls_key))
    try:
        response = await engrpc.RenewalStub(channel).Renew(request, timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        raise EnrollmentError(f"renewal refused: {_refusal_text(e)}") from e
    credentials.tls_key_pem = tls_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials.chain_pem = response.certificate_chain_pem
    credentials.bundle_pem = response.trust_bundle_pem
    credentials.save()
    return credentials
