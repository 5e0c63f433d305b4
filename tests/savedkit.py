"""Hostile saved (UI-format) workflows built in code: nested subgraphs that expand
exponentially, long and looping reroute chains. Small files, large graphs; the
converter tests and the reliability suite both send them."""

from __future__ import annotations

from typing import Any


def _node(node_id: int, node_type: str, link_in: int, **extra: Any) -> dict[str, Any]:
    name = "images" if node_type == "SaveImage" else "image"
    inputs = [{"name": name, "type": "IMAGE", "link": link_in}]
    return {"id": node_id, "type": node_type, "mode": 0, "inputs": inputs, **extra}


def _link(link_id: int, origin: int, target: int) -> dict[str, Any]:
    return {
        "id": link_id,
        "origin_id": origin,
        "origin_slot": 0,
        "target_id": target,
        "target_slot": 0,
        "type": "IMAGE",
    }


def nested_subgraphs(levels: int, leaf: str = "ImageInvert") -> dict[str, Any]:
    """EmptyImage → subgraph 0 → SaveImage, where subgraph ``i`` is two instances of
    subgraph ``i + 1`` in a row and the last one two ``leaf`` nodes: about 600 bytes a
    level, ``2 ** (levels + 1)`` nodes once expanded."""
    definitions = []
    for level in range(levels):
        inner = f"sg-{level + 1}" if level + 1 < levels else leaf
        definitions.append(
            {
                "id": f"sg-{level}",
                "name": f"level {level}",
                "inputs": [{"name": "image", "type": "IMAGE", "linkIds": [1]}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [3]}],
                "nodes": [_node(1, inner, 1), _node(2, inner, 2)],
                "links": [_link(1, -10, 1), _link(2, 1, 2), _link(3, 2, -20)],
            }
        )
    return {
        "version": 1,
        "definitions": {"subgraphs": definitions},
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [4, 4, 1, 0]},
            _node(2, "sg-0", 1),
            _node(3, "SaveImage", 2, widgets_values=["nested"]),
        ],
        "links": [_link(1, 1, 2), _link(2, 2, 3)],
        "extra": {},
    }


def reroute_chain(length: int, *, loop: bool = False) -> dict[str, Any]:
    """EmptyImage → ``length`` Reroutes in a row → SaveImage; ``loop``: the first reroute
    takes its input from the last instead, so the chain feeds itself."""
    nodes = [{"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [4, 4, 1, 0]}]
    links = []
    for index in range(length):
        node_id = 100 + index
        origin = node_id - 1 if index else (100 + length - 1 if loop else 1)
        links.append(_link(node_id, origin, node_id))
        nodes.append(_node(node_id, "Reroute", node_id))
    save = _node(2, "SaveImage", 2, widgets_values=["rerouted"])
    links.append(_link(2, 100 + length - 1, 2))
    return {"version": 0.4, "nodes": [*nodes, save], "links": links, "extra": {}}
