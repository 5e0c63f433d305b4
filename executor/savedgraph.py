"""The parts of ComfyUI's saved (LiteGraph) workflow format that the converter reads in
more than one place: links in both of its versions, and node modes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Saved node modes (LiteGraph): 2 = never (muted), 4 = bypass.
MUTED, BYPASS = 2, 4


@dataclass(frozen=True)
class Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


def parse_links(raw: Any) -> dict[Any, Link]:
    """Links by id, from version 0.4's ``[id, origin, slot, target, slot, type]`` rows or
    version 1's objects."""
    links: dict[Any, Link] = {}
    for item in raw or []:
        if isinstance(item, (list, tuple)) and len(item) >= 5:  # version 0.4
            link_id, origin, oslot, target, tslot = item[:5]
            kind = item[5] if len(item) > 5 else None
        elif isinstance(item, Mapping):  # version 1
            link_id, origin, oslot = item.get("id"), item.get("origin_id"), item.get("origin_slot")
            target, tslot, kind = item.get("target_id"), item.get("target_slot"), item.get("type")
        else:
            continue
        links[link_id] = Link(origin, int(oslot or 0), target, int(tslot or 0), kind)
    return links
