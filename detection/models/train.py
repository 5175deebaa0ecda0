"""Deterministic training of the deep detector on generated data (no downloads).

Data: one clean series of the grid (:func:`detection.generate.generate_series`),
split in time order into training rows and validation rows. Attacked copies of each
part come from :func:`detection.attacks.inject_attacks` with derived seeds; the
clean series is the denoising target. The network is trained on the sum of

* the autoencoder's squared error against the clean current snapshot (standardized),
* per-measurement binary cross-entropy against the falsified-cell labels,
* per-row binary cross-entropy of the largest cell logit against the row label,

with AdamW, early stopping on the validation loss, then thresholds are calibrated on the
clean validation rows at ``target_fpr`` and cell thresholds tuned on the attacked ones.

Given the seed the data, the batch order and the initial weights are fixed; with
``torch.use_deterministic_algorithms`` on one machine the weights come out
bit-identical (see :func:`train_model`). Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from detection.attacks import ATTACK_KINDS, AttackedSeries, inject_attacks
from detection.dataset import ATTACK_COLUMN, NO_ATTACK
from detection.generate import GeneratedSeries, generate_series
from detection.layout import MeasurementLayout
from detection.models.artifacts import TrainedModel
from detection.models.detector import calibrate, cell_f1, score, verdicts
from detection.models.network import GridDetectorNet, NetworkConfig

LogFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train on and how; every field is recorded in the artifact."""

    grid: str = "case118"
    steps: int = 2500  # clean 15-minute snapshots generated
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    attack_copies: int = 8  # attacked copies of the training rows
    val_copies: int = 2  # attacked copies of the validation rows
    attack_rate: float = 0.3  # share of attacked rows per copy
    val_share: float = 0.25  # last share of the rows, for early stopping and calibration
    batch: int = 64
    lr: float = 2e-3
    max_iters: int = 3000
    eval_every: int = 200
    patience: int = 4  # evaluations without improvement before stopping
    pos_weight: float = 4.0  # weight of falsified cells in the cell loss
    target_fpr: float = 0.01
    threads: int = 2
    workers: int = 2  # power-flow processes for data generation

    def __post_init__(self) -> None:
        if self.steps < 200:
            raise ValueError(f"steps must be at least 200, got {self.steps}")
        if not 0.05 <= self.val_share <= 0.5:
            raise ValueError("val_share must be in [0.05, 0.5]")
        if not 0 < self.target_fpr < 1:
            raise ValueError("target_fpr must be in (0, 1)")
        if self.max_iters < 1 or self.batch < 1 or self.attack_copies < 1:
            raise ValueError("max_iters, batch and attack_copies must be positive")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_json()
        return d


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def slice_series(series: GeneratedSeries, start: int, stop: int) -> GeneratedSeries:
    """Rows ``[start, stop)`` of ``series`` as a series of its own (``t`` from 0)."""
    return dataclasses.replace(
        series,
        t=np.arange(stop - start, dtype=np.int64),
        true=series.true[start:stop],
        measured=series.measured[start:stop],
        price_eur_per_mwh=series.price_eur_per_mwh[start:stop],
        voltages=series.voltages[start:stop],
        retried_steps=[],
    )


def attack(series: GeneratedSeries, rate: float, seed: int, log: LogFn) -> AttackedSeries:
    """``inject_attacks`` with every kind; if it fails on a grid quirk, retry with
    other seeds and finally without the stealthy kind (logged)."""
    for k in range(3):
        try:
            return inject_attacks(series, rate=rate, seed=seed + 7919 * k)
        except ValueError as e:
            log(f"detect train: attack injection failed (seed {seed + 7919 * k}): {e}")
    kinds = tuple(x for x in ATTACK_KINDS if x != "stealthy")
    log("detect train: falling back to attacks without the stealthy kind for this copy")
    return inject_attacks(series, rate=rate, seed=seed, kinds=kinds)


def _measurements(att: AttackedSeries, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = att.data[columns].to_numpy(dtype=np.float64)
    mask = att.labels[columns].to_numpy(dtype=bool)
    return x, mask


def _padded(x: np.ndarray, window: int) -> np.ndarray:
    return np.concatenate([np.repeat(x[:1], window - 1, axis=0), x], axis=0)


@dataclass(slots=True)
class _Split:
    x: torch.Tensor  # (copies, rows + window - 1, m) padded, float32
    cells: torch.Tensor  # (copies, rows, m) float32 labels
    target: torch.Tensor  # (rows, m) clean rows, float32


def _split(clean: np.ndarray, attacked: list[tuple[np.ndarray, np.ndarray]], window: int) -> _Split:
    xs = [clean] + [a[0] for a in attacked]
    ms = [np.zeros_like(clean, dtype=bool)] + [a[1] for a in attacked]
    return _Split(
        x=torch.tensor(np.stack([_padded(x, window) for x in xs]), dtype=torch.float32),
        cells=torch.tensor(np.stack(ms), dtype=torch.float32),
        target=torch.tensor(clean, dtype=torch.float32),
    )


def _loss(
    net: GridDetectorNet, data: _Split, c: torch.Tensor, t: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    w = net.config.window
    win = data.x[c[:, None], t[:, None] + torch.arange(w)[None, :]]
    recon, logits = net(win)
    target = (data.target[t] - net.mean) / net.scale
    labels = data.cells[c, t]
    pw = torch.tensor(pos_weight)
    cell = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw)
    row = F.binary_cross_entropy_with_logits(logits.max(dim=1).values, labels.max(dim=1).values)
    total: torch.Tensor = F.mse_loss(recon, target) + cell + row
    return total


def _val_loss(net: GridDetectorNet, data: _Split, pos_weight: float) -> float:
    copies, rows = data.cells.shape[0], data.cells.shape[1]
    c = torch.arange(copies).repeat_interleave(rows)
    t = torch.arange(rows).repeat(copies)
    total = 0.0
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(c), 1024):
            n = len(c[s : s + 1024])
            total += float(_loss(net, data, c[s : s + n], t[s : s + n], pos_weight)) * n
    net.train()
    return total / len(c)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); nan without both classes."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def quality(model: TrainedModel, att: AttackedSeries) -> dict[str, Any]:
    """Detection and localization quality of ``model`` on one labelled attacked series."""
    columns = model.layout.columns
    x, mask = _measurements(att, columns)
    t0 = time.perf_counter()
    rows, cells = score(model, x)
    rows_per_s = len(x) / max(time.perf_counter() - t0, 1e-9)
    attacked, flagged = verdicts(model, rows, cells)
    truth: np.ndarray = np.asarray(mask.any(axis=1), dtype=bool)
    kind = att.labels[ATTACK_COLUMN].astype(str).to_numpy()
    clean = kind == NO_ATTACK
    per_kind = {
        k: float(attacked[(kind == k) & truth].mean())
        for k in ATTACK_KINDS
        if np.any((kind == k) & truth)
    }
    loc = cell_f1(flagged[truth & attacked], mask[truth & attacked])
    return {
        "rows": len(x),
        "attacked_rows": int(truth.sum()),
        "auc": auc(rows[clean | truth], truth[clean | truth]),
        "recall": float(attacked[truth].mean()) if truth.any() else float("nan"),
        "fpr": float(attacked[clean].mean()) if clean.any() else float("nan"),
        "recall_per_kind": per_kind,
        "cell_f1": cell_f1(flagged, mask),
        "cell_f1_detected_rows": loc,
        "rows_per_s": rows_per_s,
    }


@dataclass(slots=True)
class TrainingData:
    """Generated, attacked and split data of one training run."""

    layout: MeasurementLayout
    train_clean: np.ndarray  # (rows, m) clean training rows, layout units
    train: _Split
    val_clean: np.ndarray  # (rows, m) clean validation rows
    val: _Split
    val_attacked: list[AttackedSeries]
    seconds: float


def prepare_data(cfg: TrainConfig, log: LogFn = _stderr) -> TrainingData:
    """Generate the clean series, split it in time order and attack copies of each part."""
    started = time.perf_counter()
    log(f"detect train: generating {cfg.steps} snapshots of {cfg.grid} (seed {cfg.seed})")
    series = generate_series(cfg.grid, cfg.steps, seed=cfg.seed, workers=cfg.workers)
    columns = series.layout.columns
    n_val = round(cfg.steps * cfg.val_share)
    tr = slice_series(series, 0, cfg.steps - n_val)
    va = slice_series(series, cfg.steps - n_val, cfg.steps)
    base = cfg.seed * 1_000_003 + 17
    tr_att = [
        _measurements(attack(tr, cfg.attack_rate, base + i, log), columns)
        for i in range(cfg.attack_copies)
    ]
    va_series = [attack(va, cfg.attack_rate, base + 999 + i, log) for i in range(cfg.val_copies)]
    va_att = [_measurements(a, columns) for a in va_series]
    w = cfg.network.window
    seconds = time.perf_counter() - started
    log(f"detect train: data ready in {seconds:.1f} s ({len(tr.t)} train rows x {len(tr_att) + 1})")
    return TrainingData(
        layout=series.layout,
        train_clean=tr.measured,
        train=_split(tr.measured, tr_att, w),
        val_clean=va.measured,
        val=_split(va.measured, va_att, w),
        val_attacked=va_series,
        seconds=seconds,
    )


def train_model(cfg: TrainConfig, log: LogFn = _stderr) -> TrainedModel:
    """Generate data, train, calibrate; deterministic given ``cfg`` on one machine."""
    return fit_network(cfg, prepare_data(cfg, log), log)


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count, restored afterwards."""
    was_det, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(was_threads)


def fit_network(cfg: TrainConfig, data: TrainingData, log: LogFn = _stderr) -> TrainedModel:
    """Train and calibrate the network on prepared data (deterministic given ``cfg``)."""
    with _deterministic_torch(cfg.threads):
        return _fit(cfg, data, log)


def _fit(cfg: TrainConfig, data: TrainingData, log: LogFn) -> TrainedModel:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    layout, train_data, val_data = data.layout, data.train, data.val
    net = GridDetectorNet(layout, cfg.network)
    net.set_normalization(data.train_clean)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    copies, rows = train_data.cells.shape[0], train_data.cells.shape[1]
    best, best_state, best_iter, waited = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
    it = 0
    for it in range(1, cfg.max_iters + 1):
        c = torch.randint(copies, (cfg.batch,), generator=gen)
        t = torch.randint(rows, (cfg.batch,), generator=gen)
        loss = _loss(net, train_data, c, t, cfg.pos_weight)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if it % cfg.eval_every == 0 or it == cfg.max_iters:
            val = _val_loss(net, val_data, cfg.pos_weight)
            elapsed = time.perf_counter() - started
            log(
                f"detect train: iter {it} loss {float(loss.detach()):.4f} "
                f"val {val:.4f} ({elapsed:.0f} s)"
            )
            if val < best - 1e-4:
                best, best_state, best_iter, waited = val, copy.deepcopy(net.state_dict()), it, 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    log(f"detect train: early stop at iter {it} (best {best_iter})")
                    break
    net.load_state_dict(best_state)
    net.eval()
    model = TrainedModel(
        grid=cfg.grid,
        layout=layout,
        config=cfg.network,
        net=net,
        row_threshold=float("inf"),
        cell_thresholds=np.zeros(len(layout)),
        target_fpr=cfg.target_fpr,
    )
    columns = layout.columns
    va_att = [_measurements(a, columns) for a in data.val_attacked]
    tune = (np.concatenate([a[0] for a in va_att]), np.concatenate([a[1] for a in va_att]))
    calibrate(model, data.val_clean, cfg.target_fpr, attacked=tune)
    metrics = quality(model, data.val_attacked[0])
    fit_s = time.perf_counter() - started
    model.metadata = {
        "train_config": cfg.to_json(),
        "iterations": it,
        "best_iteration": best_iter,
        "best_val_loss": best,
        "train_rows": int(data.train_clean.shape[0]),
        "val_rows": int(data.val_clean.shape[0]),
        "validation": {k: v for k, v in metrics.items() if k != "rows_per_s"},
        "torch_version": torch.__version__,
        "data_seconds": round(data.seconds, 1),
        "fit_seconds": round(fit_s, 1),
    }
    log(f"detect train: done ({data.seconds:.0f} s data, {fit_s:.0f} s fit); validation {metrics}")
    return model
