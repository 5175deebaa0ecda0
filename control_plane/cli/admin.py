"""Operator commands: ``ca``, ``site``, ``token``, ``audit``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from control_plane.app import StatePaths, init_state
from control_plane.assets.grid_limits import GridLimits
from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import AssetRegistry
from security.audit_log import AuditLog, format_verification, verify_audit_log
from security.bootstrap_tokens import BootstrapTokens
from security.ca import CertificateAuthority, write_bytes_atomic
from security.clock import SystemClock
from security.identity import SpiffeId
from security.refusals import GridfortError
from security.revocation import RevocationList

DEFAULT_STATE = Path(".gridfort/state")


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE, help="control-plane state directory"
    )


def register(sub: Any) -> None:
    ca = sub.add_parser("ca", help="the trust domain's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    p = ca_sub.add_parser("init", help="create a CA and an empty state directory")
    _state(p)
    p.add_argument("--trust-domain", default="gridfort.local")
    p.set_defaults(handler=ca_init)
    p = ca_sub.add_parser("issue", help="issue a certificate with a new key (operators, SOC)")
    _state(p)
    p.add_argument("spiffe_id", help="e.g. spiffe://gridfort.local/operator/alice")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--ttl-s", type=int, default=3600)
    p.set_defaults(handler=ca_issue)
    p = ca_sub.add_parser("revoke", help="revoke an identity (closes its open streams within 5 s)")
    _state(p)
    p.add_argument("spiffe_id")
    p.add_argument("--reason", default="revoked by operator")
    p.set_defaults(handler=ca_revoke)
    p = ca_sub.add_parser("bundle", help="print the trust bundle (root certificate PEM)")
    _state(p)
    p.set_defaults(handler=ca_bundle)

    site = sub.add_parser("site", help="sites and their assets (the asset registry)")
    site_sub = site.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    p = site_sub.add_parser("add", help="register a site and its assets")
    _state(p)
    p.add_argument("site_id")
    p.add_argument(
        "--asset",
        action="append",
        default=[],
        metavar="ID:KIND:RATED_KW[:E_KWH]",
        help=f"an asset; KIND is one of {', '.join(k.value for k in AssetKind)}",
    )
    p.set_defaults(handler=site_add)
    p = site_sub.add_parser("list", help="list sites and assets as JSON")
    _state(p)
    p.set_defaults(handler=site_list)
    p = site_sub.add_parser(
        "limits", help="set a site's operating envelope at its connection point [kW]"
    )
    _state(p)
    p.add_argument("site_id")
    p.add_argument("--import-max-kw", type=float, required=True, help="net import at most")
    p.add_argument("--export-max-kw", type=float, required=True, help="net export at most")
    p.set_defaults(handler=site_limits)
    p = site_sub.add_parser(
        "feeder", help="set a feeder or transformer, the sites behind it and its limits [kW]"
    )
    _state(p)
    p.add_argument("feeder_id")
    p.add_argument("--site", action="append", required=True, help="a site behind it (repeat)")
    p.add_argument("--import-max-kw", type=float, required=True, help="net import at most")
    p.add_argument("--export-max-kw", type=float, required=True, help="net export at most")
    p.set_defaults(handler=site_feeder)

    token = sub.add_parser("token", help="one-time bootstrap tokens for enrolling edges")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = token_sub.add_parser("issue", help="issue a token bound to one site")
    _state(p)
    p.add_argument("--site", required=True)
    p.add_argument("--ttl-s", type=int, default=3600)
    p.set_defaults(handler=token_issue)

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = audit_sub.add_parser(
        "verify", help="verify the chain offline; pinpoint the first tampering"
    )
    p.add_argument("path", type=Path, nargs="?", default=DEFAULT_STATE / "audit.jsonl")
    p.set_defaults(handler=audit_verify)


def ca_init(args: argparse.Namespace) -> int:
    ca = init_state(args.state_dir, args.trust_domain, SystemClock())
    print(f"created CA for trust domain {ca.trust_domain} in {args.state_dir}")
    return 0


def _ca(state_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(StatePaths(state_dir).ca, SystemClock())


def ca_issue(args: argparse.Namespace) -> int:
    spiffe_id = SpiffeId.parse(args.spiffe_id)
    key_pem, issued = _ca(args.state_dir).issue_with_new_key(spiffe_id, ttl_s=args.ttl_s)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_bytes_atomic(out / "tls.key", key_pem, 0o600)
    write_bytes_atomic(out / "tls.pem", issued.chain_pem, 0o644)
    write_bytes_atomic(out / "bundle.pem", _ca(args.state_dir).trust_bundle_pem(), 0o644)
    print(f"issued {spiffe_id} (serial {issued.serial:x}) into {out}")
    return 0


def ca_revoke(args: argparse.Namespace) -> int:
    paths = StatePaths(args.state_dir)
    _ca(args.state_dir)  # refuse on a directory without a CA
    spiffe_id = SpiffeId.parse(args.spiffe_id)
    clock = SystemClock()
    at = RevocationList(paths.registry_db, clock).revoke(spiffe_id, args.reason)
    audit = AuditLog(paths.audit_log, clock)
    audit.append(
        "revocation",
        decision="deny",
        identity=str(spiffe_id),
        reason=args.reason,
        details={"revoked_at_ms": at},
    )
    audit.close()
    print(f"revoked {spiffe_id}")
    return 0


def ca_bundle(args: argparse.Namespace) -> int:
    sys.stdout.write(_ca(args.state_dir).trust_bundle_pem().decode())
    return 0


def parse_asset(site_id: str, spec: str) -> Asset:
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise GridfortError(f"--asset {spec!r}: expected ID:KIND:RATED_KW[:E_KWH]")
    try:
        kind = AssetKind(parts[1])
    except ValueError:
        raise GridfortError(
            f"--asset {spec!r}: unknown kind {parts[1]!r} "
            f"(one of {', '.join(k.value for k in AssetKind)})"
        ) from None
    try:
        rated = float(parts[2])
        e_kwh = float(parts[3]) if len(parts) == 4 else 0.0
    except ValueError:
        raise GridfortError(f"--asset {spec!r}: RATED_KW and E_KWH must be numbers") from None
    return Asset(asset_id=parts[0], site_id=site_id, kind=kind, rated_p_kw=rated, e_kwh=e_kwh)


def site_add(args: argparse.Namespace) -> int:
    _ca(args.state_dir)
    assets = [parse_asset(args.site_id, spec) for spec in args.asset]
    registry = AssetRegistry(StatePaths(args.state_dir).registry_db)
    registry.add_site(args.site_id, SystemClock().now_ms())
    registry.add_assets(assets)
    registry.close()
    print(f"site {args.site_id}: {len(assets)} asset(s) registered")
    return 0


def site_list(args: argparse.Namespace) -> int:
    registry = AssetRegistry(StatePaths(args.state_dir).registry_db)
    snap = registry.snapshot()
    registry.close()
    out = {
        site: [
            {
                "asset_id": a.asset_id,
                "kind": a.kind.value,
                "rated_p_kw": a.rated_p_kw,
                "e_kwh": a.e_kwh,
            }
            for a in snap.assets_of(site)
        ]
        for site in sorted(snap.sites)
    }
    print(json.dumps(out, indent=2))
    return 0


def _grid_limits(state_dir: Path) -> GridLimits:
    _ca(state_dir)
    db = StatePaths(state_dir).registry_db
    AssetRegistry(db).close()  # the sites table the limits refer to
    return GridLimits(db)


def site_limits(args: argparse.Namespace) -> int:
    limits = _grid_limits(args.state_dir)
    try:
        e = limits.set_site(args.site_id, args.import_max_kw, args.export_max_kw)
    except ValueError as err:
        raise GridfortError(f"site limits: {err}") from None
    finally:
        limits.close()
    print(f"site {e.site_id}: import <= {e.import_max_kw:g} kW, export <= {e.export_max_kw:g} kW")
    return 0


def site_feeder(args: argparse.Namespace) -> int:
    limits = _grid_limits(args.state_dir)
    try:
        f = limits.set_feeder(args.feeder_id, args.site, args.import_max_kw, args.export_max_kw)
    except ValueError as err:
        raise GridfortError(f"site feeder: {err}") from None
    finally:
        limits.close()
    print(
        f"feeder {f.feeder_id} ({len(f.site_ids)} sites): import <= {f.import_max_kw:g} kW, "
        f"export <= {f.export_max_kw:g} kW"
    )
    return 0


def token_issue(args: argparse.Namespace) -> int:
    paths = StatePaths(args.state_dir)
    _ca(args.state_dir)
    registry = AssetRegistry(paths.registry_db)
    known = registry.site_exists(args.site)
    registry.close()
    if not known:
        raise GridfortError(f"site {args.site!r} is not registered; run 'gridfort site add' first")
    print(BootstrapTokens(paths.registry_db, SystemClock()).issue(args.site, ttl_s=args.ttl_s))
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    if not args.path.exists():
        raise GridfortError(f"{args.path}: no such audit log")
    result = verify_audit_log(args.path)
    print(format_verification(result))
    return 0 if result.ok else 1
