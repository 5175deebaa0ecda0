"""Versioned, signed model artifacts (``*.gfmodel``): a model is attack surface too.

File layout (all integers big-endian)::

    b"GFMODEL\\n"                 8 bytes, magic
    uint16 format_version         FORMAT_VERSION
    uint32 header_len, header     canonical JSON: architecture, grid, layout_hash,
                                  hyperparameters, thresholds (row + per cell),
                                  target_fpr, metadata
    uint64 weights_len, weights   torch.save(state_dict) bytes
    --- everything above is the signed body ---
    b"SIG1" + key_id (32 ASCII hex) + Ed25519 signature (64 bytes)

The signature covers ``b"gridfort/v1/model-artifact\\0" + body``, a domain no other
Gridfort signature uses. :func:`load_model` checks framing, version and signature on
the raw bytes first; only bytes that verify under the trusted key are parsed as JSON
and handed to ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from detection.grid import load_grid
from detection.layout import MeasurementLayout, build_layout
from detection.models.jacobian import StateJacobian
from detection.models.network import GridDetectorNet, NetworkConfig, layout_hash
from detection.models.sequential import RAMP_LENGTHS
from security.envelope import key_id_for, public_key_raw
from security.refusals import GridfortError
from security.signing_keys import load_signing_public_key

MAGIC = b"GFMODEL\n"
FORMAT_VERSION = 1
#: Version of the network architecture in the header (``GridDetectorNet``); a signed file
#: made for another architecture is refused as UNKNOWN_VERSION, never half-loaded.
ARCHITECTURE = 2
SIGNING_DOMAIN = b"gridfort/v1/model-artifact\0"
SIG_TAG = b"SIG1"
KEY_ID_LEN = 32
SIGNATURE_LEN = 64
TRAILER_LEN = len(SIG_TAG) + KEY_ID_LEN + SIGNATURE_LEN
MAX_HEADER_BYTES = 4 << 20
MAX_WEIGHTS_BYTES = 64 << 20
_PREFIX = struct.Struct(">8sH")


class ArtifactFault(StrEnum):
    """Stable reasons a model artifact is refused."""

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


class ModelArtifactError(GridfortError):
    """A model artifact was refused; ``fault`` says why, ``str(e)`` is safe to show."""

    def __init__(self, fault: ArtifactFault, message: str) -> None:
        super().__init__(f"model artifact refused ({fault.value}): {message}")
        self.fault = fault


@dataclass(slots=True)
class TrainedModel:
    """A detector model with everything needed to score and to judge its scores."""

    grid: str
    layout: MeasurementLayout
    config: NetworkConfig
    net: GridDetectorNet
    row_threshold: float  # row flagged when its score exceeds this
    cell_thresholds: np.ndarray  # (m,) a flagged row's cell is falsified above this
    target_fpr: float  # share of clean rows flagged at row_threshold (calibration target)
    cell_level: float = -1e9  # common floor of the cell thresholds, tuned for localization
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the ramp stage (``detection.models.sequential``): clean scale of each matched filter
    #: (len(RAMP_LENGTHS), m) and its threshold; None / inf: the stage is off (older files)
    ramp_scale: np.ndarray | None = None
    ramp_threshold: float = float("inf")

    def header(self) -> dict[str, Any]:
        return {
            "architecture": ARCHITECTURE,
            "grid": self.grid,
            "layout_hash": layout_hash(self.layout),
            "n_measurements": len(self.layout),
            "hyperparameters": self.config.to_json(),
            "row_threshold": float(self.row_threshold),
            "cell_thresholds": [float(v) for v in self.cell_thresholds],
            "target_fpr": float(self.target_fpr),
            "cell_level": float(self.cell_level),
            "metadata": self.metadata,
            **self._ramp_header(),
        }

    def _ramp_header(self) -> dict[str, Any]:
        if self.ramp_scale is None:
            return {}
        return {
            "ramp": {
                "lengths": list(RAMP_LENGTHS),
                "threshold": float(self.ramp_threshold),
                "scale": [[float(v) for v in row] for row in self.ramp_scale],
            }
        }


def artifact_body(model: TrainedModel) -> bytes:
    """The signed body of ``model``'s artifact (deterministic for identical weights)."""
    header = json.dumps(model.header(), sort_keys=True, separators=(",", ":")).encode()
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    weights = buf.getvalue()
    return b"".join(
        (
            _PREFIX.pack(MAGIC, FORMAT_VERSION),
            struct.pack(">I", len(header)),
            header,
            struct.pack(">Q", len(weights)),
            weights,
        )
    )


def sign_body(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """``body`` followed by its signature trailer."""
    key_id = key_id_for(public_key_raw(key.public_key())).encode("ascii")
    return body + SIG_TAG + key_id + key.sign(SIGNING_DOMAIN + body)


def save_model(path: Path, model: TrainedModel, key: Ed25519PrivateKey | None) -> None:
    """Write ``model`` to ``path`` signed with ``key``.

    ``key=None`` writes an unsigned file, which every loader refuses (for tests).
    """
    body = artifact_body(model)
    data = sign_body(body, key) if key is not None else body
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def save_public_key(path: Path, key: Ed25519PublicKey) -> str:
    """Write the model-signing public key as PEM; returns its key id."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    return key_id_for(public_key_raw(key))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a model-signing public key (PEM); ``ModelArtifactError`` if it is not one."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 key")
        return load_signing_public_key(public_key_raw(key))
    except (OSError, ValueError) as e:
        raise ModelArtifactError(
            ArtifactFault.UNREADABLE, f"{path} is not a readable Ed25519 public key PEM"
        ) from e


def verify_artifact_bytes(data: bytes, trusted_key: Ed25519PublicKey) -> bytes:
    """Check framing and signature of raw artifact bytes; returns the verified body."""
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise ModelArtifactError(ArtifactFault.NOT_AN_ARTIFACT, "not a Gridfort model artifact")
    _, version = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ModelArtifactError(
            ArtifactFault.UNKNOWN_VERSION,
            f"format version {version} is not supported (this build reads {FORMAT_VERSION})",
        )
    off = _PREFIX.size
    if len(data) < off + 4:
        raise ModelArtifactError(ArtifactFault.TRUNCATED, "file ends inside the header length")
    (header_len,) = struct.unpack_from(">I", data, off)
    if header_len > MAX_HEADER_BYTES:
        raise ModelArtifactError(ArtifactFault.MALFORMED, "header length is out of bounds")
    off += 4 + header_len
    if len(data) < off + 8:
        raise ModelArtifactError(ArtifactFault.TRUNCATED, "file ends inside the header")
    (weights_len,) = struct.unpack_from(">Q", data, off)
    if weights_len > MAX_WEIGHTS_BYTES:
        raise ModelArtifactError(ArtifactFault.MALFORMED, "weights length is out of bounds")
    end = off + 8 + weights_len
    if len(data) < end:
        raise ModelArtifactError(ArtifactFault.TRUNCATED, "file ends inside the weights")
    body, trailer = data[:end], data[end:]
    if not trailer:
        raise ModelArtifactError(ArtifactFault.UNSIGNED, "the artifact carries no signature")
    if len(trailer) != TRAILER_LEN or trailer[:4] != SIG_TAG:
        raise ModelArtifactError(
            ArtifactFault.TRUNCATED if len(trailer) < TRAILER_LEN else ArtifactFault.MALFORMED,
            "the signature trailer is damaged",
        )
    key_id = trailer[4 : 4 + KEY_ID_LEN]
    trusted_id = key_id_for(public_key_raw(trusted_key)).encode("ascii")
    if key_id != trusted_id:
        raise ModelArtifactError(
            ArtifactFault.UNTRUSTED_KEY,
            f"signed by key {key_id.decode('ascii', 'replace')!r}, "
            f"not the trusted key {trusted_id.decode()!r}",
        )
    try:
        trusted_key.verify(trailer[4 + KEY_ID_LEN :], SIGNING_DOMAIN + body)
    except InvalidSignature:
        raise ModelArtifactError(
            ArtifactFault.BAD_SIGNATURE, "the signature does not match the contents"
        ) from None
    return body


def _split_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    off = _PREFIX.size
    (header_len,) = struct.unpack_from(">I", body, off)
    header_raw = body[off + 4 : off + 4 + header_len]
    off += 4 + header_len
    (weights_len,) = struct.unpack_from(">Q", body, off)
    weights = body[off + 8 : off + 8 + weights_len]
    try:
        header = json.loads(header_raw)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except ValueError as e:
        raise ModelArtifactError(ArtifactFault.MALFORMED, "header is not valid JSON") from e
    return header, weights


def _model_from(header: dict[str, Any], weights: bytes) -> TrainedModel:
    architecture = header.get("architecture", 1)
    if architecture != ARCHITECTURE:
        raise ModelArtifactError(
            ArtifactFault.UNKNOWN_VERSION,
            f"model architecture {architecture!r} is not supported (this build reads "
            f"{ARCHITECTURE}); retrain or use a matching release",
        )
    try:
        grid = str(header["grid"])
        layout = build_layout(load_grid(grid))
        if layout_hash(layout) != header["layout_hash"]:
            raise ModelArtifactError(
                ArtifactFault.WRONG_LAYOUT,
                f"the model's layout differs from this build's layout of grid {grid!r}",
            )
        config = NetworkConfig(**{k: int(v) for k, v in header["hyperparameters"].items()})
        cells = np.asarray(header["cell_thresholds"], dtype=np.float64)
        if cells.shape != (len(layout),):
            raise ValueError("cell thresholds do not match the layout")
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
        jacobian = StateJacobian(
            rows=state["jac_rows"].numpy(),
            cols=state["jac_cols"].numpy(),
            values=state["jac_values"].numpy(),
            n_measurements=len(layout),
            n_buses=len(layout.bus_index),
        )
        net = GridDetectorNet(layout, config, jacobian)
        net.load_state_dict(state, strict=True)
        net.refresh_operators()
        net.eval()
        ramp_scale, ramp_threshold = _ramp_from(header.get("ramp"), len(layout))
        return TrainedModel(
            grid=grid,
            layout=layout,
            config=config,
            net=net,
            row_threshold=float(header["row_threshold"]),
            cell_thresholds=cells,
            target_fpr=float(header["target_fpr"]),
            cell_level=float(header["cell_level"]),
            metadata=dict(header.get("metadata", {})),
            ramp_scale=ramp_scale,
            ramp_threshold=ramp_threshold,
        )
    except ModelArtifactError:
        raise
    except Exception as e:  # signed but unusable by this build: say so, never crash
        raise ModelArtifactError(
            ArtifactFault.MALFORMED, f"signed contents are not a usable model ({type(e).__name__})"
        ) from e


def _ramp_from(ramp: Any, m: int) -> tuple[np.ndarray | None, float]:
    """The ramp stage of a header (absent in files made before it: the stage is off)."""
    if ramp is None:
        return None, float("inf")
    if list(ramp["lengths"]) != list(RAMP_LENGTHS):
        raise ValueError("the ramp stage's lengths differ from this build's")
    scale = np.asarray(ramp["scale"], dtype=np.float64)
    if scale.shape != (len(RAMP_LENGTHS), m) or not np.all(scale > 0):
        raise ValueError("the ramp stage's scale does not match the layout")
    return scale, float(ramp["threshold"])


def load_model(
    path: Path,
    trusted_public_key: Ed25519PublicKey,
    *,
    expected_grid: str | None = None,
    expected_layout: MeasurementLayout | None = None,
) -> TrainedModel:
    """Load a signed model artifact, refusing anything not signed by ``trusted_public_key``
    or made for another grid or layout (``ModelArtifactError``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelArtifactError(ArtifactFault.UNREADABLE, f"cannot read {path}") from e
    body = verify_artifact_bytes(data, trusted_public_key)
    header, weights = _split_body(body)
    if expected_grid is not None and header.get("grid") != expected_grid:
        raise ModelArtifactError(
            ArtifactFault.WRONG_GRID,
            f"model is for grid {header.get('grid')!r}, expected {expected_grid!r}",
        )
    if expected_layout is not None and header.get("layout_hash") != layout_hash(expected_layout):
        raise ModelArtifactError(
            ArtifactFault.WRONG_LAYOUT, "model was trained for a different measurement layout"
        )
    return _model_from(header, weights)
