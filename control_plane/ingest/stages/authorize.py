"""Stage 3, authorize: this identity may report for this site and every asset in the batch."""

from __future__ import annotations

from control_plane.assets.registry import RegistrySnapshot
from control_plane.ingest.types import AuthorizedBatch, VerifiedBatch
from security.identity import Role
from security.refusals import Reason, Refusal


def authorize(verified: VerifiedBatch, registry: RegistrySnapshot) -> AuthorizedBatch | Refusal:
    peer = verified.peer
    who = peer.uri
    if peer.spiffe_id.role is not Role.EDGE:
        return Refusal(Reason.ROLE_NOT_ALLOWED, "only edge identities report telemetry", who)
    site_id = verified.batch.site_id
    if site_id != peer.spiffe_id.name:
        return Refusal(
            Reason.SITE_MISMATCH,
            f"edge {peer.spiffe_id.name} may not report for site {site_id}",
            who,
        )
    assets = {}
    for m in verified.batch.measurements:
        asset_id = m.asset_id
        if asset_id in assets:
            continue
        asset = registry.asset(asset_id)
        if asset is None or asset.site_id != site_id:
            return Refusal(
                Reason.ASSET_NOT_AUTHORIZED,
                f"site {site_id} may not report for asset {asset_id[:64]!r}",
                who,
            )
        assets[asset_id] = asset
    return AuthorizedBatch(verified, assets)
