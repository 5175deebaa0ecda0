"""``gridfort bench detector``: throughput and latency of the deep detector (the gate's judge).

What is measured, on this machine, in one run, with ``--threads`` torch threads:

1. ``batch``: :func:`detection.models.detector.score` plus :func:`verdicts` on ``--rows``
   consecutive snapshots of the grid (real power flows from the generator, two weeks
   of them tiled): snapshots/s and measurements/s. Target on case118: >= 1,000
   snapshots/s (about 726,000 measurements/s).
2. ``latest``: :func:`detection.models.detector.score_latest` on a sliding context window
   (``config.window`` rows: three days), one call per snapshot, as the live gate calls
   it: latency p50/p90/p99 per call and calls/s. Target: p99 < 10 ms.
3. ``gate``: :func:`detection.models.detector.judge_latest` (what the live gate calls per
   snapshot: the row test, the verdicts and, on an attacked snapshot, localization with
   the stream's run memory) on the same data with attacks of every kind injected into
   :data:`GATE_ATTACK_RATE` of the snapshots after the first window: latency p50/p99 over
   every call and over the attacked ones (the slow ones). Target: attacked p99 < 10 ms.
4. ``baseline``: the PCA residual (Q statistic, :mod:`detection.baselines.pca`) fitted
   on the same clean rows, scoring the same snapshots in one batch, and one snapshot per
   call; the deep/baseline ratios compare runs on machines or loads that differ.
5. ``adapt``: :func:`detection.models.detector.adapt` on ``--history`` rows (what
   ``detect score --history`` does before scoring), in seconds.

If a ``gridfort detect eval`` JSON exists for the grid (``--scorecard``), its headline
numbers (deep detector and best baseline) are copied into the result, with their source.
The load average before and after is recorded: other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

TARGET_SNAPSHOTS_PER_S = 1000.0
TARGET_P99_MS = 10.0
#: Share of the gate phase's snapshots (after the first window) that are attacked.
GATE_ATTACK_RATE = 0.35


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``gridfort bench detector`` (wired in control_plane/cli/bench_detector.py)."""
    from detection.grid import GRID_NAMES

    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    p.add_argument("--rows", type=int, default=4000, help="snapshots scored in the batch phase")
    p.add_argument("--calls", type=int, default=1000, help="score_latest calls (one per snapshot)")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured calls before each phase")
    p.add_argument("--repeats", type=int, default=3, help="batch phase repetitions (median)")
    p.add_argument("--history", type=int, default=1344, help="clean rows to adapt on (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=2, help="power-flow processes for the data")
    p.add_argument(
        "--scorecard",
        type=Path,
        default=None,
        help="detect eval JSON to quote (default benchmarks/results/detect_GRID.json if present)",
    )
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/detector.json"))


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    k = min(len(sorted_ms) - 1, max(0, round(q / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def _latency(fn: Callable[[int], object], n: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    lat: list[float] = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t0) * 1000)
    total_s = time.perf_counter() - started
    lat.sort()
    return {
        "calls": n,
        "p50_ms": _percentile(lat, 50),
        "p90_ms": _percentile(lat, 90),
        "p99_ms": _percentile(lat, 99),
        "max_ms": lat[-1] if lat else 0.0,
        "mean_ms": statistics.fmean(lat) if lat else 0.0,
        "calls_per_s": n / total_s if total_s > 0 else 0.0,
    }


def _throughput(fn: Callable[[], object], rows: int, m: int, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {
        "rows": rows,
        "seconds": s,
        "snapshots_per_s": rows / s if s > 0 else 0.0,
        "measurements_per_s": rows * m / s if s > 0 else 0.0,
    }


def _gate_latency(judge: Callable[[int], bool], n: int, warmup: int) -> dict[str, float]:
    """Latency of ``judge(i)`` (True: snapshot judged attacked) over every call and over
    the attacked ones [ms]."""
    for i in range(warmup):
        judge(i)
    every: list[float] = []
    attacked: list[float] = []
    started = time.perf_counter()
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter()
        hit = judge(i)
        ms = (time.perf_counter() - t0) * 1000
        every.append(ms)
        if hit:
            attacked.append(ms)
    total_s = time.perf_counter() - started
    every.sort()
    attacked.sort()
    return {
        "calls": n,
        "attacked_calls": len(attacked),
        "p50_ms": _percentile(every, 50),
        "p99_ms": _percentile(every, 99),
        "attacked_p50_ms": _percentile(attacked, 50),
        "attacked_p99_ms": _percentile(attacked, 99),
        "max_ms": every[-1] if every else 0.0,
        "calls_per_s": n / total_s if total_s > 0 else 0.0,
    }


def _attacked(series: Any, start: int, seed: int) -> np.ndarray:
    """``series.measured`` with attacks of every kind in :data:`GATE_ATTACK_RATE` of the
    rows from ``start`` on (the rows before stay clean: the first context window)."""
    from detection.attacks import inject_attacks
    from detection.models.train import slice_series

    tail = inject_attacks(
        slice_series(series, start, len(series.t)), rate=GATE_ATTACK_RATE, seed=seed
    )
    x = np.array(series.measured, dtype=np.float64, copy=True)
    x[start:] = tail.data[series.layout.columns].to_numpy(dtype=np.float64)
    return x


def _tiled(x: np.ndarray, rows: int) -> np.ndarray:
    reps = -(-rows // len(x))
    return np.tile(x, (reps, 1))[:rows]


def _scorecard(path: Path | None, grid: str) -> dict[str, Any] | None:
    path = path or Path(f"benchmarks/results/detect_{grid}.json")
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        cards = {c["detector"]: c for c in report["scorecards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    keys = ("auc", "recall", "false_positive_rate", "localization_f1")
    deep = cards.get("gnn")
    # the grid baselines only: not the deep detector's own stages, the price check or the gate
    from detection.evaluate import BASELINE_NAMES

    others = [c for name, c in cards.items() if name in BASELINE_NAMES]
    best = max(others, key=lambda c: c.get("auc") or 0.0) if others else None
    return {
        "source": str(path),
        "target_fpr": report.get("target_fpr"),
        "held_out": bool(report.get("source", {}).get("held_out", False)),
        "deep": {k: deep.get(k) for k in (*keys, "own_localization_f1")} if deep else None,
        "best_baseline": {"detector": best["detector"], **{k: best.get(k) for k in keys}}
        if best
        else None,
    }


def run_benchmark(
    grid: str,
    rows: int,
    calls: int,
    warmup: int,
    repeats: int,
    history: int,
    threads: int,
    workers: int,
    scorecard: Path | None = None,
) -> dict[str, Any]:
    import torch

    from detection.baselines.pca import PcaResidualDetector
    from detection.generate import generate_series
    from detection.models.detector import (
        MIN_HISTORY_ROWS,
        adapt,
        judge_latest,
        localization_memory,
        score,
        score_latest,
        verdicts,
    )
    from detection.models.registry import load_shipped_model

    if min(rows, calls, repeats, threads, workers) < 1 or warmup < 0 or history < 0:
        raise ValueError("rows, calls, repeats, threads and workers must be positive")
    if 0 < history < MIN_HISTORY_ROWS:
        raise ValueError(f"--history must be 0 or at least {MIN_HISTORY_ROWS} rows")
    torch.set_num_threads(threads)
    model = load_shipped_model(grid)
    window = model.config.window
    steps = max(history, 96, calls + warmup) + window
    series = generate_series(grid, steps, seed=4242, workers=workers)
    clean = series.measured
    m = clean.shape[1]
    x = _tiled(clean, rows)
    load_before = os.getloadavg()[0]
    phases: dict[str, dict[str, float]] = {}

    def deep_batch() -> None:
        r, c = score(model, x)
        verdicts(model, r, c)

    phases["batch"] = _throughput(deep_batch, rows, m, repeats)
    stream = _tiled(clean, calls + warmup + window)
    phases["latest"] = _latency(
        lambda i: score_latest(model, stream[i : i + window]), calls, warmup
    )
    gate_x = _attacked(series, window, seed=4243)
    memory = localization_memory(model)
    phases["gate"] = _gate_latency(
        lambda i: judge_latest(model, gate_x[i + 1 : i + 1 + window], None, memory).attacked,
        calls,
        warmup,
    )
    pca = PcaResidualDetector()
    pca.fit(clean[: max(history, 200)], model.layout)
    phases["baseline_batch"] = _throughput(
        lambda: (pca.score_rows(x), pca.score_cells(x)), rows, m, repeats
    )
    phases["baseline_latest"] = _latency(
        lambda i: (pca.score_rows(stream[i + window - 1 : i + window]),), calls, warmup
    )
    adapt_s = None
    if history:
        t0 = time.perf_counter()
        adapt(model, clean[:history])
        adapt_s = time.perf_counter() - t0
    batch, latest, gate = phases["batch"], phases["latest"], phases["gate"]
    gate_p99 = gate["attacked_p99_ms"] if gate["attacked_calls"] else gate["p99_ms"]
    return {
        "benchmark": "detector",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": threads,
        },
        "grid": grid,
        "measurements": m,
        "window": window,
        "model": {k: model.metadata.get(k) for k in ("best_iteration", "train_seconds")},
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "phases": phases,
        "adapt_seconds": adapt_s,
        "adapt_history_rows": history,
        "deep_over_baseline": {
            "batch_throughput": _ratio(
                batch["snapshots_per_s"], phases["baseline_batch"]["snapshots_per_s"]
            ),
            "latest_p50": _ratio(latest["p50_ms"], phases["baseline_latest"]["p50_ms"]),
        },
        "targets": {
            "snapshots_per_s": TARGET_SNAPSHOTS_PER_S,
            "p99_ms": TARGET_P99_MS,
            "gate_p99_ms": gate_p99,
            "met": batch["snapshots_per_s"] >= TARGET_SNAPSHOTS_PER_S
            and latest["p99_ms"] < TARGET_P99_MS
            and gate_p99 < TARGET_P99_MS,
        },
        "scorecard": _scorecard(scorecard, grid),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def print_report(result: dict[str, Any]) -> None:
    ph = result["phases"]
    print(
        f"deep detector on {result['grid']} ({result['measurements']} measurements, "
        f"window {result['window']} snapshots, {result['machine']['torch_threads']} threads)"
    )
    print(f"{'phase':<16}{'snapshots/s':>14}{'meas/s':>14}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("batch", "baseline_batch"):
        p = ph[name]
        print(
            f"{name:<16}{p['snapshots_per_s']:>14,.0f}{p['measurements_per_s']:>14,.0f}"
            f"{'':>10}{'':>10}"
        )
    m = result["measurements"]
    for name in ("latest", "baseline_latest"):
        p = ph[name]
        print(
            f"{name:<16}{p['calls_per_s']:>14,.0f}{p['calls_per_s'] * m:>14,.0f}"
            f"{p['p50_ms']:>10.2f}{p['p99_ms']:>10.2f}"
        )
    g = ph["gate"]
    print(
        f"{'gate':<16}{g['calls_per_s']:>14,.0f}{g['calls_per_s'] * m:>14,.0f}"
        f"{g['p50_ms']:>10.2f}{g['p99_ms']:>10.2f}"
    )
    print(
        f"gate (judge_latest, {GATE_ATTACK_RATE:.0%} attacked): {g['attacked_calls']} "
        f"snapshots judged attacked, p50 {g['attacked_p50_ms']:.2f} ms, "
        f"p99 {g['attacked_p99_ms']:.2f} ms"
    )
    r = result["deep_over_baseline"]
    print(
        f"deep/PCA-Q: batch throughput x{r['batch_throughput']:.2f}, "
        f"single-snapshot p50 latency x{r['latest_p50']:.1f}"
    )
    if result["adapt_seconds"] is not None:
        print(
            f"adaptation to {result['adapt_history_rows']} history rows: "
            f"{result['adapt_seconds']:.1f} s"
        )
    t = result["targets"]
    print(
        f"targets (>= {t['snapshots_per_s']:,.0f} snapshots/s, p99 < {t['p99_ms']} ms, "
        f"attacked snapshots included): "
        f"{'met' if t['met'] else 'NOT met'}; load average "
        f"{result['load_average_1m']['before']:.2f} -> {result['load_average_1m']['after']:.2f}"
    )
    sc = result.get("scorecard")
    if sc and sc.get("deep"):
        d, b = sc["deep"], sc.get("best_baseline") or {}
        print(
            f"scorecard ({sc['source']}, FPR target {sc['target_fpr']}): deep AUC "
            f"{_f(d['auc'])} recall {_f(d['recall'])} FPR {_f(d['false_positive_rate'])} "
            f"loc F1 {_f(d['localization_f1'])} generic / {_f(d.get('own_localization_f1'))} own; "
            f"best baseline {b.get('detector')} AUC "
            f"{_f(b.get('auc'))} recall {_f(b.get('recall'))}"
        )


def _f(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "-"


def run_cli(args: argparse.Namespace) -> int:
    result = run_benchmark(
        args.grid,
        args.rows,
        args.calls,
        args.warmup,
        args.repeats,
        args.history,
        args.threads,
        args.workers,
        args.scorecard,
    )
    print_report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0
