"""The pure NATS config: subjects, permissions, the rendered server config, the CLI."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path

import pytest

from control_plane.app import init_state
from control_plane.assets.registry import AssetRegistry
from control_plane.cli import nats as nats_cli
from control_plane.transports.nats_config import (
    STREAM_SUBJECTS,
    ClusterSettings,
    NatsServerSettings,
    command_subject,
    control_plane_permissions,
    edge_permissions,
    inbox_prefix,
    partition_consumer,
    partition_filter,
    partition_transform,
    render_config,
    site_token,
    telemetry_subject,
    users_for,
    worker_subject,
)
from control_plane.transports.nats_server import nats_server_binary
from security.clock import SystemClock
from security.identity import Role, SpiffeId
from security.refusals import ConfigError

DOMAIN = "gridfort.test"


def settings(tmp_path: Path, **kw: object) -> NatsServerSettings:
    args: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 4222,
        "server_cert_file": tmp_path / "server.cert.pem",
        "server_key_file": tmp_path / "server.key.pem",
        "ca_file": tmp_path / "bundle.pem",
        "store_dir": tmp_path / "jetstream",
        "users": users_for(DOMAIN, ["s1", "s2"], ["cp-1"]),
        "monitor_port": 8222,
    }
    args.update(kw)
    return NatsServerSettings(**args)  # type: ignore[arg-type]


def test_subjects_are_one_token_per_site() -> None:
    assert telemetry_subject("s1") == "gridfort.v1.telemetry.s1"
    assert command_subject("s1") == "gridfort.v1.commands.s1"
    # '.' would split the token: site "a" must not cover site "a.b"'s subjects or inbox
    assert site_token("a.b") == "a~b"
    assert telemetry_subject("a.b") == "gridfort.v1.telemetry.a~b"
    assert STREAM_SUBJECTS == ("gridfort.v1.telemetry.*",)


@pytest.mark.parametrize("bad", ["", "a b", "a*", "a>", "..", "x" * 65])
def test_invalid_site_ids_never_become_subjects(bad: str) -> None:
    with pytest.raises(ValueError):
        telemetry_subject(bad)


def test_edge_permissions_are_exactly_its_own_subjects() -> None:
    p = edge_permissions("s1")
    assert p.publish == ("gridfort.v1.telemetry.s1",)
    assert p.subscribe == ("gridfort.v1.commands.s1", "_INBOX.edge.s1.>")
    assert inbox_prefix(SpiffeId(DOMAIN, Role.EDGE, "s1")) == "_INBOX.edge.s1"


def test_control_plane_cannot_delete_or_purge_the_stream() -> None:
    p = control_plane_permissions("cp-1")
    assert not any(w in s for s in p.publish for w in ("DELETE", "PURGE", ">.", "$JS.API.>"))
    assert "$JS.API.CONSUMER.MSG.NEXT.GRIDFORT_TELEMETRY.*" in p.publish
    assert "$JS.ACK.GRIDFORT_TELEMETRY.>" in p.publish
    # its own inbox, and the other ingest workers' heartbeats; never telemetry itself
    assert p.subscribe == ("_INBOX.cp.cp-1.>", "gridfort.v1.workers.*")
    assert "gridfort.v1.workers.*" in p.publish


def test_edges_get_nothing_of_the_partition_and_worker_subjects() -> None:
    p = edge_permissions("s1")
    assert not any(s.startswith(("gridfort.v1.ingest", "gridfort.v1.workers")) for s in p.publish)
    assert not any(s.startswith(("gridfort.v1.ingest", "gridfort.v1.workers")) for s in p.subscribe)


def test_partition_scheme() -> None:
    assert partition_transform(8) == (
        "gridfort.v1.telemetry.*",
        "gridfort.v1.ingest.{{partition(8,1)}}.{{wildcard(1)}}",
    )
    assert partition_filter(3) == "gridfort.v1.ingest.3.*"
    assert partition_consumer(3) == "ingest-p3"
    assert worker_subject("cp-1.a") == "gridfort.v1.workers.cp-1~a"
    with pytest.raises(ConfigError, match="partitions"):
        partition_transform(0)


def test_cluster_block_authenticates_routes_as_the_broker_identity(tmp_path: Path) -> None:
    cluster = ClusterSettings(
        name="gridfort",
        host="127.0.0.1",
        port=6222,
        routes=("tls://127.0.0.1:6223", "tls://127.0.0.1:6224"),
        route_user="spiffe://gridfort.test/control-plane/nats",
    )
    text = render_config(settings(tmp_path, cluster=cluster, server_name="gridfort-nats-1"))
    block = text[text.index("cluster {") :]
    assert 'name: "gridfort"' in block and "port: 6222" in block
    assert '"tls://127.0.0.1:6224"' in block
    assert "verify_and_map: true" in block
    assert 'authorization { user: "spiffe://gridfort.test/control-plane/nats" }' in block
    assert 'server_name: "gridfort-nats-1"' in text
    assert "password" not in block


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a b"),
        ("port", 0),
        ("routes", ("127.0.0.1:6223",)),
        ("routes", ('tls://x:1"',)),
        ("route_user", "nats"),
    ],
)
def test_invalid_cluster_settings_name_the_field(field: str, value: object) -> None:
    args: dict[str, object] = {
        "name": "gridfort",
        "host": "127.0.0.1",
        "port": 6222,
        "routes": (),
        "route_user": "spiffe://gridfort.test/control-plane/nats",
    }
    args[field] = value
    with pytest.raises(ConfigError, match="cluster"):
        ClusterSettings(**args)  # type: ignore[arg-type]


def test_operators_and_soc_have_no_inbox_and_no_user() -> None:
    with pytest.raises(ValueError, match="no NATS inbox"):
        inbox_prefix(SpiffeId(DOMAIN, Role.OPERATOR, "alice"))
    uris = [u.spiffe_id.uri for u in users_for(DOMAIN, ["s1"], ["cp-1"])]
    assert uris == [
        "spiffe://gridfort.test/control-plane/cp-1",
        "spiffe://gridfort.test/edge/s1",
    ]


def test_rendered_config_maps_certificates_and_denies_by_default(tmp_path: Path) -> None:
    text = render_config(settings(tmp_path))
    assert "verify_and_map: true" in text
    assert "no_auth_user" not in text
    assert "max_payload: 1048576" in text
    assert 'http: "127.0.0.1:8222"' in text
    assert f'store_dir: "{tmp_path / "jetstream"}"' in text
    assert 'sync_interval: "2m"' in text
    assert 'user: "spiffe://gridfort.test/edge/s1"' in text
    assert '"gridfort.v1.telemetry.s1"' in text
    assert "password" not in text and "token" not in text


def test_random_ports_and_disabled_monitoring(tmp_path: Path) -> None:
    text = render_config(settings(tmp_path, port=0, monitor_port=None))
    assert "port: -1" in text
    assert "http" not in text


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("sync_interval", "sometimes", "sync_interval"),
        ("max_payload_bytes", 100, "max_payload_bytes"),
        ("store_dir", Path('/tmp/a"b'), "store_dir"),
        ("host", "0.0.0.0\ninclude x", "host"),
        ("port", 70000, "port"),
        ("users", (), "users"),
    ],
)
def test_invalid_settings_name_the_field(
    tmp_path: Path, field: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        settings(tmp_path, **{field: value})


def test_cli_prints_the_config_with_registry_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init_state(state, DOMAIN, SystemClock())
    registry = AssetRegistry(state / "registry.db")
    registry.add_site("site-a", 0)
    registry.close()
    parser = argparse.ArgumentParser(prog="gridfort")
    nats_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["nats", "config", "--state-dir", str(state), "--port", "4333"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "verify_and_map: true" in out
    assert 'user: "spiffe://gridfort.test/edge/site-a"' in out
    assert 'user: "spiffe://gridfort.test/control-plane/cp-1"' in out
    assert "port: 4333" in out
    assert str((state / "nats" / "jetstream").resolve()) in out


def test_cli_config_with_tls_files_is_accepted_by_nats_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init_state(state, DOMAIN, SystemClock())
    parser = argparse.ArgumentParser(prog="gridfort")
    nats_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["nats", "config", "--state-dir", str(state), "--write-tls", "--dns-name", "nats.example"]
    )
    assert args.handler(args) == 0
    conf = tmp_path / "nats.conf"
    conf.write_text(capsys.readouterr().out)
    assert stat.S_IMODE((state / "nats" / "server.key.pem").stat().st_mode) == 0o600
    check = subprocess.run(
        [str(nats_server_binary()), "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


def test_cli_cluster_node_config_is_accepted_by_nats_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init_state(state, DOMAIN, SystemClock())
    parser = argparse.ArgumentParser(prog="gridfort")
    nats_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["nats", "config", "--state-dir", str(state), "--write-tls",
         "--server-name", "nats-2", "--cluster-port", "6222",
         "--route", "tls://10.0.0.5:6222", "--route", "tls://10.0.0.7:6222"]
    )  # fmt: skip
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert 'server_name: "nats-2"' in text and "port: 6222" in text
    assert 'authorization { user: "spiffe://gridfort.test/control-plane/nats" }' in text
    conf = tmp_path / "nats.conf"
    conf.write_text(text)
    check = subprocess.run(
        [str(nats_server_binary()), "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
