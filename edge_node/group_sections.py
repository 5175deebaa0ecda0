"""Group setpoints at the edge, the pure part: find this site's section of a signed
``GroupSetpoints`` and check its shape before anything is applied.

A group message is signed once by the control plane and delivered unchanged to every
site it names, so it carries other sites' sections too; an edge takes only its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridfort.v1 import command_pb2 as cpb
from security.refusals import Reason, Refusal

MAX_GROUP_SITES = 10_000
MAX_SECTION_ENTRIES = 4_096
MAX_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Section:
    """This site's entries, checked: asset ids unique, one setpoint [kW] each."""

    asset_ids: tuple[str, ...]
    p_kw: tuple[float, ...]


def check_group_header(command: cpb.Command) -> Refusal | None:
    """A group is addressed by its sections only; the single-site fields must be empty."""
    group = command.group_setpoints
    if command.site_id or command.asset_id or command.seq:
        return Refusal(
            Reason.COMMAND_MALFORMED, "a group command must not carry site_id, asset_id or seq"
        )
    if not command.command_id or len(command.command_id) > MAX_ID_CHARS:
        return Refusal(Reason.COMMAND_MALFORMED, "a group command needs a command_id (<= 64)")
    if group.group_seq == 0:
        return Refusal(Reason.COMMAND_MALFORMED, "group_seq must be > 0")
    if len(group.sites) > MAX_GROUP_SITES:
        return Refusal(
            Reason.OVERSIZED, f"group names {len(group.sites)} sites; limit {MAX_GROUP_SITES}"
        )
    return None


def own_section(group: cpb.GroupSetpoints, site_id: str) -> Section | Refusal:
    """This site's section, checked; a refusal if there is none, more than one, or it is
    malformed (unequal lengths, a repeated asset, too many entries)."""
    mine = [s for s in group.sites if s.site_id == site_id]
    if not mine:
        return Refusal(Reason.COMMAND_WRONG_SITE, "the group has no section for this site")
    if len(mine) > 1:
        return Refusal(Reason.COMMAND_MALFORMED, "the group names this site more than once")
    section = mine[0]
    n = len(section.asset_ids)
    if n != len(section.p_kw):
        return Refusal(Reason.COMMAND_MALFORMED, f"{n} asset ids but {len(section.p_kw)} setpoints")
    if n == 0:
        return Refusal(Reason.COMMAND_MALFORMED, "this site's section is empty")
    if n > MAX_SECTION_ENTRIES:
        return Refusal(Reason.OVERSIZED, f"{n} entries for this site; limit {MAX_SECTION_ENTRIES}")
    ids = tuple(section.asset_ids)
    if len(set(ids)) != n:
        return Refusal(Reason.COMMAND_MALFORMED, "an asset appears twice in this site's section")
    return Section(ids, tuple(section.p_kw))


def section_status(applied: int, failed: int, total: int) -> int:
    """CommandStatus of a section: all applied, none (refused or failed), or partial."""
    if applied == total:
        return cpb.COMMAND_STATUS_APPLIED
    if applied == 0:
        return cpb.COMMAND_STATUS_FAILED if failed else cpb.COMMAND_STATUS_REFUSED
    return cpb.COMMAND_STATUS_PARTIAL
