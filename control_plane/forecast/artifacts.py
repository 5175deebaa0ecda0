"""Signed forecast-model artifacts (``*.gfcast``): a model steers money and grid limits.

File layout (all integers big-endian)::

    b"GFCAST1\\n"                 8 bytes, magic
    uint16 format_version         FORMAT_VERSION
    uint32 header_len, header     canonical JSON: target, site, normalizer, train config,
                                  network shape, metadata
    uint64 weights_len, weights   torch.save(state_dict) bytes
    --- everything above is the signed body ---
    b"SIG1" + key_id (32 ASCII hex) + Ed25519 signature (64 bytes)

The signature covers ``b"gridfort/v1/forecast-artifact\\0" + body``: a domain of its own,
so neither a detector model nor any other Gridfort signature can pass for a forecaster.
:func:`load_forecaster` checks framing, version and signature on the raw bytes first; only
verified bytes are parsed as JSON and given to ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import struct
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from control_plane.forecast.features import Normalizer, Target
from control_plane.forecast.network import DayAheadQuantileNet, NetworkShape
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.train import Forecaster, TrainConfig
from security.envelope import key_id_for, public_key_raw
from security.refusals import GridfortError

MAGIC = b"GFCAST1\n"
FORMAT_VERSION = 1
SIGNING_DOMAIN = b"gridfort/v1/forecast-artifact\0"
SIG_TAG = b"SIG1"
KEY_ID_LEN = 32
SIGNATURE_LEN = 64
TRAILER_LEN = len(SIG_TAG) + KEY_ID_LEN + SIGNATURE_LEN
MAX_HEADER_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 16 << 20
_PREFIX = struct.Struct(">8sH")


class ForecastArtifactFault(StrEnum):
    """Stable reasons a forecast artifact is refused."""

    UNREADABLE = "UNREADABLE"
    NOT_AN_ARTIFACT = "NOT_AN_ARTIFACT"
    UNKNOWN_VERSION = "UNKNOWN_VERSION"
    TRUNCATED = "TRUNCATED"
    MALFORMED = "MALFORMED"
    UNSIGNED = "UNSIGNED"
    UNTRUSTED_KEY = "UNTRUSTED_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"


class ForecastArtifactError(GridfortError):
    """A forecast artifact was refused; ``fault`` says why, ``str(e)`` is safe to show."""

    def __init__(self, fault: ForecastArtifactFault, message: str) -> None:
        super().__init__(f"forecast model refused ({fault.value}): {message}")
        self.fault = fault


def artifact_body(model: Forecaster) -> bytes:
    """The signed body of ``model``'s artifact."""
    header = {
        "target": model.target.value,
        "site": model.site.to_json(),
        "normalizer": {"center": model.norm.center, "scale": model.norm.scale},
        "config": model.config.to_json(),
        "shape": model.net.shape.to_json(),
        "metadata": model.metadata,
    }
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    weights = buf.getvalue()
    return b"".join(
        (
            _PREFIX.pack(MAGIC, FORMAT_VERSION),
            struct.pack(">I", len(raw)),
            raw,
            struct.pack(">Q", len(weights)),
            weights,
        )
    )


def save_forecaster(path: Path, model: Forecaster, key: Ed25519PrivateKey | None) -> None:
    """Write ``model`` to ``path`` signed with ``key`` (``None``: unsigned, refused on load;
    for tests)."""
    body = artifact_body(model)
    if key is not None:
        key_id = key_id_for(public_key_raw(key.public_key())).encode("ascii")
        body = body + SIG_TAG + key_id + key.sign(SIGNING_DOMAIN + body)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(body)
    tmp.replace(path)


def _fault(fault: ForecastArtifactFault, message: str) -> ForecastArtifactError:
    return ForecastArtifactError(fault, message)


def verify_forecast_artifact(data: bytes, trusted_key: Ed25519PublicKey) -> bytes:
    """Check framing and signature of raw artifact bytes; returns the verified body."""
    F = ForecastArtifactFault
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise _fault(F.NOT_AN_ARTIFACT, "not a Gridfort forecast-model artifact")
    _, version = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise _fault(F.UNKNOWN_VERSION, f"format version {version} is not supported")
    off = _PREFIX.size
    if len(data) < off + 4:
        raise _fault(F.TRUNCATED, "file ends inside the header length")
    (header_len,) = struct.unpack_from(">I", data, off)
    if header_len > MAX_HEADER_BYTES:
        raise _fault(F.MALFORMED, "header length is out of bounds")
    off += 4 + header_len
    if len(data) < off + 8:
        raise _fault(F.TRUNCATED, "file ends inside the header")
    (weights_len,) = struct.unpack_from(">Q", data, off)
    if weights_len > MAX_WEIGHTS_BYTES:
        raise _fault(F.MALFORMED, "weights length is out of bounds")
    end = off + 8 + weights_len
    if len(data) < end:
        raise _fault(F.TRUNCATED, "file ends inside the weights")
    body, trailer = data[:end], data[end:]
    if not trailer:
        raise _fault(F.UNSIGNED, "the artifact carries no signature")
    if len(trailer) != TRAILER_LEN or trailer[:4] != SIG_TAG:
        raise _fault(F.MALFORMED, "the signature trailer is damaged")
    key_id = trailer[4 : 4 + KEY_ID_LEN]
    trusted_id = key_id_for(public_key_raw(trusted_key)).encode("ascii")
    if key_id != trusted_id:
        raise _fault(
            F.UNTRUSTED_KEY,
            f"signed by key {key_id.decode('ascii', 'replace')!r}, not {trusted_id.decode()!r}",
        )
    try:
        trusted_key.verify(trailer[4 + KEY_ID_LEN :], SIGNING_DOMAIN + body)
    except InvalidSignature:
        raise _fault(F.BAD_SIGNATURE, "the signature does not match the contents") from None
    return body


def _model_from(body: bytes) -> Forecaster:
    off = _PREFIX.size
    (header_len,) = struct.unpack_from(">I", body, off)
    header: Any = json.loads(body[off + 4 : off + 4 + header_len])
    off += 4 + header_len
    (weights_len,) = struct.unpack_from(">Q", body, off)
    weights = body[off + 8 : off + 8 + weights_len]
    config = TrainConfig(**{**header["config"], "quantiles": tuple(header["config"]["quantiles"])})
    net = DayAheadQuantileNet(NetworkShape(**header["shape"]))
    state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    net.load_state_dict(state, strict=True)
    net.eval()
    norm = Normalizer(float(header["normalizer"]["center"]), float(header["normalizer"]["scale"]))
    return Forecaster(
        Target(header["target"]),
        ForecastSite.from_json(header["site"]),
        norm,
        config,
        net,
        dict(header.get("metadata", {})),
    )


def load_forecaster(path: Path, trusted_public_key: Ed25519PublicKey) -> Forecaster:
    """Load a forecaster signed by ``trusted_public_key``; anything else is refused with
    :class:`ForecastArtifactError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _fault(ForecastArtifactFault.UNREADABLE, f"cannot read {path}") from e
    body = verify_forecast_artifact(data, trusted_public_key)
    try:
        return _model_from(body)
    except Exception as e:  # signed but unusable by this build: say so, never crash
        raise _fault(
            ForecastArtifactFault.MALFORMED,
            f"signed contents are not a usable forecaster ({type(e).__name__})",
        ) from e
