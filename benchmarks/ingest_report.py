"""The stdout table of ``gridfort bench ingest`` (the JSON holds the same numbers and more)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

WIDTH = 180  # columns when stdout is not a terminal (CI logs, files)
BUSY = 0.25  # cores; see benchmarks.ingest.BUSY_MACHINE_CORES


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _verdict(met: bool) -> str:
    return "[bold green]met[/]" if met else "[bold red]NOT met[/]"


def _console(console: Console | None) -> Console:
    """The console to print on: ``WIDTH`` columns when stdout is not a terminal."""
    if console is not None:
        return console
    console = Console()
    return console if console.is_terminal else Console(width=WIDTH)


def _header(title: str, result: dict[str, Any], load: str, setup: str) -> str:
    """Two header lines: ``title`` and the machine (fsync median in ms), then the load
    (sizes, ``load`` before and ``setup`` after the phase times in s)."""
    m, p = result["machine"], result["parameters"]
    return (
        f"[bold]{title}[/]  {m['cpu_count']} CPU, Python {m['python']}, "
        f"{m['platform']}, load average {m['load_average_at_start']}, "
        f"fsync {m['fsync_4k_median_ms']} ms\n"
        f"{p['sites']} enrolled edges x window {p['window']} batches, "
        f"{p['batch_size']} measurements/batch, {load}{p['seconds']} s per phase "
        f"(+{p['warmup_s']} s warm-up), {setup}"
    )


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table with ``columns``: the first (the phase) left-aligned, the numbers right."""
    table = Table(title=title)
    for col in columns:
        phase = col == "phase"
        table.add_column(col, justify="left" if phase else "right", no_wrap=phase)
    return table


def _rates(phase: dict[str, Any], percentiles: tuple[str, ...]) -> list[str]:
    """The first cells of a phase's row: its name, measurements/s, batches/s and the
    latency ``percentiles`` [ms]."""
    lat = phase["latency_ms"]
    return [
        escape(phase["name"]),
        _fmt(phase["throughput_mps"]),
        _fmt(phase["batches_per_s"], 1),
        *(_fmt(lat.get(p), 1) for p in percentiles),
    ]


def _checks(phase: dict[str, Any]) -> str:
    return "[green]ok[/]" if phase["integrity"]["ok"] else "[bold red]FAILED[/]"


def _print_integrity(console: Console, result: dict[str, Any], ok_text: str) -> None:
    """``ok_text`` if the run lost nothing, else the error and each phase's first problems."""
    if result["integrity_ok"]:
        console.print(f"[green]{ok_text}[/]")
        return
    console.print(f"[bold red]INTEGRITY FAILURE: {escape(result['error'])}[/]")
    for ph in result["phases"]:
        for problem in ph["integrity"].get("problems", [])[:10]:
            console.print(f"[red]  {escape(ph['name'])}: {escape(problem)}[/]")


def print_report(result: dict[str, Any], console: Console | None = None) -> None:
    console = _console(console)
    p = result["parameters"]
    console.print(
        _header("gridfort bench ingest", result, "", f"{p['load_procs']} load process(es)")
    )
    table = _table(
        "ingest over gRPC + mutual TLS on loopback",
        (
            "phase",
            "measurements/s",
            "batches/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "µs/meas",
            "CPU server",
            "load",
            "other",
            "sent",
            "committed",
            "checks",
        ),
    )
    for ph in result["phases"]:
        table.add_row(
            *_rates(ph, ("p50", "p95", "p99")),
            f"{ph['server_cpu_us_per_measurement']:.2f}",
            f"{ph['server_cpu_cores']:.2f}",
            f"{ph['generator_cpu_cores']:.2f}",
            _fmt(ph["other_cpu_cores"], 2),
            f"{ph['batches_sent']:,}",
            f"{ph['batches_committed']:,}",
            _checks(ph),
        )
    console.print(table)
    by_cpu = result["ratio_full_over_baseline_by_cpu"]
    for d, r in result["ratio_full_over_baseline"].items():
        console.print(
            f"ratio full/baseline ({d}): [bold]{r:.2f}[/] by throughput, "
            f"{by_cpu.get(d, 0.0):.2f} by server CPU per measurement"
        )
    t = result["targets"]
    thr, lat = t["throughput_mps"], t["p99_latency_ms"]
    console.print(
        f"target >= {thr['target']:,} measurements/s, every stage on ({thr['durability']}): "
        f"{_fmt(thr['measured'])} -> {_verdict(thr['met'])}"
    )
    console.print(
        f"target p99 < {lat['target']:.0f} ms at half of saturation "
        f"({_fmt(lat['at_load_mps'])} measurements/s): {_fmt(lat['measured'], 1)} ms -> "
        f"{_verdict(lat['met'])}"
    )
    if result["contended_phases"]:
        console.print(
            f"[yellow]note: other processes used > {BUSY} cores of this machine during "
            f"phase(s) {', '.join(result['contended_phases'])} ('other'): their throughput is "
            "a lower bound; 'µs/meas' (server CPU per measurement) is the contention-robust cost[/]"
        )
    _print_integrity(
        console,
        result,
        "integrity: every batch sent got one COMMITTED receipt; store counts match exactly",
    )


def print_nats_report(result: dict[str, Any], console: Console | None = None) -> None:
    """The table of ``gridfort bench ingest --transport nats``."""
    console = _console(console)
    p = result["parameters"]
    title = "gridfort bench ingest --transport nats"
    load = f"{p['partitions']} partitions, "
    console.print(_header(title, result, load, f"durability {p['durability']}"))
    table = _table(
        "ingest over NATS JetStream + mutual TLS on loopback",
        (
            "phase",
            "measurements/s",
            "batches/s",
            "p50 ms",
            "p99 ms",
            "µs/meas workers",
            "CPU workers",
            "nats-server",
            "load",
            "other",
            "sent",
            "done",
            "checks",
        ),
    )
    for ph in result["phases"]:
        cores = ph["cpu_cores"]
        table.add_row(
            *_rates(ph, ("p50", "p99")),
            _fmt(ph["worker_cpu_us_per_measurement"], 2),
            _fmt(cores.get("workers", cores.get("raw_consumers")), 2),
            _fmt(cores.get("nats_server"), 2),
            _fmt(cores.get("generator"), 2),
            _fmt(cores.get("other"), 2),
            f"{ph['batches_sent']:,}",
            f"{ph['batches_done']:,}",
            _checks(ph),
        )
    console.print(table)
    for w, row in result["by_workers"].items():
        ratio = row["ratio_full_over_raw"]
        console.print(
            f"{w} worker(s): full pipeline {_fmt(row['full_mps'])}/s, raw NATS "
            f"{_fmt(row['raw_nats_mps'])}/s, ratio full/raw [bold]{_fmt(ratio, 2)}[/]"
        )
    if result["scaling_2_over_1_workers"] is not None:
        console.print(f"2 workers / 1 worker: [bold]{result['scaling_2_over_1_workers']:.2f}[/]")
    lat = result["latency"]
    if lat:
        console.print(
            f"end-to-end (seal -> signed receipt) at {_fmt(lat['at_load_mps'])} measurements/s "
            f"with {lat['workers']} worker(s): p50 {_fmt(lat.get('p50'), 1)} ms, "
            f"p99 {_fmt(lat.get('p99'), 1)} ms"
        )
    thr = result["targets"]["throughput_mps"]
    console.print(
        f"target >= {thr['target']:,} measurements/s, every stage on ({thr['durability']}): "
        f"{_fmt(thr['measured'])} with {thr['workers']} worker(s) -> {_verdict(thr['met'])}"
    )
    _print_integrity(
        console,
        result,
        "integrity: every batch got one COMMITTED receipt, store counts and "
        "sequences match exactly, the stream is empty after each phase",
    )
