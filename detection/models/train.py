"""Deterministic training of the deep detector on generated data (no downloads).

Data (:func:`prepare_data`): ``scenarios`` training scenarios
(:func:`detection.scenarios.training_scenarios`: noise and load pattern drawn from wide
ranges, attack sizes from wider-than-reference ranges) and one validation scenario
(the reference grid: default noise, load pattern and attack ranges). Each scenario is
one generated series: its first ``history_steps`` clean rows fit that scenario's model
of normal operation (exactly what ``--history`` adaptation does for an operator), the
next rows are attacked ``attack_copies`` times (plus the clean copy) with
:func:`detection.attacks.inject_attacks`. The network's inputs are computed once per
copy with the scenario's own model of normal operation, so the network learns to judge
residuals in noise units, whatever the grid's noise and load patterns.

Training (:func:`fit_network`): per-measurement binary cross-entropy against the
falsified-cell labels plus per-row binary cross-entropy of the largest cell logit
against the row label, AdamW, early stopping on the validation loss. Then the shipped
state: the validation scenario's model of normal operation, the row threshold at
``target_fpr`` on its clean rows (out of sample), the common cell level tuned on its
attacked copies. No ramp stage (:mod:`detection.models.sequential`) is shipped: on the
held-out scenario it did not catch ramps earlier than the row test (docs/detection.md).

Given the seed, data, batch order and initial weights are fixed; with
``torch.use_deterministic_algorithms`` and a fixed thread count the weights come out
bit-identical on one machine. Progress goes to stderr.
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
from detection.models.detector import (
    cell_f1,
    score,
    set_thresholds,
    tune_cell_level,
    verdicts,
)
from detection.models.jacobian import StateJacobian, state_jacobian
from detection.models.network import GridDetectorNet, NetworkConfig
from detection.models.normal import NormalModel, fit_normal_model
from detection.scenarios import HELD_OUT_SEED, Scenario, training_scenarios

LogFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train on and how; every field is recorded in the artifact."""

    grid: str = "case118"
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    scenarios: int = 3  # training scenarios (noise and load pattern drawn per scenario)
    history_steps: int = 1344  # clean rows per scenario for its model of normal operation
    train_steps: int = 1000  # rows per training scenario that are attacked
    attack_copies: int = 6  # attacked copies of each scenario's training rows
    val_steps: int = 1000  # rows of the validation scenario after its history
    val_copies: int = 3  # attacked copies of the validation rows
    attack_rate: float = 0.3  # share of attacked rows per copy
    batch: int = 32
    lr: float = 2e-3
    max_iters: int = 3000
    eval_every: int = 250
    patience: int = 4  # evaluations without improvement before stopping
    pos_weight: float = 4.0  # weight of falsified cells in the cell loss
    target_fpr: float = 0.001
    threads: int = 2
    workers: int = 2  # power-flow processes for data generation

    def __post_init__(self) -> None:
        if self.history_steps < 100 or self.train_steps < 100 or self.val_steps < 100:
            raise ValueError("history_steps, train_steps and val_steps must be at least 100")
        if not 0 < self.target_fpr < 1:
            raise ValueError("target_fpr must be in (0, 1)")
        if min(self.max_iters, self.batch, self.attack_copies, self.scenarios) < 1:
            raise ValueError("max_iters, batch, attack_copies and scenarios must be positive")
        if not 0 <= self.seed < HELD_OUT_SEED // 1009 - 1:
            raise ValueError("seed must keep every training scenario below the held-out seeds")

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


def attack(
    series: GeneratedSeries, rate: float, seed: int, log: LogFn, scenario: Scenario | None = None
) -> AttackedSeries:
    """``inject_attacks`` with every kind; if it fails on a grid quirk, retry with
    other seeds and finally without the stealthy kind (logged)."""
    mags = scenario.magnitudes if scenario is not None else None
    for k in range(3):
        try:
            return inject_attacks(series, rate=rate, seed=seed + 7919 * k, magnitudes=mags)
        except ValueError as e:
            log(f"detect train: attack injection failed (seed {seed + 7919 * k}): {e}")
    kinds = tuple(x for x in ATTACK_KINDS if x != "stealthy")
    log("detect train: falling back to attacks without the stealthy kind for this copy")
    return inject_attacks(series, rate=rate, seed=seed, kinds=kinds, magnitudes=mags)


def _measurements(att: AttackedSeries, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = att.data[columns].to_numpy(dtype=np.float64)
    mask = att.labels[columns].to_numpy(dtype=bool)
    return x, mask


@dataclass(slots=True)
class FeatureSet:
    """Network inputs of several copies of ``n`` consecutive rows (float32 tensors).

    ``r`` (copies, temporal - 1 + n, m): residuals with ``temporal - 1`` rows of context
    before the first row; ``z`` (copies, n, m); ``g`` (copies, n, 2 n_bus);
    ``replay`` (copies, n, m, lags) uint8; ``labels`` (copies, n, m) bool.
    """

    r: torch.Tensor
    z: torch.Tensor
    g: torch.Tensor
    replay: torch.Tensor
    labels: torch.Tensor

    @property
    def copies(self) -> int:
        return int(self.z.shape[0])

    @property
    def rows(self) -> int:
        return int(self.z.shape[1])


def _features(
    net: GridDetectorNet, context: np.ndarray, copies: list[tuple[np.ndarray, np.ndarray]]
) -> FeatureSet:
    """Inputs of each (x, labels) copy, with the clean ``context`` rows before it."""
    t = net.config.temporal
    rs, zs, gs, reps, labs = [], [], [], [], []
    with torch.inference_mode():
        for x, lab in copies:
            full = np.concatenate([context, x])
            r, z, g = net.residual_features(full[len(context) - (t - 1) :])
            rows = np.arange(len(context), len(full))
            rep = net.replay_flags(full, rows)
            rs.append(r)
            zs.append(z[t - 1 :])
            gs.append(g[t - 1 :])
            reps.append(rep)
            labs.append(torch.from_numpy(lab))
    return FeatureSet(
        r=torch.stack(rs),
        z=torch.stack(zs),
        g=torch.stack(gs),
        replay=torch.stack(reps),
        labels=torch.stack(labs),
    )


def _concat(sets: list[FeatureSet]) -> FeatureSet:
    return FeatureSet(
        r=torch.cat([s.r for s in sets]),
        z=torch.cat([s.z for s in sets]),
        g=torch.cat([s.g for s in sets]),
        replay=torch.cat([s.replay for s in sets]),
        labels=torch.cat([s.labels for s in sets]),
    )


@dataclass(slots=True)
class ScenarioData:
    """One generated scenario: its model of normal operation, clean rows and copies."""

    scenario: Scenario
    normal: NormalModel
    history: np.ndarray  # (history_steps, m) clean rows the normal model was fitted on
    clean: np.ndarray  # (n, m) clean rows after the history
    attacked: list[AttackedSeries]


@dataclass(slots=True)
class TrainingData:
    """Generated, attacked and featurized data of one training run."""

    layout: MeasurementLayout
    jacobian: StateJacobian
    train: FeatureSet
    val: FeatureSet
    validation: ScenarioData
    seconds: float
    scenarios: list[dict[str, Any]]


def _scenario_data(
    cfg: TrainConfig, sc: Scenario, n: int, copies: int, log: LogFn
) -> tuple[ScenarioData, GeneratedSeries]:
    series = generate_series(
        cfg.grid,
        cfg.history_steps + n,
        seed=sc.seed,
        noise=sc.noise,
        pattern=sc.pattern,
        workers=cfg.workers,
    )
    history = series.measured[: cfg.history_steps]
    part = slice_series(series, cfg.history_steps, cfg.history_steps + n)
    attacked = [
        attack(part, cfg.attack_rate, sc.seed * 7 + 1_000_003 + i, log, sc) for i in range(copies)
    ]
    normal = fit_normal_model(history, cfg.network.factors)
    data = ScenarioData(sc, normal, history, part.measured, attacked)
    return data, series


def _scenario_features(net: GridDetectorNet, data: ScenarioData, columns: list[str]) -> FeatureSet:
    net.set_normal_model(data.normal)
    net.fit_replay_mask(data.history)
    copies = [(data.clean, np.zeros(data.clean.shape, dtype=bool))]
    copies += [_measurements(a, columns) for a in data.attacked]
    return _features(net, data.history, copies)


def validation_scenario(cfg: TrainConfig) -> Scenario:
    """The reference grid (default noise, pattern, attack ranges) with a training seed."""
    return Scenario(seed=cfg.seed * 1009 + 1000)


def prepare_data(cfg: TrainConfig, log: LogFn = _stderr) -> TrainingData:
    """Generate every scenario, attack copies, and compute the network inputs."""
    started = time.perf_counter()
    scenarios = training_scenarios(cfg.seed, cfg.scenarios)
    val_sc = validation_scenario(cfg)
    log(
        f"detect train: generating {cfg.scenarios} training scenarios and one validation "
        f"scenario of {cfg.grid} ({cfg.history_steps} history rows each)"
    )
    jac = state_jacobian(cfg.grid, _layout(cfg.grid))
    sets: list[FeatureSet] = []
    layout: MeasurementLayout | None = None
    net: GridDetectorNet | None = None
    for sc in scenarios:
        data, series = _scenario_data(cfg, sc, cfg.train_steps, cfg.attack_copies, log)
        layout = series.layout
        net = net or GridDetectorNet(layout, cfg.network, jac)
        sets.append(_scenario_features(net, data, layout.columns))
        log(f"detect train: scenario {sc.seed} ready ({time.perf_counter() - started:.0f} s)")
    val, series = _scenario_data(cfg, val_sc, cfg.val_steps, cfg.val_copies, log)
    layout = series.layout
    net = net or GridDetectorNet(layout, cfg.network, jac)
    val_set = _scenario_features(net, val, layout.columns)
    seconds = time.perf_counter() - started
    log(f"detect train: data ready in {seconds:.1f} s")
    return TrainingData(
        layout=layout,
        jacobian=jac,
        train=_concat(sets),
        val=val_set,
        validation=val,
        seconds=seconds,
        scenarios=[sc.to_json() for sc in scenarios],
    )


def _layout(grid: str) -> MeasurementLayout:
    from detection.grid import load_grid
    from detection.layout import build_layout

    return build_layout(load_grid(grid))


def _batch_loss(
    net: GridDetectorNet, fs: FeatureSet, c: torch.Tensor, t: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    temporal = net.config.temporal
    hist = fs.r[c[:, None], t[:, None] + torch.arange(temporal)[None, :]]
    logits = net(hist, fs.z[c, t], fs.replay[c, t], fs.g[c, t])
    labels = fs.labels[c, t].float()
    pw = torch.tensor(pos_weight)
    cell = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pw)
    row = F.binary_cross_entropy_with_logits(logits.max(dim=1).values, labels.max(dim=1).values)
    total: torch.Tensor = cell + row
    return total


def _val_loss(net: GridDetectorNet, fs: FeatureSet, pos_weight: float) -> float:
    c = torch.arange(fs.copies).repeat_interleave(fs.rows)
    t = torch.arange(fs.rows).repeat(fs.copies)
    total = 0.0
    net.eval()
    with torch.inference_mode():
        for s in range(0, len(c), 512):
            n = len(c[s : s + 512])
            total += float(_batch_loss(net, fs, c[s : s + n], t[s : s + n], pos_weight)) * n
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


def quality(
    model: TrainedModel, att: AttackedSeries, context: np.ndarray | None = None
) -> dict[str, Any]:
    """Detection and localization quality of ``model`` on one labelled attacked series.

    ``context``: clean rows just before the series (scored along, not counted).
    """
    columns = model.layout.columns
    x, mask = _measurements(att, columns)
    ctx = np.empty((0, x.shape[1])) if context is None else np.asarray(context)
    rows, cells = score(model, np.concatenate([ctx, x]))
    rows, cells = rows[len(ctx) :], cells[len(ctx) :]
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
        "cell_f1": cell_f1(flagged[truth], mask[truth]),
        "cell_f1_detected_rows": loc,
    }


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


def _train(
    cfg: TrainConfig, net: GridDetectorNet, data: TrainingData, log: LogFn
) -> tuple[int, int, float]:
    """Optimize ``net`` in place; returns (iterations, best iteration, best val loss)."""
    started = time.perf_counter()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.max_iters, eta_min=cfg.lr / 20)
    gen = torch.Generator().manual_seed(cfg.seed)
    tr = data.train
    best, best_state, best_iter, waited = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
    net.train()
    it = 0
    for it in range(1, cfg.max_iters + 1):
        c = torch.randint(tr.copies, (cfg.batch,), generator=gen)
        t = torch.randint(tr.rows, (cfg.batch,), generator=gen)
        loss = _batch_loss(net, tr, c, t, cfg.pos_weight)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if it % cfg.eval_every == 0 or it == cfg.max_iters:
            val = _val_loss(net, data.val, cfg.pos_weight)
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
    return it, best_iter, best


def _fit(cfg: TrainConfig, data: TrainingData, log: LogFn) -> TrainedModel:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    net = GridDetectorNet(data.layout, cfg.network, data.jacobian)
    iterations, best_iter, best = _train(cfg, net, data, log)
    val = data.validation
    net.set_normal_model(val.normal)
    net.fit_replay_mask(val.history)
    model = TrainedModel(
        grid=cfg.grid,
        layout=data.layout,
        config=cfg.network,
        net=net,
        row_threshold=float("inf"),
        cell_thresholds=np.zeros(len(data.layout)),
        target_fpr=cfg.target_fpr,
    )
    ctx = val.history[-cfg.network.window :]
    clean_rows, clean_cells = score(model, np.concatenate([ctx, val.clean]))
    clean_rows, clean_cells = clean_rows[len(ctx) :], clean_cells[len(ctx) :]
    set_thresholds(model, clean_rows, clean_cells, cfg.target_fpr)
    columns = data.layout.columns
    scored = []
    for a in val.attacked:
        x, lab = _measurements(a, columns)
        r, c = score(model, np.concatenate([ctx, x]))
        scored.append((r[len(ctx) :], c[len(ctx) :], lab))
    tune_cell_level(
        model,
        clean_cells,
        np.concatenate([s[0] for s in scored]),
        np.concatenate([s[1] for s in scored]),
        np.concatenate([s[2] for s in scored]),
    )
    metrics = quality(model, val.attacked[0], ctx)
    fit_s = time.perf_counter() - started
    model.metadata = {
        "train_config": cfg.to_json(),
        "scenarios": data.scenarios,
        "iterations": iterations,
        "best_iteration": best_iter,
        "best_val_loss": best,
        "normal_model_rows": int(val.history.shape[0]),
        "validation": metrics,
        "torch_version": torch.__version__,
        "data_seconds": round(data.seconds, 1),
        "fit_seconds": round(fit_s, 1),
    }
    log(f"detect train: done ({data.seconds:.0f} s data, {fit_s:.0f} s fit); validation {metrics}")
    return model
