"""Where the shipped models live, and the deep detectors offered to the evaluator."""

from __future__ import annotations

from pathlib import Path

from detection.detector import Detector
from detection.grid import GRID_NAMES
from detection.layout import MeasurementLayout
from detection.models.artifacts import (
    ArtifactFault,
    ModelArtifactError,
    TrainedModel,
    load_model,
    load_public_key,
)
from detection.models.network import layout_hash

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
MODEL_SUFFIX = ".gfmodel"
PUBLIC_KEY_NAME = "model-signing.pub"


def shipped_model_path(grid: str) -> Path:
    """Path of the pretrained model shipped for ``grid`` (it may not exist)."""
    return SHIPPED_DIR / f"{grid}{MODEL_SUFFIX}"


def shipped_public_key_path() -> Path:
    """The repository's model-signing public key (PEM)."""
    return SHIPPED_DIR / PUBLIC_KEY_NAME


def load_shipped_model(grid: str) -> TrainedModel:
    """The verified shipped model of ``grid`` (``ModelArtifactError`` if absent or refused)."""
    path = shipped_model_path(grid)
    if not path.exists():
        raise ModelArtifactError(ArtifactFault.UNREADABLE, f"no shipped model for grid {grid!r}")
    return load_model(path, load_public_key(shipped_public_key_path()), expected_grid=grid)


def shipped_model_for_layout(layout: MeasurementLayout) -> TrainedModel:
    """The verified shipped model whose layout is ``layout``."""
    from detection.grid import load_grid
    from detection.layout import build_layout

    wanted = layout_hash(layout)
    for grid in GRID_NAMES:
        if (
            shipped_model_path(grid).exists()
            and layout_hash(build_layout(load_grid(grid))) == wanted
        ):
            return load_shipped_model(grid)
    raise ModelArtifactError(
        ArtifactFault.WRONG_LAYOUT, "no shipped model matches this measurement layout"
    )


def available_detectors() -> list[Detector]:
    """Fresh deep detectors for the evaluator; each picks the shipped model of the
    layout given to ``fit`` and recalibrates on that clean data."""
    from detection.models.detector import DeepDetector

    return [DeepDetector()]
