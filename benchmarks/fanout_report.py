"""The table ``gridfort bench fanout`` prints (the JSON holds everything)."""

from __future__ import annotations

from typing import Any

_NAN = float("nan")
_PHASES = {
    "fanout": "all sites (the headline)",
    "afrr_product": "all sites, the product's aFRR path",
    "one_site": "baseline: one site",
    "group_baseline_sites": "group, baseline sites",
    "per_asset_signing": "per-asset signing, same sites",
}


def _ms(summary: dict[str, float], key: str) -> str:
    value = summary.get(key, _NAN)
    return f"{value:.1f}"


def print_report(result: dict[str, Any]) -> None:
    ffr = result["ffr"]
    if ffr is not None:
        lat, edge = ffr["latency_ms"], ffr["edge_side_latency_ms"]
        poll = ffr["params"]["poll_ms"]
        print(f"(a) local FFR at the edge: {ffr['measured']}/{ffr['events']} dips, poll {poll} ms")
        print(
            f"    crossing -> FFR setpoint held by the Modbus device: p50 {_ms(lat, 'p50')} ms,"
            f" p99 {_ms(lat, 'p99')} ms, max {_ms(lat, 'max')} ms"
        )
        print(
            f"    edge view (reading -> write returned): p50 {_ms(edge, 'p50')} ms,"
            f" p99 {_ms(edge, 'p99')} ms"
        )
    activation = result["activation"]
    print("(b) operator-signalled activation: event -> setpoints applied at every site [ms]")
    print(
        f"    {'phase':<32}{'sites':>6}{'signed':>8}{'p50':>9}{'p99':>9}"
        f"{'acked p99':>11}{'CP send':>9}  complete"
    )
    for name, ph in activation["phases"].items():
        applied, acked = ph["all_sites_applied_ms"], ph["all_acknowledged_ms"]
        print(
            f"    {_PHASES.get(name, name):<32}{ph['sites']:>6}{ph['signatures_per_activation']:>8}"
            f"{_ms(applied, 'p50'):>9}{_ms(applied, 'p99'):>9}{_ms(acked, 'p99'):>11}"
            f"{_ms(ph['control_plane_send_ms'], 'p50'):>9}  {ph['complete']}"
        )
    cores = activation.get("fanout_cpu_cores", {})
    print(
        f"    CPU during the fan-out phase [cores]: control plane {cores.get('control_plane')},"
        f" edges {cores.get('edges')}, rest of the machine {cores.get('other')}"
    )
    r = result["ratios"]
    print(
        f"    ratios: all sites / one site p50 {r['fanout_vs_one_site_p50']},"
        f" p99 {r['fanout_vs_one_site_p99']}; per-asset signing / group p50"
        f" {r['per_asset_vs_group_p50']} ({r['signatures_per_asset_vs_group']}x the signatures)"
    )
    t = result["targets"]
    print(
        f"    targets: FFR p99 < 100 ms {t['ffr_met']}; activation p99 < 1 s {t['activation_met']}"
    )
