"""A graph network over the grid topology with temporal context (torch, CPU).

Each measurement is a node attached to the bus(es) it touches (``Measurement.buses``);
buses exchange messages along lines and transformers. The input of one snapshot is a
window of the current and ``window - 1`` previous snapshots, in layout units.

Per measurement the network sees: the standardized current value, its residual
against a denoising autoencoder of the whole window (bottleneck: the grid's normal
correlation structure), and its change against each earlier snapshot of the window.
Buses also start from their linear power-balance mismatch (:func:`kcl_operator`).
Message passing (measurement -> bus -> neighbouring buses -> measurement) lets every
measurement be judged against its electrical neighbourhood. Two heads:

* ``recon``: the autoencoder's estimate of the clean current snapshot (standardized);
* ``logits``: one attack logit per measurement (higher = more likely falsified).

Normalization statistics are buffers of the module, so they travel in the
``state_dict`` and can be re-estimated from an operator's clean history.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from detection.layout import MeasurementLayout

#: Smallest scale used to standardize a column [layout units].
MIN_SCALE = 1e-6


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Hyperparameters of :class:`GridDetectorNet`."""

    window: int = 4  # snapshots per input: the current one and window - 1 earlier ones
    hidden: int = 24  # features per node
    layers: int = 2  # rounds of measurement -> bus -> bus -> measurement message passing
    bottleneck: int = 48  # autoencoder code size (capped at a quarter of the measurements)
    kcl: int = 1  # 1: buses also see their power-balance mismatch (see kcl_operator)

    def __post_init__(self) -> None:
        if not 2 <= self.window <= 96:
            raise ValueError(f"window must be in [2, 96], got {self.window}")
        if self.hidden < 4 or self.layers < 1 or self.bottleneck < 2:
            raise ValueError("hidden >= 4, layers >= 1 and bottleneck >= 2 are required")

    def to_json(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


def layout_hash(layout: MeasurementLayout) -> str:
    """SHA-256 (hex) of the layout: every column with its element and buses, in order."""
    rows = [
        [m.column, m.element_type, m.element, m.quantity, m.bus, m.to_bus]
        for m in layout.measurements
    ]
    blob = json.dumps(rows, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def graph_operators(layout: MeasurementLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense mean-aggregation operators of the layout's graph.

    Returns ``meas_to_bus`` (n_bus, m), ``bus_adj`` (n_bus, n_bus, with self loops)
    and ``bus_to_meas`` (m, n_bus), each row-normalized.
    """
    pos = {b: k for k, b in enumerate(layout.bus_index)}
    n_bus, m = len(pos), len(layout)
    inc = np.zeros((n_bus, m))
    adj = np.eye(n_bus)
    for k, meas in enumerate(layout.measurements):
        for b in meas.buses:
            inc[pos[b], k] = 1.0
        if meas.to_bus >= 0:
            adj[pos[meas.bus], pos[meas.to_bus]] = adj[pos[meas.to_bus], pos[meas.bus]] = 1.0
    m2b = inc / np.maximum(inc.sum(axis=1, keepdims=True), 1.0)
    b2m = inc.T / np.maximum(inc.T.sum(axis=1, keepdims=True), 1.0)
    a = adj / adj.sum(axis=1, keepdims=True)
    return m2b, a, b2m


def kcl_operator(layout: MeasurementLayout) -> np.ndarray:
    """Linear power-balance mismatch per bus, (2 * n_bus, m): rows ``0..n_bus-1`` for P,
    the rest for Q. Row ``b`` adds the bus's consumption and every branch flow leaving
    ``b`` (from-end measurements), minus those arriving: about the branch losses
    [MW, Mvar] on consistent data, and off wherever one side of a bus is falsified.
    """
    pos = {b: k for k, b in enumerate(layout.bus_index)}
    n_bus = len(pos)
    op = np.zeros((2 * n_bus, len(layout)))
    for k, meas in enumerate(layout.measurements):
        if meas.is_voltage:
            continue
        off = 0 if meas.is_active_power else n_bus
        op[off + pos[meas.bus], k] += 1.0
        if meas.to_bus >= 0:
            op[off + pos[meas.to_bus], k] -= 1.0
    return op


def _sparse(dense: np.ndarray) -> torch.Tensor:
    nz = np.nonzero(dense)
    idx = torch.tensor(np.vstack(nz), dtype=torch.int64)
    val = torch.tensor(dense[nz], dtype=torch.float32)
    return torch.sparse_coo_tensor(idx, val, dense.shape, check_invariants=True).coalesce()


def _spmm(op: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Sparse ``op`` (rows, n) applied to node-major ``h`` (n, B, H) -> (rows, B, H)."""
    n, b, hd = h.shape
    out: torch.Tensor = torch.sparse.mm(op, h.reshape(n, b * hd))
    return out.reshape(op.shape[0], b, hd)


class _MessagePassing(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.bus = nn.Linear(2 * hidden, hidden)
        self.meas = nn.Linear(2 * hidden, hidden)

    def forward(
        self,
        h: torch.Tensor,
        m2b: torch.Tensor,
        adj: torch.Tensor,
        b2m: torch.Tensor,
        bus_in: torch.Tensor | None,
    ) -> torch.Tensor:
        bus = _spmm(m2b, h)  # (n_bus, B, H)
        if bus_in is not None:
            bus = bus + bus_in
        bus = torch.relu(self.bus(torch.cat([bus, _spmm(adj, bus)], dim=-1)))
        back = _spmm(b2m, bus)  # (m, B, H)
        out: torch.Tensor = h + torch.relu(self.meas(torch.cat([h, back], dim=-1)))
        return out


class GridDetectorNet(nn.Module):
    """Graph network with temporal context; see the module docstring."""

    m2b: torch.Tensor
    kcl_op: torch.Tensor
    kcl_mean: torch.Tensor
    kcl_scale: torch.Tensor
    adj: torch.Tensor
    b2m: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    diff_scale: torch.Tensor

    def __init__(self, layout: MeasurementLayout, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        m = len(layout)
        w, hd = config.window, config.hidden
        code = max(2, min(config.bottleneck, m // 4))
        m2b, adj, b2m = graph_operators(layout)
        self.register_buffer("m2b", _sparse(m2b), persistent=False)
        self.register_buffer("adj", _sparse(adj), persistent=False)
        self.register_buffer("b2m", _sparse(b2m), persistent=False)
        # normalization [layout units]: set from clean data by set_normalization
        self.register_buffer("mean", torch.zeros(m))
        self.register_buffer("scale", torch.ones(m))
        self.register_buffer("diff_scale", torch.ones(m))
        self.encoder = nn.Sequential(
            nn.Linear(w * m, 4 * code), nn.GELU(), nn.Linear(4 * code, code)
        )
        self.decoder = nn.Sequential(nn.Linear(code, 4 * code), nn.GELU(), nn.Linear(4 * code, m))
        self.node = nn.Parameter(torch.zeros(m, 1, hd))
        self.n_bus = len(layout.bus_index)
        if config.kcl:
            kcl = kcl_operator(layout)
            self.register_buffer(
                "kcl_op", torch.tensor(kcl.T, dtype=torch.float32), persistent=False
            )
            self.register_buffer("kcl_mean", torch.zeros(kcl.shape[0]))
            self.register_buffer("kcl_scale", torch.ones(kcl.shape[0]))
            self.kcl_in = nn.Linear(2, hd)
        self.inp = nn.Sequential(nn.Linear(w + 1, hd), nn.GELU(), nn.Linear(hd, hd))
        self.mp = nn.ModuleList([_MessagePassing(hd) for _ in range(config.layers)])
        self.head = nn.Linear(hd, 1)

    def set_normalization(self, x_clean: np.ndarray) -> None:
        """Estimate per-column mean, scale and step-change scale from clean rows (time order)."""
        x = np.asarray(x_clean, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 3:
            raise ValueError("need at least 3 clean rows to estimate the normalization")
        diff = np.diff(x, axis=0)
        with torch.no_grad():
            self.mean.copy_(torch.tensor(x.mean(axis=0)))
            self.scale.copy_(torch.tensor(np.maximum(x.std(axis=0), MIN_SCALE)))
            self.diff_scale.copy_(torch.tensor(np.maximum(diff.std(axis=0), MIN_SCALE)))
            if self.config.kcl:
                mismatch = x @ self.kcl_op.double().numpy()
                self.kcl_mean.copy_(torch.tensor(mismatch.mean(axis=0)))
                self.kcl_scale.copy_(torch.tensor(np.maximum(mismatch.std(axis=0), MIN_SCALE)))

    def forward(self, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``win`` (B, window, m) in layout units -> (recon (B, m), logits (B, m))."""
        mean, scale, dscale = self.mean, self.scale, self.diff_scale
        z = (win - mean) / scale
        recon = self.decoder(self.encoder(torch.asinh(z).flatten(1)))
        zt = z[:, -1]
        resid = zt - recon
        steps = (win[:, -1:] - win[:, :-1]) / dscale  # (B, window - 1, m)
        # node-major features (m, B, window + 1): sparse aggregation needs no transposes
        feats = torch.cat([zt.T.unsqueeze(-1), resid.T.unsqueeze(-1), steps.permute(2, 0, 1)], -1)
        h = self.inp(torch.asinh(feats)) + self.node
        bus_in = None
        if self.config.kcl:
            mismatch = (win[:, -1] @ self.kcl_op - self.kcl_mean) / self.kcl_scale  # (B, 2 n_bus)
            pq = mismatch.reshape(-1, 2, self.n_bus).permute(2, 0, 1)  # (n_bus, B, 2)
            bus_in = self.kcl_in(torch.asinh(pq))
        for layer in self.mp:
            h = layer(h, self.m2b, self.adj, self.b2m, bus_in)
        logits = self.head(h).squeeze(-1).T  # (B, m)
        return recon, logits


def windows(x: np.ndarray, window: int) -> np.ndarray:
    """Sliding windows (n, window, m) ending at every row; the first rows repeat row 0."""
    pad = np.repeat(x[:1], window - 1, axis=0)
    xp = np.concatenate([pad, x], axis=0)
    idx = np.arange(len(x))[:, None] + np.arange(window)[None, :]
    return np.asarray(xp[idx])
