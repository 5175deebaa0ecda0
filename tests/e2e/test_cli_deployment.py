"""The operator's path, with the real CLI in separate processes: CA, site, control plane,
token, enrollment, edge run against a real SunSpec device, audit verification."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from security.clock import SystemClock

GRIDFORT = [sys.executable, "-m", "control_plane.cli.main"]
DOMAIN = "gridfort.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(*args: str, check: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *GRIDFORT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    code = proc.returncode
    assert code is not None
    if check:
        assert code == 0, err.decode()
    return code, out.decode(), err.decode()


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *GRIDFORT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode()


async def wait_port(port: int, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_operator_deploys_a_site_with_the_cli(tmp_path: Path) -> None:
    state, edge_dir = tmp_path / "state", tmp_path / "edge"
    await run("ca", "init", "--state-dir", str(state), "--trust-domain", DOMAIN)
    assert (state / "ca").stat().st_mode & 0o777 == 0o700
    await run(
        "site",
        "add",
        "--state-dir",
        str(state),
        "site-9",
        "--asset",
        "site-9-pv:pv_inverter:10",
        "--asset",
        "site-9-bat:battery:5:10",
    )
    link, boot = free_port(), free_port()
    cp = await start(
        "control-plane",
        "run",
        "--state-dir",
        str(state),
        "--trust-domain",
        DOMAIN,
        "--listen",
        f"127.0.0.1:{link}",
        "--bootstrap-listen",
        f"127.0.0.1:{boot}",
        "--api-listen",
        "127.0.0.1:0",
    )
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=SystemClock(),
    )
    port = await sim.start()
    edge: asyncio.subprocess.Process | None = None
    try:
        await wait_port(boot)
        _, token, _ = await run("token", "issue", "--state-dir", str(state), "--site", "site-9")
        _, bundle, _ = await run("ca", "bundle", "--state-dir", str(state))
        (tmp_path / "bundle.pem").write_text(bundle)
        await run(
            "edge",
            "enroll",
            "--edge-dir",
            str(edge_dir),
            "--site",
            "site-9",
            "--token",
            token.strip(),
            "--bootstrap",
            f"127.0.0.1:{boot}",
            "--trust-bundle",
            str(tmp_path / "bundle.pem"),
            "--trust-domain",
            DOMAIN,
        )
        assert (edge_dir / "tls.key").stat().st_mode & 0o777 == 0o600
        assert (edge_dir / "signing.key").stat().st_mode & 0o777 == 0o600
        # the token was single use
        code, _, err = await run(
            "edge",
            "enroll",
            "--edge-dir",
            str(tmp_path / "e2"),
            "--site",
            "site-9",
            "--token",
            token.strip(),
            "--bootstrap",
            f"127.0.0.1:{boot}",
            "--trust-bundle",
            str(tmp_path / "bundle.pem"),
            "--trust-domain",
            DOMAIN,
            check=False,
        )
        assert code != 0 and "TOKEN_ALREADY_USED" in err and "Traceback" not in err
        (tmp_path / "edge.toml").write_text(
            f'site_id = "site-9"\nedge_dir = "{edge_dir}"\n'
            f'endpoints = ["127.0.0.1:{link}"]\nsample_interval_s = 0.2\n'
            f'[[devices]]\nasset_id = "site-9-pv"\nkind = "pv_inverter"\nprotocol = "sunspec"\n'
            f'address = "127.0.0.1:{port}"\nunit_id = 1\n'
            f'[[devices]]\nasset_id = "site-9-bat"\nkind = "battery"\nprotocol = "sunspec"\n'
            f'address = "127.0.0.1:{port}"\nunit_id = 2\n'
        )
        edge = await start("edge", "run", "--config", str(tmp_path / "edge.toml"))
        committed = 0
        for _ in range(150):
            await asyncio.sleep(0.1)
            with sqlite3.connect(state / "telemetry.db") as db:
                committed = db.execute(
                    "SELECT COUNT(*) FROM batches WHERE site_id = 'site-9'"
                ).fetchone()[0]
            if committed >= 5:
                break
        assert committed >= 5
    finally:
        if edge is not None:
            await stop(edge)
        cp_err = await stop(cp)
        await sim.stop()
    assert "Traceback" not in cp_err
    code, out, _ = await run("audit", "verify", str(state / "audit.jsonl"))
    assert code == 0 and "OK" in out


async def test_cli_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, _, err = await run(
        "token", "issue", "--state-dir", str(state), "--site", "x", check=False
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    await run("ca", "init", "--state-dir", str(state), "--trust-domain", DOMAIN)
    code, _, err = await run("ca", "init", "--state-dir", str(state), check=False)
    assert code == 2 and "Traceback" not in err
    code, _, err = await run(
        "token", "issue", "--state-dir", str(state), "--site", "nope", check=False
    )
    assert code == 2 and "not registered" in err
    code, _, err = await run(
        "site", "add", "--state-dir", str(state), "s1", "--asset", "bad", check=False
    )
    assert code == 2 and "ID:KIND:RATED_KW" in err
    code, _, err = await run(
        "ca", "revoke", "--state-dir", str(state), "not-a-spiffe-id", check=False
    )
    assert code == 2 and "Traceback" not in err
    code, out, _ = await run("--help")
    assert code == 0 and "demo" in out
    env_ok = os.environ.get("PATH") is not None
    assert env_ok
