"""Signed forecast-model artifacts (``*.gfcast``): a model steers money and grid limits.

File layout (all integers big-endian)::

    b"GFCAST1\\n"                 8 bytes, magic
    uint16 format_version         FORMAT_VERSION
    uint32 header_len, header     canonical JSON: target, site, normalizer, train config,
                                  network shape, metadata
    uint64 weights_len, weights   torch.save(state_dict) bytes
    --- everything above is the signed body ---
    b"SIG1" + key_id (32 ASCII hex) + Ed25519 signature (64 bytes)

Framing and verification are :mod:`security.signed_artifact` (shared with the detector
models). The signature covers ``b"gridfort/v1/forecast-artifact\\0" + body``: a domain of its own,
so neither a detector model nor any other Gridfort signature can pass for a forecaster.
:func:`load_forecaster` checks framing, version and signature on the raw bytes first; only
verified bytes are parsed as JSON and given to ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from control_plane.forecast.features import Normalizer, Target
from control_plane.forecast.network import DayAheadQuantileNet, NetworkShape
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.train import Forecaster, TrainConfig
from security.refusals import GridfortError
from security.signed_artifact import ArtifactFault, ArtifactFormat, ArtifactRefused, split_body

MAGIC = b"GFCAST1\n"
FORMAT_VERSION = 1
SIGNING_DOMAIN = b"gridfort/v1/forecast-artifact\0"
FORMAT = ArtifactFormat(
    magic=MAGIC,
    version=FORMAT_VERSION,
    domain=SIGNING_DOMAIN,
    max_header_bytes=1 << 20,
    max_weights_bytes=16 << 20,
    what="forecast-model artifact",
)
#: Stable reasons a forecast artifact is refused (the shared artifact faults).
ForecastArtifactFault = ArtifactFault


class ForecastArtifactError(GridfortError):
    """A forecast artifact was refused; ``fault`` says why, ``str(e)`` is safe to show."""

    def __init__(self, fault: ArtifactFault, message: str) -> None:
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
    buf = io.BytesIO()
    torch.save(model.net.state_dict(), buf)
    return FORMAT.body(header, buf.getvalue())


def save_forecaster(path: Path, model: Forecaster, key: Ed25519PrivateKey | None) -> None:
    """Write ``model`` to ``path`` signed with ``key`` (``None``: unsigned, refused on load;
    for tests)."""
    FORMAT.write(path, artifact_body(model), key)


def _fault(fault: ArtifactFault, message: str) -> ForecastArtifactError:
    return ForecastArtifactError(fault, message)


def verify_forecast_artifact(data: bytes, trusted_key: Ed25519PublicKey) -> bytes:
    """Check framing and signature of raw artifact bytes; returns the verified body."""
    try:
        return FORMAT.verify(data, trusted_key)
    except ArtifactRefused as e:
        raise _fault(e.fault, str(e)) from None


def _model_from(body: bytes) -> Forecaster:
    header, weights = split_body(body)
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
