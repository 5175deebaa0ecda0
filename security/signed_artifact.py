"""Signed artifact files (models of every kind): one framing, one verifier.

File layout (all integers big-endian)::

    magic (8 bytes)               the kind of artifact, e.g. b"GFMODEL\\n"
    uint16 format_version
    uint32 header_len, header     canonical JSON (the caller's)
    uint64 weights_len, weights   opaque bytes (the caller's, e.g. torch.save output)
    --- everything above is the signed body ---
    b"SIG1" + key_id (32 ASCII hex) + Ed25519 signature (64 bytes)

The signature covers ``domain + body``, with a domain per kind of artifact, so no other
Gridfort signature (and no artifact of another kind) can pass for this one.
:func:`verify_artifact` checks framing, version, bounds, key and signature on the raw
bytes before anything is parsed; only verified bytes reach a JSON or torch loader.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from security.envelope import key_id_for, public_key_raw

SIG_TAG = b"SIG1"
KEY_ID_LEN = 32
SIGNATURE_LEN = 64
TRAILER_LEN = len(SIG_TAG) + KEY_ID_LEN + SIGNATURE_LEN
_PREFIX = struct.Struct(">8sH")


class ArtifactFault(StrEnum):
    """Stable reasons an artifact is refused."""

    UNREADABLE = "UNREADABLE"
    NOT_AN_ARTIFACT = "NOT_AN_ARTIFACT"
    UNKNOWN_VERSION = "UNKNOWN_VERSION"
    TRUNCATED = "TRUNCATED"
    MALFORMED = "MALFORMED"
    UNSIGNED = "UNSIGNED"
    UNTRUSTED_KEY = "UNTRUSTED_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    WRONG_GRID = "WRONG_GRID"
    WRONG_LAYOUT = "WRONG_LAYOUT"


class ArtifactRefused(ValueError):
    """Raised by :func:`verify_artifact`; callers wrap it in their own error type."""

    def __init__(self, fault: ArtifactFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True, slots=True)
class ArtifactFormat:
    """One kind of artifact: its magic (8 bytes), format version, signing domain and the
    largest header and weights it accepts [bytes]; ``what`` names it in messages."""

    magic: bytes
    version: int
    domain: bytes
    max_header_bytes: int
    max_weights_bytes: int
    what: str

    def __post_init__(self) -> None:
        if len(self.magic) != 8:
            raise ValueError("an artifact magic is 8 bytes")

    def body(self, header: dict[str, Any], weights: bytes) -> bytes:
        """The signed body: framing, canonical JSON ``header``, ``weights``."""
        raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return b"".join(
            (
                _PREFIX.pack(self.magic, self.version),
                struct.pack(">I", len(raw)),
                raw,
                struct.pack(">Q", len(weights)),
                weights,
            )
        )

    def sign(self, body: bytes, key: Ed25519PrivateKey) -> bytes:
        """``body`` followed by its signature trailer."""
        key_id = key_id_for(public_key_raw(key.public_key())).encode("ascii")
        return body + SIG_TAG + key_id + key.sign(self.domain + body)

    def write(self, path: Path, body: bytes, key: Ed25519PrivateKey | None) -> None:
        """Write ``body`` signed with ``key`` (None: unsigned, refused by every loader;
        for tests) atomically (a temporary file renamed into place)."""
        data = self.sign(body, key) if key is not None else body
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def verify(self, data: bytes, trusted_key: Ed25519PublicKey) -> bytes:
        """Check framing and signature of raw artifact bytes; returns the verified body.
        Raises :class:`ArtifactRefused` naming the fault."""
        F = ArtifactFault
        if len(data) < _PREFIX.size or data[:8] != self.magic:
            raise ArtifactRefused(F.NOT_AN_ARTIFACT, f"not a Gridfort {self.what}")
        _, version = _PREFIX.unpack_from(data)
        if version != self.version:
            raise ArtifactRefused(
                F.UNKNOWN_VERSION,
                f"format version {version} is not supported (this build reads {self.version})",
            )
        off = _PREFIX.size
        if len(data) < off + 4:
            raise ArtifactRefused(F.TRUNCATED, "file ends inside the header length")
        (header_len,) = struct.unpack_from(">I", data, off)
        if header_len > self.max_header_bytes:
            raise ArtifactRefused(F.MALFORMED, "header length is out of bounds")
        off += 4 + header_len
        if len(data) < off + 8:
            raise ArtifactRefused(F.TRUNCATED, "file ends inside the header")
        (weights_len,) = struct.unpack_from(">Q", data, off)
        if weights_len > self.max_weights_bytes:
            raise ArtifactRefused(F.MALFORMED, "weights length is out of bounds")
        end = off + 8 + weights_len
        if len(data) < end:
            raise ArtifactRefused(F.TRUNCATED, "file ends inside the weights")
        body, trailer = data[:end], data[end:]
        if not trailer:
            raise ArtifactRefused(F.UNSIGNED, "the artifact carries no signature")
        if len(trailer) != TRAILER_LEN or trailer[:4] != SIG_TAG:
            raise ArtifactRefused(
                F.TRUNCATED if len(trailer) < TRAILER_LEN else F.MALFORMED,
                "the signature trailer is damaged",
            )
        key_id = trailer[4 : 4 + KEY_ID_LEN]
        trusted_id = key_id_for(public_key_raw(trusted_key)).encode("ascii")
        if key_id != trusted_id:
            raise ArtifactRefused(
                F.UNTRUSTED_KEY,
                f"signed by key {key_id.decode('ascii', 'replace')!r}, "
                f"not the trusted key {trusted_id.decode()!r}",
            )
        try:
            trusted_key.verify(trailer[4 + KEY_ID_LEN :], self.domain + body)
        except InvalidSignature:
            raise ArtifactRefused(
                F.BAD_SIGNATURE, "the signature does not match the contents"
            ) from None
        return body


def split_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the weights of a verified body; :class:`ArtifactRefused`
    (MALFORMED) if the header is not a JSON object."""
    off = _PREFIX.size
    (header_len,) = struct.unpack_from(">I", body, off)
    header_raw = body[off + 4 : off + 4 + header_len]
    off += 4 + header_len
    (weights_len,) = struct.unpack_from(">Q", body, off)
    weights = body[off + 8 : off + 8 + weights_len]
    try:
        header = json.loads(header_raw)
    except ValueError as e:
        raise ArtifactRefused(ArtifactFault.MALFORMED, "header is not valid JSON") from e
    if not isinstance(header, dict):
        raise ArtifactRefused(ArtifactFault.MALFORMED, "header is not a JSON object")
    return header, weights
