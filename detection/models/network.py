"""The deep detector's network: physics- and history-informed residuals, judged by a graph
network over the grid topology with temporal context (torch, CPU).

Per snapshot, three kinds of evidence are computed by fixed linear operators of the
**model of normal operation** (:mod:`detection.models.normal`), which adaptation
re-estimates from an operator's clean history without touching the learned weights:

* per measurement, the conditional residuals ``r`` of the current snapshot and of the
  ``temporal - 1`` snapshots before it (a slowly growing ramp shows as a trend);
* per bus, the matched filters ``g`` of a voltage-angle and a voltage-magnitude shift
  (the AC Jacobian, :mod:`detection.models.jacobian`): where a stealthy attack moved
  the state;
* per measurement, whether its value repeats, bit for bit, the value the same meter
  reported exactly one, two or three days earlier (``replay_days``) while it changed
  since the previous snapshot: a replayed recording (a value held constant, e.g. a
  stuck meter or a gap filled with the last value, is not). Meters whose clean history
  repeats itself that way (coarsely quantized readings) are excluded when the model is
  fitted.

The network standardizes nothing itself: every input is already in noise units. Each
measurement is a node attached to the bus(es) it touches (``Measurement.buses``);
message passing (measurement -> bus -> neighbouring buses -> measurement) lets each
measurement be judged with its electrical neighbourhood, so a region an attacker
rewrote consistently is flagged as a whole. The output is one attack logit per
measurement (higher = more likely falsified); the row score is the largest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from detection.generate import STEPS_PER_DAY
from detection.layout import MeasurementLayout
from detection.models.jacobian import StateJacobian
from detection.models.normal import NormalModel, fit_normal_model

#: Inputs (in noise units) saturate smoothly at this size (:func:`squash`).
SQUASH_AT = 8.0
#: Quantity types, in the order of their embedding rows.
QUANTITY_TYPES: tuple[str, ...] = (
    "vm_pu",
    "p_mw",
    "q_mvar",
    "p_from_mw",
    "q_from_mvar",
    "p_hv_mw",
    "q_hv_mvar",
)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Hyperparameters of :class:`GridDetectorNet`.

    ``window`` is the context a caller keeps: the current snapshot and ``window - 1``
    earlier ones (enough for the residual history and the replay look-back).
    """

    window: int = 3 * STEPS_PER_DAY + 1
    temporal: int = 16  # snapshots of residual history per measurement
    hidden: int = 24  # features per node
    layers: int = 2  # rounds of measurement -> bus -> bus -> measurement message passing
    factors: int = 120  # size of the model of normal operation (capped per grid)
    replay_days: int = 3  # look for values repeated from 1..replay_days days earlier

    def __post_init__(self) -> None:
        if not 1 <= self.temporal <= self.window:
            raise ValueError(f"temporal must be in [1, window], got {self.temporal}")
        if self.replay_days < 0 or self.window < self.replay_days * STEPS_PER_DAY + 1:
            raise ValueError("window must cover replay_days days of earlier snapshots")
        if self.window > 2000:
            raise ValueError(f"window must be at most 2000, got {self.window}")
        if self.hidden < 4 or self.layers < 1 or self.factors < 1:
            raise ValueError("hidden >= 4, layers >= 1 and factors >= 1 are required")

    @property
    def replay_lags(self) -> tuple[int, ...]:
        return tuple(d * STEPS_PER_DAY for d in range(1, self.replay_days + 1))

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


@dataclass(frozen=True, slots=True)
class RowFeatures:
    """Network inputs of consecutive rows (float32 tensors).

    ``r`` (n, m) conditional residuals; ``z`` (n, m) standardized values;
    ``g`` (n, 2 n_bus) bus matched filters; ``replay`` (n, m, lags) uint8, 1 where the
    value repeats the one ``lag`` rows earlier (0 where that row is not available).
    """

    r: torch.Tensor
    z: torch.Tensor
    g: torch.Tensor
    replay: torch.Tensor


class _BusLayer(nn.Module):
    """One round of bus -> neighbouring bus message passing (residual update)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.own = nn.Linear(hidden, hidden)
        self.neighbours = nn.Linear(hidden, hidden, bias=False)

    def forward(self, bus: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = bus + torch.relu(self.own(bus) + self.neighbours(_spmm(adj, bus)))
        return out


class GridDetectorNet(nn.Module):
    """Residual features and a graph network with temporal context; see the module docstring."""

    m2b: torch.Tensor
    adj: torch.Tensor
    b2m: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    noise_sd: torch.Tensor
    basis: torch.Tensor
    shrink: torch.Tensor
    replay_mask: torch.Tensor
    jac_rows: torch.Tensor
    jac_cols: torch.Tensor
    jac_values: torch.Tensor
    inv_sqrt_pdiag: torch.Tensor
    gmat: torch.Tensor
    basis32: torch.Tensor
    shrink32: torch.Tensor
    quantity: torch.Tensor

    def __init__(
        self, layout: MeasurementLayout, config: NetworkConfig, jacobian: StateJacobian
    ) -> None:
        super().__init__()
        self.config = config
        m, hd = len(layout), config.hidden
        self.n_bus = len(layout.bus_index)
        if (jacobian.n_measurements, jacobian.n_buses) != (m, self.n_bus):
            raise ValueError("the Jacobian does not match the layout")
        k = max(1, min(config.factors, m // 3))
        m2b, adj, b2m = graph_operators(layout)
        self.register_buffer("m2b", _sparse(m2b), persistent=False)
        self.register_buffer("adj", _sparse(adj), persistent=False)
        self.register_buffer("b2m", _sparse(b2m), persistent=False)
        qtype = [QUANTITY_TYPES.index(x.quantity) for x in layout.measurements]
        self.register_buffer("quantity", torch.tensor(qtype, dtype=torch.int64), persistent=False)
        # the model of normal operation (float64; set by set_normal_model / fit_normal)
        self.register_buffer("mean", torch.zeros(m, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(m, dtype=torch.float64))
        self.register_buffer("noise_sd", torch.ones(m, dtype=torch.float64))
        self.register_buffer("basis", torch.zeros(m, k, dtype=torch.float64))
        self.register_buffer("shrink", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("replay_mask", torch.ones(m))
        self.register_buffer("jac_rows", torch.tensor(jacobian.rows, dtype=torch.int64))
        self.register_buffer("jac_cols", torch.tensor(jacobian.cols, dtype=torch.int64))
        self.register_buffer("jac_values", torch.tensor(jacobian.values, dtype=torch.float64))
        # derived operators (refresh_operators)
        self.register_buffer("inv_sqrt_pdiag", torch.ones(m), persistent=False)
        self.register_buffer("gmat", torch.zeros(m, 2 * self.n_bus), persistent=False)
        self.register_buffer("basis32", torch.zeros(m, k), persistent=False)
        self.register_buffer("shrink32", torch.zeros(k), persistent=False)
        n_in = config.temporal + 3 + len(config.replay_lags)
        self.inp = nn.Sequential(nn.Linear(n_in, hd), nn.GELU(), nn.Linear(hd, hd))
        self.kind = nn.Embedding(len(QUANTITY_TYPES), hd)
        self.node = nn.Parameter(torch.zeros(m, 1, hd))
        self.bus_in = nn.Sequential(nn.Linear(2, hd), nn.GELU(), nn.Linear(hd, hd))
        self.mp = nn.ModuleList([_BusLayer(hd) for _ in range(config.layers)])
        self.out_own = nn.Linear(hd, hd)
        self.out_bus = nn.Linear(hd, hd, bias=False)
        self.head = nn.Linear(hd, 1)
        # a direct path from the current residual: the network starts as the classic
        # largest-normalized-residual test and learns what to add to it
        self.skip = nn.Parameter(torch.tensor(1.0))
        with torch.no_grad():
            self.head.bias.fill_(-4.0)
        self.refresh_operators()

    # -- the model of normal operation ----------------------------------------------
    def normal_model(self) -> NormalModel:
        return NormalModel(
            mean=self.mean.numpy().copy(),
            scale=self.scale.numpy().copy(),
            noise_sd=self.noise_sd.numpy().copy(),
            basis=self.basis.numpy().copy(),
            shrink=self.shrink.numpy().copy(),
        )

    def set_normal_model(self, normal: NormalModel) -> None:
        """Install a fitted model of normal operation (fewer factors are zero-padded)."""
        k = self.basis.shape[1]
        if normal.factors > k or normal.mean.shape != self.mean.shape:
            raise ValueError("the model of normal operation does not fit this network")
        basis = np.zeros((len(normal.mean), k))
        basis[:, : normal.factors] = normal.basis
        shrink = np.zeros(k)
        shrink[: normal.factors] = normal.shrink
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(normal.mean))
            self.scale.copy_(torch.from_numpy(normal.scale))
            self.noise_sd.copy_(torch.from_numpy(normal.noise_sd))
            self.basis.copy_(torch.from_numpy(basis))
            self.shrink.copy_(torch.from_numpy(shrink))
        self.refresh_operators()

    def fit_normal(self, x_clean: np.ndarray, factors: int | None = None) -> None:
        """Fit the model of normal operation on clean rows (any order), with
        ``factors`` factors (default: the configured count)."""
        k = factors if factors is not None else self.config.factors
        self.set_normal_model(fit_normal_model(x_clean, min(k, self.basis.shape[1])))

    def fit_replay_mask(self, x_clean: np.ndarray) -> None:
        """Exclude from the replay look-back every meter whose clean, consecutive rows
        ``x_clean`` repeat a value exactly one to ``replay_days`` days later (as
        :meth:`replay_flags` counts repeats: not while the value is held)."""
        x = np.asarray(x_clean, dtype=np.float64)
        repeats = np.zeros(x.shape[1], dtype=bool)
        for lag in self.config.replay_lags:
            if len(x) > lag:
                same = x[lag:] == x[:-lag]
                moved = x[lag:] != x[lag - 1 : -1]
                repeats |= np.any(same & moved, axis=0)
        with torch.no_grad():
            self.replay_mask.copy_(torch.from_numpy((~repeats).astype(np.float32)))

    def refresh_operators(self) -> None:
        """Recompute the derived operators from the normal model and the Jacobian."""
        nm = self.normal_model()
        pdiag = nm.precision_diagonal()
        jac = np.zeros((len(nm.mean), 2 * self.n_bus))
        jac[self.jac_rows.numpy(), self.jac_cols.numpy()] = self.jac_values.numpy()
        q = jac / (nm.scale * nm.noise_sd)[:, None]  # whitened Jacobian columns
        pq = nm.projected(q.T).T
        norm = np.sqrt(np.maximum(np.einsum("ij,ij->j", q, pq), 1e-12))
        with torch.no_grad():
            self.inv_sqrt_pdiag.copy_(torch.from_numpy(1.0 / np.sqrt(pdiag)))
            self.gmat.copy_(torch.from_numpy(q / norm[None, :]))
            self.basis32.copy_(self.basis)
            self.shrink32.copy_(self.shrink)

    # -- features -------------------------------------------------------------------
    def residual_features(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(r, z, g)`` of rows ``x`` (n, m) [layout units] as float32 tensors."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        zs = (xt - self.mean) / self.scale
        y = (zs / self.noise_sd).float()
        e = y - ((y @ self.basis32) * self.shrink32) @ self.basis32.T
        r = e * self.inv_sqrt_pdiag
        g = e @ self.gmat
        return r, zs.float(), g

    def replay_flags(self, x: np.ndarray, rows: np.ndarray | None = None) -> torch.Tensor:
        """(len(rows), m, lags) uint8: 1 where ``x[row]`` repeats ``x[row - lag]`` exactly while
        differing from ``x[row - 1]`` (a held or stuck value is not a replay).

        ``rows`` default to every row of ``x``; rows without a row ``lag`` earlier get 0.
        """
        x = np.asarray(x, dtype=np.float64)
        idx = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
        lags = self.config.replay_lags
        out = np.zeros((len(idx), x.shape[1], len(lags)), dtype=np.uint8)
        mask = self.replay_mask.numpy() > 0
        for j, lag in enumerate(lags):
            ok = idx >= lag
            if ok.any():
                rows_ok = idx[ok]
                same = x[rows_ok] == x[rows_ok - lag]
                # a value held constant (a stuck or gap-filled meter) is not a replay
                moved = x[rows_ok] != x[rows_ok - 1]
                out[ok, :, j] = same & moved & mask[None, :]
        return torch.from_numpy(out)

    def row_features(self, x: np.ndarray) -> RowFeatures:
        """Every input of consecutive rows ``x`` (n, m), in time order."""
        r, z, g = self.residual_features(x)
        return RowFeatures(r=r, z=z, g=g, replay=self.replay_flags(x))

    # -- the network ----------------------------------------------------------------
    def forward(
        self, r_hist: torch.Tensor, z: torch.Tensor, replay: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """Attack logits (B, m) from ``r_hist`` (B, temporal, m; oldest first, zeros where
        the history is missing), ``z`` (B, m), ``replay`` (B, m, lags), ``g`` (B, 2 n_bus)."""
        r_node = r_hist.permute(2, 0, 1)  # (m, B, temporal)
        now = r_node[..., -1:].abs()
        trend = r_node.mean(dim=-1, keepdim=True).abs()
        rep = replay.transpose(0, 1).to(r_hist.dtype)
        feats = torch.cat([r_node, now, trend, z.T.unsqueeze(-1), rep], -1)
        h = self.inp(squash(feats)) + self.kind(self.quantity).unsqueeze(1) + self.node
        g_bus = squash(g.reshape(-1, self.n_bus, 2).transpose(0, 1))  # (n_bus, B, 2)
        bus = _spmm(self.m2b, h) + self.bus_in(g_bus)
        for layer in self.mp:
            bus = layer(bus, self.adj)
        h = torch.relu(self.out_own(h) + self.out_bus(_spmm(self.b2m, bus)))
        logits: torch.Tensor = (self.head(h).squeeze(-1) + self.skip * now.squeeze(-1)).T
        return logits  # (B, m)


def squash(x: torch.Tensor) -> torch.Tensor:
    """``x / (1 + |x| / SQUASH_AT)``: linear near zero, saturating at +-SQUASH_AT (cheap)."""
    return x / (1.0 + x.abs() / SQUASH_AT)


def history_windows(r: torch.Tensor, rows: torch.Tensor, temporal: int) -> torch.Tensor:
    """(len(rows), temporal, m) residual histories ending at ``rows`` of ``r`` (n, m);
    rows before the first are zeros (no evidence)."""
    pad = torch.cat([torch.zeros(temporal - 1, r.shape[1], dtype=r.dtype), r], dim=0)
    idx = rows[:, None] + torch.arange(temporal)[None, :]
    return pad[idx]
