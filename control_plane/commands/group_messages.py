"""Group setpoint messages, the pure part: per-site sections, packing into groups, the Command.

A group message is signed once and delivered unchanged to every site it names, so each
named site also receives (and parses) the other sites' sections. Packing bounds that
amplification: a group holds at most ``max_payload_bytes`` of sections (and at most
``max_sites`` sites). Residential sites with a handful of assets (~100 bytes each) pack by
the dozen into one signature; a site with a hundred assets (~2.5 kB) gets a group of its
own, because beyond a few kB the bytes every recipient must decrypt and parse cost more
than the signatures saved (measured in docs/dispatch.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gridfort.v1 import command_pb2 as cpb

MAX_ID_CHARS = 64
MAX_SECTION_ENTRIES = 4_096  # the edge refuses more (edge_node.group_sections)
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024
DEFAULT_MAX_SITES = 512
_SECTION_OVERHEAD_BYTES = 16  # tags and lengths of one section, generously


class GroupInputError(ValueError):
    """A section cannot be sent; the message names the site and what is wrong."""


@dataclass(frozen=True, slots=True)
class SiteSetpoints:
    """One site's setpoints: ``asset_ids[i]`` is asked for ``p_kw[i]`` [kW, + export]."""

    site_id: str
    asset_ids: tuple[str, ...]
    p_kw: tuple[float, ...]

    def __post_init__(self) -> None:
        site = self.site_id
        if not site or len(site) > MAX_ID_CHARS:
            raise GroupInputError(f"site id {site[:80]!r} must have 1..{MAX_ID_CHARS} characters")
        n = len(self.asset_ids)
        if n != len(self.p_kw):
            raise GroupInputError(f"site {site}: {n} asset ids but {len(self.p_kw)} setpoints")
        if not 0 < n <= MAX_SECTION_ENTRIES:
            raise GroupInputError(f"site {site}: {n} entries; must be 1..{MAX_SECTION_ENTRIES}")
        if len(set(self.asset_ids)) != n:
            raise GroupInputError(f"site {site}: an asset appears twice")
        lengths = list(map(len, self.asset_ids))  # map/all: C loops, 100,000 entries are hot
        if min(lengths) < 1 or max(lengths) > MAX_ID_CHARS:
            raise GroupInputError(f"site {site}: asset ids must have 1..{MAX_ID_CHARS} characters")
        if not all(map(math.isfinite, self.p_kw)):
            raise GroupInputError(f"site {site}: every setpoint must be a finite number of kW")

    def estimated_bytes(self) -> int:
        """Serialized size of this section, a close upper bound [bytes]."""
        ids = sum(map(len, self.asset_ids)) + 2 * len(self.asset_ids)
        return _SECTION_OVERHEAD_BYTES + len(self.site_id) + ids + 8 * len(self.p_kw)


def pack(
    sections: Sequence[SiteSetpoints],
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_sites: int = DEFAULT_MAX_SITES,
) -> list[list[SiteSetpoints]]:
    """Sections in order, cut into groups of at most ``max_payload_bytes`` and ``max_sites``
    (a single section larger than the budget gets a group of its own). Each site at most once."""
    if max_payload_bytes < 1 or max_sites < 1:
        raise ValueError("max_payload_bytes and max_sites must be >= 1")
    seen: set[str] = set()
    groups: list[list[SiteSetpoints]] = []
    current: list[SiteSetpoints] = []
    size = 0
    for section in sections:
        if section.site_id in seen:
            raise GroupInputError(f"site {section.site_id} appears twice")
        seen.add(section.site_id)
        n = section.estimated_bytes()
        if current and (size + n > max_payload_bytes or len(current) >= max_sites):
            groups.append(current)
            current, size = [], 0
        current.append(section)
        size += n
    if current:
        groups.append(current)
    return groups


def group_command(
    *,
    group_id: str,
    group_seq: int,
    issued_ms: int,
    expires_ms: int,
    activation_id: str,
    sections: Sequence[SiteSetpoints],
) -> cpb.Command:
    """The Command that carries one group (site_id, asset_id and seq left empty)."""
    if group_seq < 1 or expires_ms <= issued_ms or not group_id:
        raise ValueError("a group needs an id, group_seq >= 1 and expires_ms > issued_ms")
    group = cpb.GroupSetpoints(group_seq=group_seq, activation_id=activation_id[:MAX_ID_CHARS])
    for section in sections:
        entry = group.sites.add(site_id=section.site_id)
        entry.asset_ids.extend(section.asset_ids)
        entry.p_kw.extend(section.p_kw)
    return cpb.Command(
        command_id=group_id, issued_ms=issued_ms, expires_ms=expires_ms, group_setpoints=group
    )
