"""``gridfort alerts`` (local, on the state directory) and ``gridfort api`` (mutual TLS client).

The parser is built here from the modules' ``register`` functions, with the
real handlers: ``ca issue`` writes the SOC certificate, ``api get|post`` calls
the live server (blocking, so in a thread while the server runs on the loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from control_plane.cli import admin
from control_plane.cli import alerts as alerts_cli
from control_plane.embedded import EmbeddedSystem
from security.refusals import GridfortError
from tests.api.conftest import BatteryEdge, EnrollSite, audit_records
from tests.conftest import TRUST_DOMAIN


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gridfort")
    sub = parser.add_subparsers(dest="command", required=True)
    admin.register(sub)
    alerts_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


async def raise_alert(system: EmbeddedSystem, enroll_site: EnrollSite) -> str:
    edge = BatteryEdge(system, await enroll_site("s1"))
    try:
        await edge.honest()
        await edge.inflate_soc()
    finally:
        await edge.close()
    return system.control_plane.alerts.list()[0].alert_id


async def test_alerts_list_show_ack_on_the_state_directory(
    system: EmbeddedSystem, enroll_site: EnrollSite, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(system.state_dir)
    alert_id = await raise_alert(system, enroll_site)

    assert run(["alerts", "list", "--state-dir", state, "--status", "open"]) == 0
    table = capsys.readouterr().out
    assert alert_id in table and "temporal:soc_balance" in table
    assert run(["alerts", "list", "--state-dir", state, "--json"]) == 0
    assert [a["alert_id"] for a in json.loads(capsys.readouterr().out)] == [alert_id]
    assert run(["alerts", "show", alert_id, "--state-dir", state]) == 0
    assert json.loads(capsys.readouterr().out)["site_id"] == "s1"

    assert run(["alerts", "ack", alert_id, "--analyst", "carol", "--state-dir", state]) == 0
    assert "local:carol" in capsys.readouterr().out
    assert system.control_plane.alerts.get(alert_id).acknowledged_by == "local:carol"
    assert run(["alerts", "ack", alert_id, "--analyst", "dave", "--state-dir", state]) == 0
    assert "already acknowledged by local:carol" in capsys.readouterr().out
    acks = [r for r in audit_records(system) if r["event"] == "alert_acknowledged"]
    assert [r["identity"] for r in acks] == ["local:carol"]

    with pytest.raises(SystemExit):  # a SPIFFE ID is not a name one can type
        run(["alerts", "ack", alert_id, "--analyst", "spiffe://x/soc/a", "--state-dir", state])
    with pytest.raises(GridfortError):
        run(["alerts", "show", "feedface", "--state-dir", state])


def test_alerts_refuse_a_directory_that_is_not_a_state_directory(tmp_path: Path) -> None:
    with pytest.raises(GridfortError, match="not a control-plane state directory"):
        run(["alerts", "list", "--state-dir", str(tmp_path)])
    assert not (tmp_path / "alerts.db").exists()


async def test_api_get_and_post_with_an_issued_soc_certificate(
    system: EmbeddedSystem,
    enroll_site: EnrollSite,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alert_id = await raise_alert(system, enroll_site)
    certs = tmp_path / "alice"
    state = str(system.state_dir)
    soc_id = f"spiffe://{TRUST_DOMAIN}/soc/alice"
    assert run(["ca", "issue", soc_id, "--out-dir", str(certs), "--state-dir", state]) == 0
    capsys.readouterr()
    url = system.api_url

    code = await asyncio.to_thread(
        run, ["api", "get", "/v1/alerts?status=open", "--url", url, "--cert-dir", str(certs)]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["alerts"][0]["alert_id"] == alert_id

    code = await asyncio.to_thread(
        run,
        ["api", "post", f"/v1/alerts/{alert_id}/ack", "--json", '{"note": "seen"}',
         "--url", url, "--cert", str(certs / "tls.pem"), "--key", str(certs / "tls.key"),
         "--bundle", str(certs / "bundle.pem")],
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["acknowledged_by"] == soc_id

    code = await asyncio.to_thread(
        run, ["api", "get", "/v1/status", "--url", url, "--cert-dir", str(certs)]
    )
    assert code == 3  # a SOC analyst is not an operator
    assert json.loads(capsys.readouterr().out)["reason"] == "ROLE_NOT_ALLOWED"
