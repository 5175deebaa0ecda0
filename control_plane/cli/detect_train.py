"""``gridfort detect train``: train, calibrate and sign a deep-detector model.

Wiring (in ``control_plane/cli/detect.py``, inside ``register`` after ``detect generate``
is added): ``register_train(detect_sub)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES


def register_train(detect_subparsers: Any) -> None:
    """Add ``detect train`` to the ``detect`` action subparsers."""
    p = detect_subparsers.add_parser(
        "train", help="train the deep detector on generated data and write a signed model"
    )
    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    p.add_argument(
        "--scenarios", type=int, default=None, help="training scenarios generated (default 3)"
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (scenarios, weights)")
    p.add_argument("--max-iters", type=int, default=None, help="optimizer steps (default 3000)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--workers", type=int, default=2, help="power-flow processes (default 2)")
    p.add_argument(
        "--out", type=Path, default=None, help="model file (default GRID.gfmodel in the cwd)"
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) that signs the model (a release: "
        "/work/keys/model-signing.key, see docs/detection.md); without it a new key is "
        "generated and written next to the model as OUT.signing-key.pem (mode 0600)",
    )
    p.set_defaults(handler=detect_train)


def detect_train(args: argparse.Namespace) -> int:
    from detection.models.artifacts import save_model, save_public_key
    from detection.models.train import TrainConfig, train_model
    from security.envelope import generate_signing_key, load_signing_key, save_signing_key

    out: Path = args.out or Path(f"{args.grid}.gfmodel")
    if args.signing_key is not None:
        key = load_signing_key(args.signing_key)
    else:
        key = generate_signing_key()
        key_path = out.with_name(out.name + ".signing-key.pem")
        save_signing_key(key_path, key)
        print(f"detect train: generated a new signing key at {key_path}", file=sys.stderr)
    if args.threads < 1 or args.workers < 1:
        raise ValueError("--threads and --workers must be at least 1")
    cfg = TrainConfig(grid=args.grid, seed=args.seed, threads=args.threads, workers=args.workers)
    if args.max_iters is not None:
        cfg = dataclasses.replace(cfg, max_iters=args.max_iters)
    if args.scenarios is not None:
        cfg = dataclasses.replace(cfg, scenarios=args.scenarios)
    started = time.perf_counter()
    model = train_model(cfg)
    model.metadata["train_seconds"] = round(time.perf_counter() - started, 1)
    save_model(out, model, key)
    pub = out.with_name(out.name + ".pub")
    key_id = save_public_key(pub, key.public_key())
    print(
        f"wrote {out} (signed, key id {key_id}; public key {pub}); "
        f"row threshold {model.row_threshold:.4f} at FPR {model.target_fpr}"
    )
    return 0
