"""``gridfort detect train``: train, calibrate and sign a deep-detector model.

Wiring (in ``control_plane/cli/detect.py``, inside ``register`` after ``detect generate``
is added): ``register_train(detect_sub)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES


def register_train(detect_subparsers: Any) -> None:
    """Add ``detect train`` to the ``detect`` action subparsers."""
    p = detect_subparsers.add_parser(
        "train", help="train the deep detector on generated data and write a signed model"
    )
    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    p.add_argument("--steps", type=int, default=2500, help="clean 15-minute snapshots generated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iters", type=int, default=None, help="optimizer steps (default 3000)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--out", type=Path, default=None, help="model file (default GRID.gfmodel in the cwd)"
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) that signs the model; without it a new key is "
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
    extra = {"max_iters": args.max_iters} if args.max_iters is not None else {}
    cfg = TrainConfig(
        grid=args.grid, steps=args.steps, seed=args.seed, threads=args.threads, **extra
    )
    model = train_model(cfg)
    save_model(out, model, key)
    pub = out.with_name(out.name + ".pub")
    key_id = save_public_key(pub, key.public_key())
    print(
        f"wrote {out} (signed, key id {key_id}; public key {pub}); "
        f"row threshold {model.row_threshold:.4f} at FPR {model.target_fpr}"
    )
    return 0
