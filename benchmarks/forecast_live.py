"""``python -m benchmarks.forecast_live``: the planning cycle's live PV forecast, measured.

The control plane's two PV sources on the same rolling horizons:

* **model**: :class:`control_plane.forecast.live.ModelPvForecastSource` exactly as the
  planning cycle runs it, with the model trained as at control-plane start (730 generated
  days at the default site, seed 0), its history read from a real
  :class:`~control_plane.forecast.history.GatedHistory` file and its weather from a real
  :class:`~control_plane.forecast.weather_feed.WeatherForecasts` store (a document with
  GHI = the generated day-ahead clear-sky index times the pvlib clear-sky GHI, and the
  forecast temperature, submitted at the horizon start);
* **climatology**: :class:`control_plane.forecast.live.ClimatologicalPv` (monthly quantiles
  of the clear-sky index, learned from the same 730 generated days).

The truth is a held-out realization the model and the climatology never saw: generated
history with another seed (``--seed``, default 1) over ``--days`` days from 2025-01-01.
Horizons of 96 steps start every ``--every`` days at local 00:00 and 11:00 (so the rolling
horizon spans today and tomorrow), after the first 8 days. Scores: MAE [kW] of the P50
(model) and of the climatological median over all steps; P10 coverage = share of daylight
steps (clear-sky power > 2 % of rated) where the truth is at or above the planned P10
(nominal 0.9); planned energy = sum of P10 over the true energy. Table on stdout, JSON to
``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from control_plane.forecast.features import DAYLIGHT_FRACTION, HORIZON
from control_plane.forecast.generate import generate_history
from control_plane.forecast.history import GatedHistory, QuarterHourRow
from control_plane.forecast.live import ClimatologicalPv, ModelPvForecastSource
from control_plane.forecast.live_inputs import local_midnights
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.weather_feed import WeatherForecasts

ASSET = "bench-pv"
START_HOURS = (0, 11)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=365, help="days of held-out truth")
    p.add_argument("--every", type=int, default=3, help="a horizon pair every n days")
    p.add_argument("--seed", type=int, default=1, help="seed of the held-out truth")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/forecast_live.json"))


def _scores(truth: np.ndarray, mid: np.ndarray, low: np.ndarray, lit: np.ndarray) -> dict[str, Any]:
    return {
        "mae_kw": round(float(np.abs(mid - truth).mean()), 3),
        "mae_daylight_kw": round(float(np.abs(mid - truth)[lit].mean()), 3),
        "p10_coverage": round(float((truth[lit] >= low[lit] - 1e-9).mean()), 3),
        "planned_energy_share": round(float(low.sum() / truth.sum()), 3),
    }


def run(days: int, every: int, seed: int) -> dict[str, Any]:
    site = ForecastSite()
    started = time.perf_counter()
    climate = ClimatologicalPv.learn(site, quantile=0.1)
    t_climate = time.perf_counter() - started
    frame = generate_history(days, seed=seed, site=site, start=dt.date(2025, 1, 1))
    index = pd.DatetimeIndex(frame["ts_utc"])
    ts = np.asarray(index.asi8 // 1_000_000, dtype=np.int64)
    pv = frame["pv_kw"].to_numpy()
    ghi_clear = clear_sky(index, site, frame["nwp_air_temp_c"].to_numpy()).ghi_w_per_m2
    ghi = frame["nwp_clear_sky_index"].to_numpy() * ghi_clear
    temp = frame["nwp_air_temp_c"].to_numpy()
    cs = frame["pv_clearsky_kw"].to_numpy()
    pos = {int(t): i for i, t in enumerate(ts)}
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("truth", "p50", "p10", "cm", "c10", "lit")}
    part: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as d:
        history = GatedHistory(Path(d) / "history.db", retention_days=3650)
        history.write(
            [QuarterHourRow(ASSET, int(t), float(v), 1) for t, v in zip(ts, pv, strict=True)],
            int(ts[-1]),
        )
        weather = WeatherForecasts(Path(d) / "weather.db", site)
        source = ModelPvForecastSource(climate, history, weather, quantile=0.1)
        t0 = time.perf_counter()
        source.train()
        t_train = time.perf_counter() - t0
        calls, t_calls = 0, 0.0
        first_day = index.tz_convert(site.tz)[0].date()
        for day in range(8, days - 2, every):
            for hour in START_HOURS:
                start = pd.Timestamp(first_day + dt.timedelta(days=day)).tz_localize(site.tz)
                start_ms = int((start + pd.Timedelta(hours=hour)).tz_convert("UTC").value // 10**6)
                i = pos[start_ms]
                m0, m1 = local_midnights(start_ms, site.tz)
                lo, hi = pos[m0], min(pos[m1] + HORIZON, len(ts))
                doc = {
                    "issued_ms": start_ms,
                    "steps": [
                        {
                            "ts_ms": int(ts[k]),
                            "ghi_w_per_m2": float(ghi[k]),
                            "air_temp_c": float(temp[k]),
                        }
                        for k in range(lo, hi)
                    ],
                }
                result = weather.submit(doc, start_ms)
                assert result.accepted, result.message
                c0 = time.perf_counter()
                prof = source.profiles(start_ms, {ASSET: site.pv_rated_kw})[ASSET]
                t_calls += time.perf_counter() - c0
                calls += 1
                assert prof.source == "model", prof.source
                c10, cm = climate.profile(start_ms, site.pv_rated_kw)
                sl = slice(i, i + HORIZON)
                out["truth"].append(pv[sl])
                out["p50"].append(prof.median)
                out["p10"].append(prof.plan)
                out["cm"].append(np.asarray(cm))
                out["c10"].append(np.asarray(c10))
                out["lit"].append(cs[sl] > DAYLIGHT_FRACTION * site.pv_rated_kw)
                part.append(ts[sl] >= m1)
        history.close()
        weather.close()
    a = {k: np.concatenate(v) for k, v in out.items()}
    tomorrow = np.concatenate(part)
    lit = a["lit"].astype(bool)
    res: dict[str, Any] = {
        "model": _scores(a["truth"], a["p50"], a["p10"], lit),
        "climatology": _scores(a["truth"], a["cm"], a["c10"], lit),
        "model_today": _scores(
            a["truth"][~tomorrow], a["p50"][~tomorrow], a["p10"][~tomorrow], lit[~tomorrow]
        ),
        "model_tomorrow": _scores(
            a["truth"][tomorrow], a["p50"][tomorrow], a["p10"][tomorrow], lit[tomorrow]
        ),
    }
    ref = res["climatology"]["mae_kw"]
    res["skill_vs_climatology"] = round(1.0 - res["model"]["mae_kw"] / ref, 3)
    res["horizons"] = calls
    res["ms_per_call"] = round(1000 * t_calls / max(calls, 1), 1)
    res["train_s"] = round(t_train, 2)
    res["climatology_learn_s"] = round(t_climate, 2)
    res["settings"] = {"days": days, "every": every, "seed": seed, "start_hours": START_HOURS}
    return res


def run_cli(args: argparse.Namespace) -> int:
    res = run(args.days, args.every, args.seed)
    result = {
        "benchmark": "forecast_live",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **res,
    }
    print(f"{res['horizons']} horizons of 96 steps, PV rated 100 kW")
    print(f"{'forecast':<22} {'MAE kW':>8} {'MAE day':>8} {'P10 cov':>8} {'P10 energy':>10}")
    for name in ("model", "model_today", "model_tomorrow", "climatology"):
        r = res[name]
        print(
            f"{name:<22} {r['mae_kw']:>8.3f} {r['mae_daylight_kw']:>8.3f} "
            f"{r['p10_coverage']:>8.3f} {r['planned_energy_share']:>10.3f}"
        )
    print(f"skill of the P50 vs the climatological median: {res['skill_vs_climatology']:+.3f}")
    print(f"per call {res['ms_per_call']} ms; training {res['train_s']} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run_cli(parser.parse_args()))
