"""Legacy group nodes (``extra.groupNodes``) expanded into the plain nodes they stand for.

Before subgraphs, the frontend's "Convert to Group Node" packed nodes into one node of
type ``workflow>Name`` (``workflow/Name`` in older saves) whose definition is stored in
the file. Its widgets are the inner nodes' widgets in one list, its sockets the inner
inputs and outputs not linked inside. ``graphToPrompt()`` runs the inner nodes as
``"<group id>:<index>"``; this rebuilds them as ordinary nodes of the root graph with the
instance's widget values and its links re-pointed at them, so that reroutes, primitives,
bypass and muting resolve as everywhere else.

The layout follows the frontend's ``GroupNodeConfig.registerType``: per inner node in
saved order, its widgets that are not sockets and its unlinked sockets; then every widget
that is also a socket (all of them, in saves made since widgets got sockets), node by
node. Where the frontend resolves a group's links in ways no one means, this does what
the graph says (tests/test_convert.py lists each): a muted group's inner nodes do not
run, a bypassed group hands its input through, reroutes inside or before a group are
followed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import JobError
from .savedgraph import BYPASS, MUTED, Budget, Link, check_nodes
from .widgets import (
    SEED_NAMES,
    Widget,
    is_widget,
    split_definition,
    widgets_from_inputs,
    widgets_of,
)

#: Group node types: ``workflow>Name``; saves before frontend 1.2.63 used ``/``.
PREFIXES = ("workflow>", "workflow/")


def group_name(node_type: Any) -> str | None:
    """The group's name in ``extra.groupNodes`` if ``node_type`` names a group node."""
    if isinstance(node_type, str):
        for prefix in PREFIXES:
            if node_type.startswith(prefix):
                return node_type[len(prefix) :]
    return None


@dataclass
class Layout:
    """One group definition laid out as a node, as the frontend does."""

    #: The group node's widgets in order, each with the inner (index, input) it sets
    #: (None for the frontend's own: ``control_after_generate``, upload buttons).
    widgets: list[tuple[Widget, tuple[int, str] | None]] = field(default_factory=list)
    #: Inner (index, input slot) → the name of the group node's input that feeds it.
    inputs: dict[tuple[int, int], str] = field(default_factory=dict)
    #: The group node's outputs in order: inner (index, output slot).
    outputs: list[tuple[int, int]] = field(default_factory=list)


def layout(definition: Mapping[str, Any], node_classes: Mapping[str, Any]) -> Layout:
    """The widgets, inputs and outputs of a group node made of ``definition``."""
    nodes = [n for n in definition.get("nodes") or [] if isinstance(n, Mapping)]
    links_to: dict[int, dict[int, list[Any]]] = {}
    links_from: dict[int, dict[int, list[list[Any]]]] = {}
    for link in definition.get("links") or []:
        if isinstance(link, list) and len(link) >= 4 and link[0] is not None:
            links_from.setdefault(link[0], {}).setdefault(link[1], []).append(link)
            links_to.setdefault(link[2], {})[link[3]] = link
    external: dict[int, set[int]] = {}
    for item in definition.get("external") or []:
        if isinstance(item, list) and len(item) >= 2:
            external.setdefault(item[0], set()).add(item[1])
    config = definition.get("config") or {}
    found = Layout()
    # The group node's input definitions, keyed and ordered as the frontend's object.
    entries: dict[str, tuple[Any, tuple[int, str]]] = {}
    seen: dict[str, int] = {}

    def add(index: int, node: Mapping[str, Any], name: str, spec: Any) -> str | None:
        custom = _config(config, index, "input", name)
        label = next(
            (i.get("label") for i in node.get("inputs") or [] if i.get("name") == name), None
        )
        key = shown = custom.get("name") or label or name
        if (node.get("type") == "PrimitiveNode" and node.get("title")) or shown in seen:
            title = node.get("title")
            prefix = f"{title if title is not None else node.get('type')} "
            key = shown = f"{prefix}{name}"
            if shown in seen:
                shown = f"{prefix}{seen[shown]} {name}"
        seen[key] = seen.get(key, 1) + 1
        if custom.get("visible") is False:
            return None
        kind, options = split_definition(spec)
        if name in SEED_NAMES:
            options = {**options, "control_after_generate": True}
        entries.setdefault(shown, ([kind, options], (index, name)))
        return shown

    converted_later = []
    for index, node in enumerate(nodes):
        shape = _shape(index, node, nodes, links_from, links_to, external, node_classes)
        if shape is None:
            continue
        inputs, outputs = shape
        linked = links_to.get(index, {})
        if inputs:
            slots: list[str] = []
            converted: dict[int, str] = {}
            for name, spec in inputs.items():
                if not is_widget(*split_definition(spec)):
                    slots.append(name)
                    continue
                socket = _widget_socket(node, name)
                if socket is not None:
                    converted[socket] = name
                else:
                    add(index, node, name, spec)
            for slot, name in enumerate(slots):
                if slot not in linked and (shown := add(index, node, name, inputs[name])):
                    found.inputs[(index, slot)] = shown
            # In the frontend's order: socket indexes sorted as strings (10 before 4).
            widget_sockets = [(at, converted[at]) for at in sorted(converted, key=str)]
            converted_later.append((index, node, inputs, len(slots), widget_sockets))
        for slot in range(len(outputs)):
            inside = slot in links_from.get(index, {}) and slot not in external.get(index, set())
            visible = _config(config, index, "output", str(slot)).get("visible")
            if visible if visible is not None else not inside:
                found.outputs.append((index, slot))
    for index, node, inputs, first, widget_sockets in converted_later:
        for offset, (socket, name) in enumerate(widget_sockets):
            # The frontend takes "is it linked inside" from the position, not the socket:
            # which widgets the group node has (and so its saved values) follow that.
            if first + offset in links_to.get(index, {}):
                continue
            if shown := add(index, node, name, inputs[name]):
                found.inputs[(index, socket)] = shown
    for widget in widgets_from_inputs((shown, spec) for shown, (spec, _) in entries.items()):
        target = entries[widget.name][1] if widget.in_prompt and widget.name in entries else None
        found.widgets.append((widget, target))
    return found


def _config(config: Mapping[str, Any], index: int, side: str, key: str) -> Mapping[str, Any]:
    """A group's per-input or per-output customisation (from "Manage group nodes")."""
    return ((config.get(str(index)) or {}).get(side) or {}).get(key) or {}


def _widget_socket(node: Mapping[str, Any], name: str) -> int | None:
    for slot, entry in enumerate(node.get("inputs") or []):
        if entry.get("name") == name and (entry.get("widget") or {}).get("name") == name:
            return slot
    return None


def _input_spec(node: Mapping[str, Any], name: Any, node_classes: Mapping[str, Any]) -> Any:
    try:
        spec = node_classes[node.get("type")].INPUT_TYPES()
    except Exception:
        return None
    return (spec.get("required") or {}).get(name) or (spec.get("optional") or {}).get(name)


def _shape(
    index: int,
    node: Mapping[str, Any],
    nodes: list[Mapping[str, Any]],
    links_from: Mapping[int, Mapping[int, list[list[Any]]]],
    links_to: Mapping[int, Mapping[int, list[Any]]],
    external: Mapping[int, set[int]],
    node_classes: Mapping[str, Any],
) -> tuple[dict[str, Any], list[Any]] | None:
    """An inner node's (input definitions, outputs) as the group sees it; None: it adds
    nothing to the group node (a Note, an unlinked primitive, a reroute used inside)."""
    node_type = node.get("type")
    if node_type in node_classes:
        try:
            spec = node_classes[node_type].INPUT_TYPES()
        except Exception:  # a broken node: ComfyUI's validation names it
            return None
        inputs = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        return inputs, list(getattr(node_classes[node_type], "RETURN_TYPES", ()) or ())
    out = links_from.get(index, {})
    if node_type == "PrimitiveNode":
        if not out.get(0):
            return None
        first = out[0][0]
        kind = first[5] if len(first) > 5 else "*"
        if kind == "COMBO" and 0 <= first[2] < len(nodes):
            target = nodes[first[2]]
            target_inputs = target.get("inputs") or []
            widget = (
                target_inputs[first[3]].get("widget") if first[3] < len(target_inputs) else None
            )
            spec = _input_spec(target, (widget or {}).get("name"), node_classes)
            kind = split_definition(spec)[0]
        return {"value": [kind, {"control_after_generate": True}]}, [kind]
    if node_type == "Reroute":
        into = links_to.get(index, {})
        if into and out and 0 not in external.get(index, set()):
            return None
        kind: Any = "*"
        if out.get(0):
            _, _, target, slot = out[0][0][:4]
            target_inputs = nodes[target].get("inputs") or []
            kind = target_inputs[slot].get("type", "*") if slot < len(target_inputs) else "*"
        elif into.get(0):
            origin, slot = into[0][:2]
            origin_outputs = nodes[origin].get("outputs") or []
            kind = origin_outputs[slot].get("type", "*") if slot < len(origin_outputs) else "*"
        return {kind: [kind, {"forceInput": True}]}, [kind]
    return None


def expand(
    nodes: dict[Any, dict[str, Any]],
    links: dict[Any, Link],
    groups: Mapping[str, Any],
    node_classes: Mapping[str, Any],
    budget: Budget,
) -> tuple[dict[Any, dict[str, Any]], dict[Any, Link], list[dict[str, Any]]]:
    """The root graph with every running group node replaced by its inner nodes.

    Returns (nodes, links, mismatches): a group node whose saved widget values do not fit
    its definition's layout is listed and left packed, like a node saved with another
    version. Muted and bypassed group nodes stay packed: the converter drops or bypasses
    them as any node. Each instance's nodes count against ``budget`` before they are made.
    """
    layouts: dict[str, Layout] = {}
    nodes, links = dict(nodes), dict(links)
    mismatches: list[dict[str, Any]] = []
    for group_id, instance in list(nodes.items()):
        name = group_name(instance.get("type"))
        definition = groups.get(name) if name is not None else None
        if not isinstance(definition, Mapping) or instance.get("mode") in (MUTED, BYPASS):
            continue
        if name not in layouts:
            graph = f"group node {group_id} ({instance.get('type')}) in extra.groupNodes: "
            check_nodes(definition.get("nodes"), graph, ids=False)
        budget.add(definition.get("nodes") or [])
        try:
            found = layouts[name] = layouts.get(name) or layout(definition, node_classes)
            values = instance.get("widgets_values")
            values = list(values) if isinstance(values, list) else []
            saved = [(w, target) for w, target in found.widgets if w.saved]
            if values and len(values) != len(saved):
                mismatches.append(
                    {
                        "node_id": str(group_id),
                        "class_type": instance.get("type"),
                        "expected": len(saved),
                        "found": len(values),
                        "widgets": [w.name for w, _ in saved],
                    }
                )
                continue
            _unpack(
                group_id, instance, definition, found, values, saved, nodes, links, node_classes
            )
        except (LookupError, TypeError, ValueError, AttributeError) as exc:
            raise JobError(
                "invalid_input",
                f"input.workflow: group node {group_id} ({instance.get('type')}): its "
                f"definition in extra.groupNodes cannot be read ({type(exc).__name__}: {exc})",
            ) from exc
        del nodes[group_id]
    return nodes, links, mismatches


def _unpack(
    group_id: Any,
    instance: Mapping[str, Any],
    definition: Mapping[str, Any],
    found: Layout,
    values: list[Any],
    saved: list[tuple[Widget, tuple[int, str] | None]],
    nodes: dict[Any, dict[str, Any]],
    links: dict[Any, Link],
    node_classes: Mapping[str, Any],
) -> None:
    inner_ids = []
    overrides: dict[int, dict[str, Any]] = {}
    for value, (_, target) in zip(values, saved, strict=False):
        if target is not None:
            overrides.setdefault(target[0], {})[target[1]] = value
    for index, raw in enumerate(definition.get("nodes") or []):
        inner_id = f"{group_id}:{index}"
        inner_ids.append(inner_id)
        node = copy.deepcopy(dict(raw))
        node["id"] = inner_id
        node["inputs"] = [{**entry, "link": None} for entry in node.get("inputs") or []]
        _set_widgets(node, overrides.get(index, {}), node_classes)
        nodes[inner_id] = node
    by_name = {entry.get("name"): entry.get("link") for entry in instance.get("inputs") or []}
    for count, raw in enumerate(definition.get("links") or []):
        if not isinstance(raw, list) or len(raw) < 4 or raw[0] is None:
            continue
        origin, oslot, target, tslot = raw[:4]
        if not all(isinstance(i, int) for i in raw[:4]):
            raise TypeError(f"link {raw[:4]!r:.60}: indexes and slots must be integers")
        if not (0 <= origin < len(inner_ids) and 0 <= target < len(inner_ids)):
            continue
        link_id = f"{group_id}:link:{count}"
        kind = raw[5] if len(raw) > 5 and isinstance(raw[5], str) else None
        links[link_id] = Link(inner_ids[origin], oslot, inner_ids[target], tslot, kind)
        _plug(nodes[inner_ids[target]], tslot, link_id)
    for (index, slot), name in found.inputs.items():
        outer = links.get(by_name.get(name))
        if outer is None:
            continue
        link_id = f"{group_id}:in:{index}:{slot}"
        links[link_id] = Link(
            outer.origin_id, outer.origin_slot, inner_ids[index], slot, outer.type
        )
        _plug(nodes[inner_ids[index]], slot, link_id)
    for link_id, link in list(links.items()):
        if link.origin_id == group_id and 0 <= link.origin_slot < len(found.outputs):
            index, slot = found.outputs[link.origin_slot]
            links[link_id] = Link(
                inner_ids[index], slot, link.target_id, link.target_slot, link.type
            )


def _plug(node: dict[str, Any], slot: int, link_id: Any) -> None:
    inputs = node["inputs"]
    if 0 <= slot < len(inputs):
        inputs[slot]["link"] = link_id


def _set_widgets(
    node: dict[str, Any], overrides: Mapping[str, Any], node_classes: Mapping[str, Any]
) -> None:
    """The group node's values into an inner node's saved widget values."""
    if not overrides:
        return
    values = node.get("widgets_values")
    if node.get("type") == "PrimitiveNode":
        node["widgets_values"] = [overrides.get("value"), *(values or [])[1:]]
        return
    try:
        widgets = [
            w for w in widgets_of(node_classes[node.get("type")], node.get("type")) if w.saved
        ]
    except Exception:
        return
    current = list(values) if isinstance(values, list) else [None] * len(widgets)
    if len(current) != len(widgets):
        return  # the converter names this node's mismatch
    node["widgets_values"] = [
        overrides.get(w.name, value) if w.in_prompt else value
        for w, value in zip(widgets, current, strict=True)
    ]
