"""Seeded, CPU-only training of one target's quantile network, with early stopping.

Training minimizes the pinball loss of the normalized target over the training days, in
shuffled mini-batches of days (Adam, weight decay). After each epoch the loss on the
validation days (which follow the training days in time) is measured; the weights of the
best epoch are kept and training stops when it has not improved for ``patience`` epochs.
Identical data, config and seed give identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from control_plane.forecast.features import (
    HORIZON,
    Inputs,
    Normalizer,
    Series,
    Target,
    build_inputs,
    truth,
)
from control_plane.forecast.network import DayAheadQuantileNet, NetworkShape, pinball_loss
from control_plane.forecast.quantiles import QuantileForecast
from control_plane.forecast.site import ForecastInputError, ForecastSite

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Training settings: ``max_epochs`` and ``patience`` [epochs], ``batch_days`` [samples],
    ``lr`` and ``weight_decay`` (Adam), ``threads`` (torch CPU threads), network widths."""

    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    hidden: int = 64
    embed: int = 16
    max_epochs: int = 150
    patience: int = 20
    batch_days: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.batch_days < 1 or self.threads < 1:
            raise ForecastInputError(
                "train: max_epochs, patience, batch_days, threads must be >= 1"
            )
        if not (0.0 < self.lr < 1.0) or self.weight_decay < 0.0:
            raise ForecastInputError("train: lr must be in (0, 1), weight_decay >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Forecaster:
    """A trained model of one target at one site, ready to forecast."""

    target: Target
    site: ForecastSite
    norm: Normalizer
    config: TrainConfig
    net: DayAheadQuantileNet
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, series: Series, starts: IntArray) -> FloatArray:
        """Quantile forecasts [target unit], (n, quantiles, HORIZON), for cut-offs ``starts``."""
        inputs = build_inputs(series, self.target, self.norm, starts)
        with torch.no_grad():
            self.net.eval()
            out = self.net(_tensor(inputs.day_x), _tensor(inputs.step_x)).numpy()
        out = out.astype(np.float64)
        if self.target is Target.PV:
            out = np.clip(out, 0.0, None)  # a clear-sky index is never negative
        values = self.norm.center + self.norm.scale * out * inputs.multiplier[..., None]
        if self.target is not Target.PRICE:
            values = np.clip(values, 0.0, None)
        return np.asarray(np.transpose(values, (0, 2, 1)), dtype=np.float64)

    def forecast(self, series: Series, start: int) -> QuantileForecast:
        """The forecast for the horizon from cut-off step ``start`` of ``series``."""
        values = self.predict(series, np.asarray([start], dtype=np.int64))[0]
        ts_ms = int(series.ts_ms[start])
        return QuantileForecast.from_array(self.target, ts_ms, self.config.quantiles, values)


def _tensor(a: FloatArray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@dataclass(frozen=True, slots=True)
class _Tensors:
    day_x: torch.Tensor
    step_x: torch.Tensor
    multiplier: torch.Tensor
    y: torch.Tensor


def _tensors(inputs: Inputs, y: FloatArray) -> _Tensors:
    return _Tensors(
        _tensor(inputs.day_x), _tensor(inputs.step_x), _tensor(inputs.multiplier), _tensor(y)
    )


def _loss(net: DayAheadQuantileNet, t: _Tensors, q: torch.Tensor) -> torch.Tensor:
    pred = net(t.day_x, t.step_x) * t.multiplier[..., None]
    return pinball_loss(pred, t.y, q)


def train_forecaster(
    series: Series,
    target: Target,
    norm: Normalizer,
    train_starts: IntArray,
    val_starts: IntArray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> Forecaster:
    """Train ``target``'s model on the horizons from ``train_starts``; early stopping on
    ``val_starts`` (both cut-off steps, validation after training in time)."""
    if len(train_starts) < 2 or len(val_starts) < 1:
        raise ForecastInputError("train: need at least 2 training days and 1 validation day")
    if val_starts.min() < train_starts.max() + HORIZON:
        raise ForecastInputError("train: validation days must follow the training days")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)

        def data(starts: IntArray) -> _Tensors:
            y = (truth(series, target, starts) - norm.center) / norm.scale
            return _tensors(build_inputs(series, target, norm, starts), y)

        tr, va = data(train_starts), data(val_starts)
        shape = NetworkShape(
            day_features=tr.day_x.shape[1],
            step_features=tr.step_x.shape[2],
            hidden=config.hidden,
            embed=config.embed,
            quantiles=len(config.quantiles),
        )
        net = DayAheadQuantileNet(shape)
        q = torch.tensor(config.quantiles, dtype=torch.float32)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best = (float("inf"), 0, {k: v.clone() for k, v in net.state_dict().items()})
        n = tr.day_x.shape[0]
        epoch = 0
        for epoch in range(1, config.max_epochs + 1):
            net.train()
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, config.batch_days):
                b = order[i : i + config.batch_days]
                batch = _Tensors(tr.day_x[b], tr.step_x[b], tr.multiplier[b], tr.y[b])
                opt.zero_grad()
                _loss(net, batch, q).backward()  # type: ignore[no-untyped-call]
                opt.step()
            net.eval()
            with torch.no_grad():
                val = float(_loss(net, va, q))
            if val < best[0] - 1e-6:
                best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
            elif epoch - best[1] >= config.patience:
                break
            if progress is not None and epoch % 25 == 0:
                progress(f"{target.value}: epoch {epoch}, validation pinball {val:.4f}")
        net.load_state_dict(best[2])
        net.eval()
    finally:
        torch.set_num_threads(threads)
    metadata = {
        "epochs_run": epoch,
        "best_epoch": best[1],
        "val_pinball": round(best[0], 6),
        "train_days": len(train_starts),
        "val_days": len(val_starts),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return Forecaster(target, series.site, norm, config, net, metadata)
