"""The parts of ComfyUI's saved (LiteGraph) workflow format that the converter reads in
more than one place: links in both of its versions, node modes, the shape check and the
expanded-size limit."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import JobError

#: Saved node modes (LiteGraph): 2 = never (muted), 4 = bypass.
MUTED, BYPASS = 2, 4
#: Most nodes a saved workflow may expand to (subgraphs once per use, group nodes per
#: instance): a few KB of nested subgraphs otherwise expand to millions of nodes.
MAX_NODES = 10_000
#: Inputs and widget values per node the limit allows on average (real nodes have
#: a few dozen at most).
ENTRIES_PER_NODE = 100
#: How to raise :data:`MAX_NODES` (``serve``, ``worker``, ``run``: executor/cli.py).
MAX_NODES_FLAG = "--max-workflow-nodes (env COMFYUI_RUNPOD_MAX_WORKFLOW_NODES)"
#: What node and link ids may be: the frontend writes numbers or strings.
_IDS = (int, str)


@dataclass(frozen=True)
class Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


@dataclass
class Budget:
    """A saved workflow's size as expanded so far, against the limit: nodes, and their
    inputs and widget values (so that a few nodes with huge lists cannot stand in for
    many). Counted before each part is built, so a bomb fails before it takes memory."""

    max_nodes: int = MAX_NODES
    nodes: int = 0
    entries: int = 0

    def add(self, nodes: Collection[Mapping[str, Any]], extra: int = 0) -> None:
        self.nodes += len(nodes)
        self.entries += extra + sum(
            len(n.get("inputs") or ()) + len(n.get("widgets_values") or ()) for n in nodes
        )
        if self.nodes > self.max_nodes or self.entries > ENTRIES_PER_NODE * self.max_nodes:
            raise JobError(
                "invalid_input",
                f"input.workflow: the saved workflow expands to more than {self.max_nodes} "
                f"nodes (or {ENTRIES_PER_NODE * self.max_nodes} node inputs and widget "
                "values; each use of a subgraph or group node counts its nodes again): "
                f"raise the limit with {MAX_NODES_FLAG} if it is meant to be this large",
                {"max_workflow_nodes": self.max_nodes},
            )


def parse_links(raw: Any, where: str = "links") -> dict[Any, Link]:
    """Links by id, from version 0.4's ``[id, origin, slot, target, slot, type]`` rows or
    version 1's objects (anything else in the list is not a link and is skipped)."""
    if raw is not None and not isinstance(raw, list):
        raise _bad(where, "must be a list")
    links: dict[Any, Link] = {}
    for index, item in enumerate(raw or []):
        if isinstance(item, list) and len(item) >= 5:  # version 0.4
            link_id, origin, oslot, target, tslot = item[:5]
            kind = item[5] if len(item) > 5 else None
        elif isinstance(item, Mapping):  # version 1
            link_id, origin, oslot = item.get("id"), item.get("origin_id"), item.get("origin_slot")
            target, tslot, kind = item.get("target_id"), item.get("target_slot"), item.get("type")
        else:
            continue
        for name, value in (("id", link_id), ("origin_id", origin), ("target_id", target)):
            if value is not None and not isinstance(value, _IDS):
                raise _bad(f"{where}[{index}]", f"{name} must be a number or a string")
        for name, value in (("origin_slot", oslot), ("target_slot", tslot)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise _bad(f"{where}[{index}]", f"{name} must be an integer, not {value!r:.40}")
        kind = kind if kind is None or isinstance(kind, str) else str(kind)
        links[link_id] = Link(origin, oslot or 0, target, tslot or 0, kind)
    return links


def check_document(document: Mapping[str, Any]) -> None:
    """Refuse a saved workflow whose parts have other JSON types than the frontend writes,
    naming the part: the converter reads ids as keys and slots as numbers, so a list id or
    a string slot would otherwise fail deep inside it as a ``TypeError``."""
    definitions = document.get("definitions")
    if definitions is not None and not isinstance(definitions, Mapping):
        raise _bad("definitions", "must be an object")
    subgraphs = (definitions or {}).get("subgraphs")
    if subgraphs is not None and not isinstance(subgraphs, list):
        raise _bad("definitions.subgraphs", "must be a list")
    if not isinstance(document.get("extra") or {}, Mapping):
        raise _bad("extra", "must be an object")
    check_nodes(document.get("nodes"), "")
    for index, subgraph in enumerate(subgraphs or []):
        where = f"definitions.subgraphs[{index}]"
        if not isinstance(subgraph, Mapping):
            raise _bad(where, "must be an object")
        if not isinstance(subgraph.get("id"), str):
            raise _bad(where, "id must be a string")
        check_nodes(subgraph.get("nodes"), f"subgraph {subgraph['id']} ")
        for side in ("inputs", "outputs"):  # the converter follows both sides' links
            slots = subgraph.get(side)
            if slots is not None and not isinstance(slots, list):
                raise _bad(f"{where}.{side}", "must be a list")
            for slot, entry in enumerate(slots or []):
                link_ids = entry.get("linkIds") if isinstance(entry, Mapping) else None
                if not isinstance(entry, Mapping) or not isinstance(link_ids or [], list):
                    raise _bad(f"{where}.{side}[{slot}]", 'must be an object with a "linkIds" list')
                if not all(isinstance(i, _IDS) for i in link_ids or []):
                    raise _bad(f"{where}.{side}[{slot}].linkIds", "must be numbers or strings")


def check_nodes(nodes: Any, graph: str, *, ids: bool = True) -> None:
    """The nodes of one graph (``graph``: how errors name it); ``ids=False`` for a group
    node's definition, whose nodes get their ids when it is expanded."""
    if nodes is not None and not isinstance(nodes, list):
        raise _bad(f"{graph}nodes", "must be a list")
    for index, node in enumerate(nodes or []):
        if not isinstance(node, Mapping):
            raise _bad(f"{graph}nodes[{index}]", "must be an object")
        node_id = node.get("id") if ids else index
        if not isinstance(node_id, _IDS):
            raise _bad(f"{graph}nodes[{index}]", "id must be a number or a string")
        where = f"{graph}node {node_id}"
        if not isinstance(node.get("type"), (str, type(None))):
            raise _bad(where, "type must be a string")
        if not isinstance(node.get("widgets_values"), (list, Mapping, type(None))):
            raise _bad(where, "widgets_values must be a list")
        inputs = node.get("inputs")
        if inputs is not None and not isinstance(inputs, list):
            raise _bad(where, "inputs must be a list")
        for slot, entry in enumerate(inputs or []):
            if not isinstance(entry, Mapping):
                raise _bad(f"{where} input {slot}", "must be an object")
            if not isinstance(entry.get("link"), (*_IDS, type(None))):
                raise _bad(f"{where} input {slot}", "link must be a number or a string")
            if not isinstance(entry.get("name"), (str, type(None))):
                raise _bad(f"{where} input {slot}", "name must be a string")


def _bad(where: str, problem: str) -> JobError:
    return JobError("invalid_input", f"input.workflow: {where}: {problem}")
