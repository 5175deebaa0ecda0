"""The day-ahead quantile network and the pinball loss.

A day encoder turns the day features into a small embedding; a step network shared by all
horizon steps reads the embedding with each step's features and emits one value per
quantile. Quantiles cannot cross by construction: the first is free and each next one adds a
softplus (>= 0) increment, so ``P10 <= P50 <= P90`` for every input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class NetworkShape:
    """Sizes: ``day_features``, ``step_features`` (inputs), ``hidden`` and ``embed`` (layer
    widths), ``quantiles`` (outputs per step)."""

    day_features: int
    step_features: int
    hidden: int = 64
    embed: int = 16
    quantiles: int = 3

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DayAheadQuantileNet(nn.Module):
    """(day_x (B, D), step_x (B, H, S)) -> ordered quantiles (B, H, Q)."""

    def __init__(self, shape: NetworkShape) -> None:
        super().__init__()
        self.shape = shape
        self.day = nn.Sequential(
            nn.Linear(shape.day_features, shape.hidden),
            nn.GELU(),
            nn.Linear(shape.hidden, shape.embed),
        )
        self.step = nn.Sequential(
            nn.Linear(shape.embed + shape.step_features, shape.hidden),
            nn.GELU(),
            nn.Linear(shape.hidden, shape.hidden),
            nn.GELU(),
            nn.Linear(shape.hidden, shape.quantiles),
        )

    def forward(self, day_x: torch.Tensor, step_x: torch.Tensor) -> torch.Tensor:
        emb = self.day(day_x)[:, None, :].expand(-1, step_x.shape[1], -1)
        raw = self.step(torch.cat([emb, step_x], dim=2))
        increments = nn.functional.softplus(raw[..., 1:])
        return torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(increments, dim=2)], dim=2)


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss of ``pred`` (B, H, Q) against ``y`` (B, H)."""
    diff = y[..., None] - pred
    return torch.mean(torch.maximum(quantiles * diff, (quantiles - 1.0) * diff))
