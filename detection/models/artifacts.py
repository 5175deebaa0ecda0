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
Gridfort signature uses. Framing, bounds and signature are :mod:`security.signed_artifact`
(shared with the forecast models); :func:`load_model` checks them on the raw bytes first;
only bytes that verify under the trusted key are parsed as JSON and handed to
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from detection.grid import load_grid
from detection.layout import MeasurementLayout, build_layout
from detection.models.jacobian import StateJacobian
from detection.models.network import GridDetectorNet, NetworkConfig, layout_hash
from detection.models.sequential import RAMP_LENGTHS
from security.envelope import key_id_for, public_key_raw
from security.refusals import GridfortError
from security.signed_artifact import (
    TRAILER_LEN as TRAILER_LEN,
)
from security.signed_artifact import (
    ArtifactFault as ArtifactFault,
)
from security.signed_artifact import (
    ArtifactFormat,
    ArtifactRefused,
    split_body,
)
from security.signing_keys import load_signing_public_key

MAGIC = b"GFMODEL\n"
FORMAT_VERSION = 1
#: Version of the network architecture in the header (``GridDetectorNet``); a signed file
#: made for another architecture is refused as UNKNOWN_VERSION, never half-loaded.
ARCHITECTURE = 2
SIGNING_DOMAIN = b"gridfort/v1/model-artifact\0"
FORMAT = ArtifactFormat(
    magic=MAGIC,
    version=FORMAT_VERSION,
    domain=SIGNING_DOMAIN,
    max_header_bytes=4 << 20,
    max_weights_bytes=64 << 20,
    what="model artifact",
)


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
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    return FORMAT.body(model.header(), buf.getvalue())


def sign_body(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """``body`` followed by its signature trailer."""
    return FORMAT.sign(body, key)


def save_model(path: Path, model: TrainedModel, key: Ed25519PrivateKey | None) -> None:
    """Write ``model`` to ``path`` signed with ``key``.

    ``key=None`` writes an unsigned file, which every loader refuses (for tests).
    """
    FORMAT.write(path, artifact_body(model), key)


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
    try:
        return FORMAT.verify(data, trusted_key)
    except ArtifactRefused as e:
        raise ModelArtifactError(e.fault, str(e)) from None


def _split_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    try:
        return split_body(body)
    except ArtifactRefused as e:
        raise ModelArtifactError(e.fault, str(e)) from e


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
