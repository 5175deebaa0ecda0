"""Per-phase numbers and the table of ``gridfort bench fanout --transport nats``."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.fanout import AckClock, Run, _summary
from benchmarks.fanout_nats_edges import NatsRecord
from gridfort.v1 import command_pb2 as cpb

_NAN = float("nan")
_PHASES = {
    "fanout": "per-site groups, all sites",
    "one_group": "ONE group, all sites",
    "one_site": "baseline: one site",
    "one_site_one_asset": "baseline: one site, 1 asset",
}


def phase_summary(
    name: str, runs: list[Run], records: list[NatsRecord], clock: AckClock
) -> dict[str, Any]:
    """Latencies from each activation's event [ms]: per site-activation (``site_*``) and per
    activation, the slowest site (``all_sites_*``); results back at the control plane."""
    activation_of = {g: run.activation_id for run in runs for g in run.command_ids}
    mine = [r for r in records if r.command_id in activation_of]
    by_activation: dict[str, list[NatsRecord]] = defaultdict(list)
    for r in mine:
        by_activation[activation_of[r.command_id]].append(r)
    site: dict[str, list[float]] = defaultdict(list)
    slowest: dict[str, list[float]] = defaultdict(list)
    acked: list[float] = []
    cp_send: list[float] = []
    missing = not_applied = 0
    for run in runs:
        recs = by_activation.get(run.activation_id, [])
        ok = [r for r in recs if r.status == cpb.COMMAND_STATUS_APPLIED and r.applied_ns]
        not_applied += len(recs) - len(ok)
        missing += run.sites - len({r.site_id for r in ok})
        for key in ("received", "verified", "applied", "answered"):
            times = [(getattr(r, f"{key}_ns") - run.event_ns) / 1e6 for r in ok]
            site[key].extend(times)
            if times and len(ok) == run.sites:
                slowest[key].append(max(times))
        acks = clock.acks.get(run.activation_id, {})
        if len(acks) == run.sites:
            acked.append((max(t for t, _ in acks.values()) - run.event_ns) / 1e6)
        cp_send.append((run.sent_ns - run.event_ns) / 1e6)
    first = runs[0] if runs else None
    sizes = [r.message_bytes for r in mine]
    return {
        "phase": name,
        "activations": len(runs),
        "sites": first.sites if first else 0,
        "signatures_per_activation": first.signatures if first else 0,
        "payload_bytes_per_activation": first.payload_bytes if first else 0,
        "message_bytes_per_site": int(statistics.median(sizes)) if sizes else 0,
        "bytes_delivered_per_activation": sum(sizes) // max(1, len(runs)),
        "site_received_ms": _summary(site["received"]),
        "site_verified_ms": _summary(site["verified"]),
        "site_applied_ms": _summary(site["applied"]),
        "site_result_published_ms": _summary(site["answered"]),
        "all_sites_received_ms": _summary(slowest["received"]),
        "all_sites_verified_ms": _summary(slowest["verified"]),
        "all_sites_applied_ms": _summary(slowest["applied"]),
        "all_acknowledged_ms": _summary(acked),
        "control_plane_send_ms": _summary(cp_send),
        "site_activations_missing": missing,
        "entries_not_applied": not_applied,
        "complete": bool(runs) and all(r.complete for r in runs) and missing == 0,
    }


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    x, y = a["all_sites_applied_ms"].get(key), b["all_sites_applied_ms"].get(key)
    return round(x / y, 2) if x and y else None


def _ms(summary: dict[str, float], key: str) -> str:
    return f"{summary.get(key, _NAN):.1f}"


def print_nats_report(result: dict[str, Any]) -> None:
    activation = result["activation"]
    print("operator-signalled activation over NATS: event -> ... [ms]; p50 / p99 over activations")
    print(
        f"    {'phase':<30}{'sites':>6}{'signed':>7}{'msg B':>8}{'verified':>16}"
        f"{'applied':>16}{'acked':>16}{'CP send':>9}  complete"
    )
    for name, ph in activation["phases"].items():
        cols = [
            f"{_ms(ph[k], 'p50')} / {_ms(ph[k], 'p99')}"
            for k in ("all_sites_verified_ms", "all_sites_applied_ms", "all_acknowledged_ms")
        ]
        print(
            f"    {_PHASES.get(name, name):<30}{ph['sites']:>6}{ph['signatures_per_activation']:>7}"
            f"{ph['message_bytes_per_site']:>8}{cols[0]:>16}{cols[1]:>16}{cols[2]:>16}"
            f"{_ms(ph['control_plane_send_ms'], 'p50'):>9}  {ph['complete']}"
        )
    for name in ("fanout", "one_group"):
        ph = activation["phases"].get(name)
        if ph is None:
            continue
        s = ph["site_verified_ms"]
        print(
            f"    {_PHASES[name]}: a given site verified p50 {_ms(s, 'p50')}, p99 {_ms(s, 'p99')}"
            f" ({s.get('n', 0)} site-activations)"
        )
    for name, cores in activation.get("cpu_cores", {}).items():
        per = activation["cpu_ms_per_activation"][name]
        print(
            f"    CPU during {name} [cores]: control plane {cores['control_plane']}, edges"
            f" {cores['edges']}, nats-server {cores['nats_server']}, rest of the machine"
            f" {cores['other']}; per activation [ms]: {per}"
        )
    r, lim = result["ratios"], result["limits"]
    print(
        f"    ratios (applied, all sites / one site): per-site groups p50"
        f" {r['fanout_vs_one_site_p50']}, p99 {r['fanout_vs_one_site_p99']}; one group p50"
        f" {r['one_group_vs_one_site_p50']}, p99 {r['one_group_vs_one_site_p99']}"
    )
    print(
        f"    one group: signed payload {lim['one_group_signed_payload_bytes']} B, NATS message"
        f" {lim['one_group_nats_message_bytes']} B (NATS max_payload"
        f" {lim['nats_max_payload_bytes']}, edge limit {lim['edge_max_command_payload_bytes']})"
    )
    t = result["targets"]
    print(
        f"    target activation p99 < {t['activation_p99_ms']:.0f} ms: per-site groups"
        f" {t['fanout_met']}, one group {t['one_group_met']}"
    )
