"""SOC commands: ``alerts list|show|ack`` (local, on the state directory) and
``api get|post`` (the REST API over mutual TLS).

``alerts`` reads ``alerts.db`` directly: it is the administrator's path on the
control-plane host, where file permissions are the access control. An
acknowledgement there is recorded as ``local:<analyst>`` (a name the
administrator typed, never a SPIFFE ID, which only a certificate proves) and
audited. Analysts elsewhere use the API with their own certificate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from control_plane.alerts import Alert, AlertBook
from control_plane.api.client import DEFAULT_URL, ClientFiles, call
from control_plane.api.routes import ALERT_STATUSES
from control_plane.app import StatePaths
from control_plane.assets.model import ID_PATTERN
from control_plane.cli.admin import DEFAULT_STATE
from security.audit_log import AuditLog
from security.clock import SystemClock
from security.identity import validate_name
from security.refusals import GridfortError

LOCAL_PREFIX = "local:"


def register(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="FDI gate alerts (local, on the state directory)")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    p = alerts_sub.add_parser("list", help="alerts, newest activity first")
    _state(p)
    p.add_argument("--status", choices=ALERT_STATUSES)
    p.add_argument("--site", type=_id, help="only this site")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=alerts_list)
    p = alerts_sub.add_parser("show", help="one alert with its latest evidence (JSON)")
    _state(p)
    p.add_argument("alert_id", type=_id)
    p.set_defaults(handler=alerts_show)
    p = alerts_sub.add_parser("ack", help="acknowledge an alert (audited)")
    _state(p)
    p.add_argument("alert_id", type=_id)
    p.add_argument("--analyst", required=True, type=_name, help="who acknowledges (a name)")
    p.set_defaults(handler=alerts_ack)

    api = sub.add_parser("api", help="call the REST API with a client certificate")
    api_sub = api.add_subparsers(dest="api_command", metavar="ACTION", required=True)
    p = api_sub.add_parser("get", help="GET a path, e.g. /v1/alerts?status=open")
    _client(p)
    p.set_defaults(handler=api_get)
    p = api_sub.add_parser("post", help="POST a path, e.g. /v1/alerts/ID/ack")
    _client(p)
    p.add_argument(
        "--json", dest="body", default=None, help='request body, e.g. {"note": "..."}, or @FILE'
    )
    p.set_defaults(handler=api_post)
    p = api_sub.add_parser("put", help="PUT a path, e.g. /v1/weather --json @forecast.json")
    _client(p)
    p.add_argument("--json", dest="body", required=True, help="request body, or @FILE")
    p.set_defaults(handler=api_put)


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE, help="control-plane state directory"
    )


def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="/v1/...")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the API (default {DEFAULT_URL})")
    p.add_argument(
        "--cert-dir", type=Path, help="directory from 'gridfort ca issue' (tls.pem, tls.key, ...)"
    )
    p.add_argument("--cert", type=Path, help="client certificate chain PEM")
    p.add_argument("--key", type=Path, help="client private key PEM")
    p.add_argument("--bundle", type=Path, help="trust bundle PEM (the root CA)")


def _id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value[:80]!r} must match {ID_PATTERN.pattern}")
    return value


def _name(value: str) -> str:
    try:
        return validate_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _book(state_dir: Path) -> AlertBook | None:
    """The alert book of a control-plane state directory; None if no alert was ever raised."""
    paths = StatePaths(state_dir)
    if not paths.ca.exists():
        raise GridfortError(f"{state_dir}: not a control-plane state directory (no CA)")
    if not paths.alerts_db.exists():
        return None
    return AlertBook(paths.alerts_db, SystemClock())


def _iso(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(alerts: list[Alert]) -> str:
    rows = [("ALERT", "STATUS", "SITE", "DETECTOR", "MEAS", "SCORE/THRESH", "LAST (UTC)")]
    rows += [
        (
            a.alert_id,
            a.status,
            a.site_id,
            a.detector,
            str(a.measurements),
            f"{a.max_score:.3g}/{a.threshold:.3g}",
            _iso(a.last_ms),
        )
        for a in alerts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def alerts_list(args: argparse.Namespace) -> int:
    book = _book(args.state_dir)
    alerts = [] if book is None else book.list(status=args.status, site_id=args.site)
    if args.json:
        print(json.dumps([a.to_json() for a in alerts], indent=2))
    elif alerts:
        print(_table(alerts))
    else:
        print("no alerts")
    return 0


def alerts_show(args: argparse.Namespace) -> int:
    book = _book(args.state_dir)
    if book is None:
        raise GridfortError(f"no alert {args.alert_id!r}")
    print(json.dumps(book.get(args.alert_id).to_json(), indent=2))
    return 0


def alerts_ack(args: argparse.Namespace) -> int:
    book = _book(args.state_dir)
    if book is None:
        raise GridfortError(f"no alert {args.alert_id!r}")
    alert = book.get(args.alert_id)
    if alert.status == "acknowledged":
        print(
            f"alert {alert.alert_id} was already acknowledged by {alert.acknowledged_by} "
            f"at {_iso(alert.acknowledged_ms)}"
        )
        return 0
    clock = SystemClock()
    with AuditLog(StatePaths(args.state_dir).audit_log, clock) as audit:
        book = AlertBook(StatePaths(args.state_dir).alerts_db, clock, audit)
        alert = book.acknowledge(args.alert_id, LOCAL_PREFIX + args.analyst)
    print(f"alert {alert.alert_id} acknowledged by {alert.acknowledged_by}")
    return 0


def _files(args: argparse.Namespace) -> ClientFiles:
    base = ClientFiles.in_directory(args.cert_dir) if args.cert_dir else None
    cert = args.cert or (base.cert if base else None)
    key = args.key or (base.key if base else None)
    bundle = args.bundle or (base.bundle if base else None)
    if cert is None or key is None or bundle is None:
        raise GridfortError("give --cert-dir, or all of --cert, --key and --bundle")
    return ClientFiles(cert, key, bundle)


def _answer(status: int, body: bytes) -> int:
    text = body.decode("utf-8", errors="replace")
    if 200 <= status < 300:
        try:
            print(json.dumps(json.loads(text), indent=2))
        except ValueError:
            print(text)
        return 0
    print(text)
    print(f"gridfort: refused: HTTP {status}", file=sys.stderr)
    return 3


def api_get(args: argparse.Namespace) -> int:
    answer = call(args.url, "GET", args.path, _files(args))
    return _answer(answer.status, answer.body)


def _body(text: str | None) -> bytes | None:
    """``--json``: the body itself, or ``@FILE`` to read it from a file."""
    if text is None:
        return None
    if not text.startswith("@"):
        return text.encode("utf-8")
    path = Path(text[1:])
    try:
        return path.read_bytes()
    except OSError as e:
        raise GridfortError(f"--json {text}: cannot read {path} ({e.strerror})") from None


def api_post(args: argparse.Namespace) -> int:
    answer = call(args.url, "POST", args.path, _files(args), body=_body(args.body))
    return _answer(answer.status, answer.body)


def api_put(args: argparse.Namespace) -> int:
    answer = call(args.url, "PUT", args.path, _files(args), body=_body(args.body))
    return _answer(answer.status, answer.body)
