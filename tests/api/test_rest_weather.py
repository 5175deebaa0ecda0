"""The weather feed over REST and the live PV model in the running control plane: an
operator PUTs a day-ahead forecast, the planning cycle plans the PV plant on the trained
model from its gated history; hostile documents are refused precisely and store nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from control_plane.api.openapi import openapi_document
from control_plane.embedded import EmbeddedSystem
from control_plane.forecast.generate import generate_history
from control_plane.forecast.history import QuarterHourRow
from control_plane.forecast.live import ModelPvForecastSource
from control_plane.forecast.live_inputs import local_midnights, train_pv_model
from control_plane.forecast.solar import clear_sky
from control_plane.forecast.train import Forecaster, TrainConfig
from control_plane.planning import PlanningConfig
from security.identity import Role
from security.refusals import GridfortError
from tests.api.conftest import BatteryEdge, Clients, EnrollSite
from tests.api.test_rest_openapi import conforms
from tests.conftest import TRUST_DOMAIN

QH = 900_000
CONFIG = PlanningConfig(energy_increment_kw=0, reserve_increment_kw=0)
SITE = CONFIG.forecast_site()


@pytest.fixture(scope="module")
def model() -> Forecaster:
    """A small model (seconds): the app trains the full one in the background."""
    return train_pv_model(SITE, days=120, config=TrainConfig(max_epochs=15, patience=5, seed=0))


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    sys_ = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, planning=CONFIG
    )
    await sys_.start()
    try:
        yield sys_
    finally:
        await sys_.stop()


def weather_document(now_ms: int) -> dict[str, Any]:
    """Generated weather for this local day and the next, as a provider would send it."""
    m0, m1 = local_midnights(now_ms - now_ms % QH, SITE.tz)
    start = dt.datetime.fromtimestamp(m0 / 1000, ZoneInfo(SITE.tz)).date()
    frame = generate_history(3, seed=9, site=SITE, start=start)
    index = pd.DatetimeIndex(frame["ts_utc"])
    ts = index.asi8 // 1_000_000
    keep = (ts >= m0) & (ts < m1 + 96 * QH)
    sky = clear_sky(index[keep], SITE, np.full(int(keep.sum()), 15.0)).ghi_w_per_m2
    ghi = frame["nwp_clear_sky_index"].to_numpy()[keep] * sky
    temp = frame["nwp_air_temp_c"].to_numpy()[keep]
    steps = [
        {"ts_ms": int(t), "ghi_w_per_m2": round(float(g), 1), "air_temp_c": round(float(c), 1)}
        for t, g, c in zip(ts[keep], ghi, temp, strict=True)
    ]
    return {"issued_ms": now_ms - 60_000, "steps": steps}


def fill_history(system: EmbeddedSystem, asset: str, rated_kw: float, now_ms: int) -> None:
    """Eight days of gated PV history (what the commit observer writes in operation)."""
    start = (dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC) - dt.timedelta(days=9)).date()
    frame = generate_history(9, seed=4, site=SITE, start=start)
    ts = pd.DatetimeIndex(frame["ts_utc"]).asi8 // 1_000_000
    kw = frame["pv_kw"].to_numpy() * rated_kw / SITE.pv_rated_kw
    rows = [QuarterHourRow(asset, int(t), float(v), 1) for t, v in zip(ts, kw, strict=True)]
    history = system.control_plane.history
    assert history is not None
    history.write([r for r in rows if r.qh_start_ms < now_ms - now_ms % QH], now_ms)


async def test_an_operator_feeds_the_weather_and_pv_is_planned_on_the_model(
    system: EmbeddedSystem,
    enroll_site: EnrollSite,
    clients: Clients,
    model: Forecaster,
) -> None:
    cp = system.control_plane
    assert cp.planning is not None and isinstance(cp.planning_pv_source, ModelPvForecastSource)
    now = system.clock.now_ms()
    fill_history(system, "s1-pv", 10.0, now)
    operator = clients(Role.OPERATOR, "bob")
    document = weather_document(now)
    body = json.dumps(document, indent=2).encode()  # pretty, as a provider may send it
    assert len(body) > 16 << 10  # larger than the API's default body limit: this route's own
    answer = await operator.request(
        "PUT", "/v1/weather", body=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 200, answer.body
    assert answer.json()["steps"] == len(document["steps"])
    conforms(openapi_document(), "PUT", "/v1/weather", answer)
    assert cp._pv_train_task is not None  # the feed is connected: the model is trained
    cp.planning_pv_source.model = model  # (the small one, instead of waiting for it)
    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        await cp.planning.plan_now()
    finally:
        await edge.close()
    plan = (await operator.get("/v1/plan")).json()
    assert plan["pv_forecast"]["model"] == "ready"
    assert plan["pv_forecast"]["sources"] == {"model": 1}, cp.planning_pv_source.last_sources
    conforms(openapi_document(), "GET", "/v1/plan", await operator.get("/v1/plan"))
    records = [json.loads(line) for line in cp.paths.audit_log.read_text().splitlines()]
    fed = [r for r in records if r["event"] == "weather_forecast"]
    assert fed[-1]["decision"] == "allow" and fed[-1]["identity"].endswith("/operator/bob")


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda d: d["steps"][1].update(ghi_w_per_m2=2000.0), "OUT_OF_RANGE"),
        (lambda d: d["steps"][1].update(ts_ms=d["steps"][1]["ts_ms"] + 1), "NOT_ALIGNED"),
        (lambda d: d["steps"].insert(2, dict(d["steps"][1])), "DUPLICATE_STEP"),
        (lambda d: d["steps"].append(dict(d["steps"][0])), "NOT_INCREASING"),
        (lambda d: d.update(issued_ms=d["issued_ms"] + 3_600_000), "ISSUED_IN_FUTURE"),
        (lambda d: d["steps"][0].update(air_temp_c=True), "MALFORMED"),
        (lambda d: d.update(extra=1), "MALFORMED"),
        (lambda d: d.update(steps=[]), "EMPTY"),
    ],
)
async def test_hostile_weather_is_refused_precisely_and_stores_nothing(
    system: EmbeddedSystem, clients: Clients, mutate: Any, code: str
) -> None:
    cp = system.control_plane
    assert cp.weather is not None
    document = weather_document(system.clock.now_ms())
    document["steps"] = document["steps"][:8]
    mutate(document)
    answer = await clients(Role.OPERATOR, "bob").request(
        "PUT", "/v1/weather", body=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert (answer.status, answer.reason) == (400, "MALFORMED_REQUEST"), answer.body
    assert answer.json()["message"].startswith(code)
    conforms(openapi_document(), "PUT", "/v1/weather", answer)
    assert cp.weather.stored_steps() == 0 and cp._pv_train_task is None
    records = [json.loads(line) for line in cp.paths.audit_log.read_text().splitlines()]
    denied = [r for r in records if r["event"] == "weather_forecast"]
    assert denied[-1]["decision"] == "deny" and denied[-1]["reason"] == code


async def test_weather_is_for_operators_bounded_in_size_and_json(
    system: EmbeddedSystem, clients: Clients
) -> None:
    doc = b'{"issued_ms": 0, "steps": []}'
    soc = await clients(Role.SOC, "alice").request(
        "PUT", "/v1/weather", body=doc, headers={"Content-Type": "application/json"}
    )
    assert (soc.status, soc.reason) == (403, "ROLE_NOT_ALLOWED")
    huge = b'{"issued_ms": 0, "steps": [' + b" " * (300 << 10) + b"]}"
    big = await clients(Role.OPERATOR, "bob").request(
        "PUT", "/v1/weather", body=huge, headers={"Content-Type": "application/json"}
    )
    assert (big.status, big.reason) == (413, "OVERSIZED")
    nan = b'{"issued_ms": 0, "steps": [{"ts_ms": 0, "ghi_w_per_m2": NaN, "air_temp_c": 1}]}'
    bad = await clients(Role.OPERATOR, "bob").request(
        "PUT", "/v1/weather", body=nan, headers={"Content-Type": "application/json"}
    )
    assert (bad.status, bad.reason) == (400, "MALFORMED_REQUEST")
    assert system.control_plane.weather is not None
    assert system.control_plane.weather.stored_steps() == 0


async def test_the_cli_puts_a_forecast_file_with_an_operator_certificate(
    system: EmbeddedSystem, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.api.test_alerts_cli import run

    certs = tmp_path / "bob"
    state = str(system.state_dir)
    operator = f"spiffe://{TRUST_DOMAIN}/operator/bob"
    assert run(["ca", "issue", operator, "--out-dir", str(certs), "--state-dir", state]) == 0
    document = weather_document(system.clock.now_ms())
    document["steps"] = document["steps"][:16]
    path = tmp_path / "forecast.json"
    path.write_text(json.dumps(document))
    capsys.readouterr()
    argv = ["api", "put", "/v1/weather", "--json", f"@{path}", "--url", system.api_url,
            "--cert-dir", str(certs)]  # fmt: skip
    assert await asyncio.to_thread(run, argv) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 16
    assert system.control_plane.weather is not None
    assert system.control_plane.weather.stored_steps() == 16
    with pytest.raises(GridfortError, match="cannot read"):
        run([*argv[:4], f"@{tmp_path / 'missing.json'}", *argv[5:]])
