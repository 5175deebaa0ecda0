"""Signed model artifacts: round trip, and every hostile file is refused with a clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.grid import load_grid
from detection.layout import build_layout
from detection.models.artifacts import (
    FORMAT_VERSION,
    MAGIC,
    ArtifactFault,
    ModelArtifactError,
    TrainedModel,
    artifact_body,
    load_model,
    load_public_key,
    save_model,
    save_public_key,
    sign_body,
)
from detection.models.detector import score
from detection.models.jacobian import state_jacobian
from detection.models.network import GridDetectorNet, NetworkConfig
from detection.models.registry import (
    load_shipped_model,
    shipped_model_path,
    shipped_public_key_path,
)
from security.envelope import generate_signing_key


def _tiny_model(grid: str = "case14") -> TrainedModel:
    torch.manual_seed(0)
    layout = build_layout(load_grid(grid))
    config = NetworkConfig(window=3, temporal=2, hidden=8, layers=1, factors=4, replay_days=0)
    net = GridDetectorNet(layout, config, state_jacobian(grid, layout))
    rng = np.random.default_rng(0)
    net.fit_normal(rng.normal(1.0, 0.1, size=(50, len(layout))))
    return TrainedModel(
        grid=grid,
        layout=layout,
        config=config,
        net=net,
        row_threshold=1.5,
        cell_thresholds=np.linspace(0.0, 1.0, len(layout)),
        target_fpr=0.01,
        metadata={"note": "test"},
    )


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, TrainedModel, object]:
    key = generate_signing_key()
    model = _tiny_model()
    path = tmp_path / "case14.gfmodel"
    save_model(path, model, key)
    return path, model, key


def _refused(path: Path, key: object, fault: ArtifactFault, **kw: object) -> ModelArtifactError:
    with pytest.raises(ModelArtifactError) as e:
        load_model(path, key.public_key(), **kw)  # type: ignore[attr-defined]
    assert e.value.fault is fault, str(e.value)
    assert "model artifact refused" in str(e.value)
    return e.value


def test_round_trip_keeps_weights_thresholds_and_scores(signed, tmp_path) -> None:
    path, model, key = signed
    loaded = load_model(
        path, key.public_key(), expected_grid="case14", expected_layout=model.layout
    )
    assert loaded.grid == "case14" and loaded.config == model.config
    assert loaded.row_threshold == model.row_threshold
    np.testing.assert_array_equal(loaded.cell_thresholds, model.cell_thresholds)
    assert loaded.metadata == {"note": "test"}
    x = np.random.default_rng(1).normal(1.0, 0.1, size=(20, len(model.layout)))
    np.testing.assert_array_equal(score(loaded, x)[1], score(model, x)[1])
    # the public key file round trips too
    save_public_key(tmp_path / "k.pub", key.public_key())
    assert load_model(path, load_public_key(tmp_path / "k.pub")).grid == "case14"


def test_same_model_gives_identical_bytes(signed) -> None:
    _, model, _ = signed
    assert artifact_body(model) == artifact_body(model)


@pytest.mark.parametrize("where", [0.0, 0.01, 0.3, 0.6, 0.95, 0.999])
def test_tampered_byte_is_refused(signed, where) -> None:
    path, _, key = signed
    data = bytearray(path.read_bytes())
    pos = max(len(MAGIC) + 2, int(where * len(data)) - 1) if where else 0
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError):
        load_model(path, key.public_key())


def test_every_single_flipped_byte_in_the_header_region_is_refused(signed) -> None:
    path, _, key = signed
    data = path.read_bytes()
    for pos in range(0, 400, 7):
        bad = bytearray(data)
        bad[pos] ^= 0x80
        path.write_bytes(bytes(bad))
        with pytest.raises(ModelArtifactError):
            load_model(path, key.public_key())


def test_tampered_weights_are_refused_as_bad_signature(signed) -> None:
    path, _, key = signed
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x10  # inside the weights, before the 100-byte trailer
    path.write_bytes(bytes(data))
    _refused(path, key, ArtifactFault.BAD_SIGNATURE)


def test_wrong_key_is_refused(signed) -> None:
    path, _, _ = signed
    _refused(path, generate_signing_key(), ArtifactFault.UNTRUSTED_KEY)


def test_resigned_by_attacker_under_trusted_key_id_is_refused(signed) -> None:
    path, model, key = signed
    from detection.models.artifacts import TRAILER_LEN

    forged = sign_body(artifact_body(model), generate_signing_key())
    trusted_trailer = path.read_bytes()[-TRAILER_LEN:]
    # keep the trusted key id, attacker's signature
    forged = forged[:-TRAILER_LEN] + trusted_trailer[:36] + forged[-64:]
    path.write_bytes(forged)
    _refused(path, key, ArtifactFault.BAD_SIGNATURE)


def test_unsigned_file_is_refused(tmp_path) -> None:
    path = tmp_path / "unsigned.gfmodel"
    save_model(path, _tiny_model(), None)
    _refused(path, generate_signing_key(), ArtifactFault.UNSIGNED)


def test_truncated_file_is_refused(signed) -> None:
    path, _, key = signed
    data = path.read_bytes()
    for cut in (5, 12, 200, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelArtifactError) as e:
            load_model(path, key.public_key())
        assert e.value.fault in {
            ArtifactFault.TRUNCATED,
            ArtifactFault.NOT_AN_ARTIFACT,
            ArtifactFault.UNSIGNED,
        }


def test_unknown_format_version_is_refused(signed) -> None:
    path, _, key = signed
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack(">H", FORMAT_VERSION + 1)
    path.write_bytes(bytes(data))
    err = _refused(path, key, ArtifactFault.UNKNOWN_VERSION)
    assert str(FORMAT_VERSION + 1) in str(err)


def test_not_an_artifact_is_refused(tmp_path) -> None:
    path = tmp_path / "x.gfmodel"
    path.write_bytes(b"PK\x03\x04 a torch pickle is not a model artifact")
    _refused(path, generate_signing_key(), ArtifactFault.NOT_AN_ARTIFACT)


def test_model_for_another_grid_or_layout_is_refused(signed) -> None:
    path, _, key = signed
    _refused(path, key, ArtifactFault.WRONG_GRID, expected_grid="case118")
    other = build_layout(load_grid("cigre_mv"))
    _refused(path, key, ArtifactFault.WRONG_LAYOUT, expected_layout=other)


def test_missing_file_is_refused(tmp_path) -> None:
    _refused(tmp_path / "nope.gfmodel", generate_signing_key(), ArtifactFault.UNREADABLE)


@pytest.mark.parametrize("grid", ["case118", "cigre_mv"])
def test_shipped_model_verifies_with_the_shipped_public_key(grid) -> None:
    assert shipped_model_path(grid).stat().st_size < 2 << 20  # shipped files stay small
    model = load_shipped_model(grid)
    assert model.grid == grid
    assert len(model.cell_thresholds) == len(model.layout)
    # and the shipped key is the only one trusted: another key refuses it
    with pytest.raises(ModelArtifactError):
        load_model(shipped_model_path(grid), generate_signing_key().public_key())
    assert shipped_public_key_path().read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_model_of_another_architecture_is_refused_even_when_signed(tmp_path) -> None:
    import json

    key = generate_signing_key()
    body = artifact_body(_tiny_model())
    off = len(MAGIC) + 2
    (n,) = struct.unpack_from(">I", body, off)
    header = json.loads(body[off + 4 : off + 4 + n])
    header["architecture"] = 1  # the graph autoencoder this build no longer runs
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = body[:off] + struct.pack(">I", len(raw)) + raw + body[off + 4 + n :]
    path = tmp_path / "old.gfmodel"
    path.write_bytes(sign_body(body, key))
    err = _refused(path, key, ArtifactFault.UNKNOWN_VERSION)
    assert "architecture 1" in str(err)
